"""Ranker data: (query, candidate) pairs built from a trained retriever, as of each event's time.

Training pairs, for each train event (``pairs`` config):

* the positive: the event's item;
* ``hard_negatives`` drawn from the retriever's top-``hard_pool`` for that event (the user's
  earlier items already removed, and the positive never drawn);
* ``uniform_negatives`` drawn from the whole catalogue (a draw equal to the positive is masked).

Evaluation batches hold, for each valid/test user, the retriever's top-``candidates`` list (earlier
items removed, as the protocol excludes them) and the target; the ranker re-orders the list.

A batch (``build_batch``) is a dict::

    {"user", "context": TowerInput (B rows), "cand": TowerInput (B·C rows, query-major),
     "cand_idx": (B, C) long (−1 = empty slot), "pair_dense": (B, C, P) float,
     "label": (B, C, T) float, "mask": (B, C) bool}        # label/mask: training pairs only
    + eval batches: "target": (B,) long, "target_labels": (B, T) float, "retrieval_score": (B, C) float,
      "eval_pos": (B,) long (the targets' positions among the split's)

T objectives the ranker predicts (``recfunnel.data.objectives``; those with ``predict: false`` are
left out): a pair's labels are its event's when the candidate is the event's item (the first column
of a training batch), 0 otherwise.

Pair dense features (``PairFeatures.names``), which only the ranker sees: the retriever's score, the
log of the item's rank in the first stage's list (K+1 when not in it), the cosine between the item's
genres and the genre profile of the user's last ``profile_len`` items, and the cosine (in the
retriever's item space) between the item and the user's last item, and the largest one to any of
their last ``RECENT`` items (0 without history); with a co-occurrence model in the first stage
(``recfunnel.serving.fusion``), also the item's co-occurrence score with the user's latest items
(``cooc_score``; out-of-fold for train events, so the ranker never learns from a count that holds
the event it is trained on); on data with coordinates (items ``lat`` / ``lon``, and where the user is:
the interactions' ``lat`` / ``lon``, else the user's ``home_lat`` / ``home_lon``), the distance from
where the user is to the item, as a dense value (``log_distance_km``: log(1 + km)) and bucketed
(one 0/1 column per ``DISTANCE_BUCKETS_KM`` range, ``km<0.5`` ... ``km>=100``: the first layer of the
over arch gives each bucket a learned vector, as an embedding would; all 0 where the location is unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.data.loaders import evaluation_loader, training_loader, unpack_key
from recfunnel.data.objectives import event_labels, parse_objectives, predicted
from recfunnel.eval.protocol import EvalSet
from recfunnel.features.auto import resolve_schema
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema
from recfunnel.utils.config_checks import hard_pool_too_small
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.geo import haversine_km

log = logging.getLogger(__name__)
PAIR_FEATURES = ("retrieval_score", "retrieval_log_rank", "genre_overlap", "sim_last_item", "sim_recent_max")
DISTANCE_BUCKETS_KM = (0.5, 1.0, 2.0, 5.0, 10.0, 100.0)  # bucket edges of the distance features
DISTANCE_FEATURES = ("log_distance_km", *(f"km<{e:g}" for e in DISTANCE_BUCKETS_KM), f"km>={DISTANCE_BUCKETS_KM[-1]:g}")


class CooccurrenceScores(Protocol):
    """Co-occurrence scores of items for events (``recfunnel.serving.fusion.CrossFitted`` is one)."""

    def at(self, pipeline: FeaturePipeline, rows: np.ndarray, items: np.ndarray, in_sample: bool = False) -> np.ndarray:
        """(B, C) float32 scores of ``items`` (B, C; −1 = empty) for event ``rows`` (B,) of ``pipeline``;
        ``in_sample``: the rows are train events of the data the scores were fitted on."""
        ...


class CandidateSource(Protocol):
    """What the ranker's data needs of the first stage (``recfunnel.serving.retriever.Retriever``
    is one): its data and item vectors, and candidate lists for event rows. The query vectors may
    carry more columns than the item vectors (a first stage with a second retriever,
    ``recfunnel.serving.fusion.RankFusion``: (B, d + d2)); the pair features read the first d."""

    data: SplitData
    item_vectors: np.ndarray  # (I, d)

    def retrieve(self, rows: np.ndarray, k: int, what: str = "events") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query vectors (B, d), top-k item lists (B, k; the user's earlier items removed, −1 pads)
        and their scores (B, k) for event ``rows`` (B,)."""
        ...


def genre_matrix(items_table) -> np.ndarray:
    """(I, G) float32 multi-hot of the items' genres (catalogue order), G = distinct genres; one
    all-zero column for a dataset without genres."""
    genres = items_table["genres"].tolist() if "genres" in items_table else [[] for _ in range(len(items_table))]
    vocab = sorted({g for gs in genres for g in gs})
    col = {g: j for j, g in enumerate(vocab)}
    out = np.zeros((len(genres), max(len(vocab), 1)), np.float32)
    for i, gs in enumerate(genres):
        out[i, [col[g] for g in gs]] = 1.0
    return out


class PairFeatures:
    """Computes the (B, C, P) pair dense features.

    Args:
        item_vectors: (I, d) the retriever's item vectors (the index's).
        genres: (I, G) item genre multi-hot.
        profile_len: how many of the user's latest items make the genre profile.
        cooccurrence: co-occurrence scores for the ``cooc_score`` feature (None: no such feature).
        data: the events the rows index; with coordinates (``UserLocations``), the
            ``log_distance_km`` feature.

    ``names``: the P features, in order.
    """

    RECENT = 5

    def __init__(self, item_vectors: np.ndarray, genres: np.ndarray, profile_len: int = 50,
                 cooccurrence: CooccurrenceScores | None = None, data: SplitData | None = None):
        self.item_vectors = np.asarray(item_vectors, np.float32)
        norm = np.linalg.norm(self.item_vectors, axis=1, keepdims=True)
        self.unit_vectors = self.item_vectors / np.maximum(norm, 1e-12)
        norm = np.linalg.norm(genres, axis=1, keepdims=True)
        self.genres = np.where(norm > 0, genres / np.maximum(norm, 1e-12), 0).astype(np.float32)
        self.profile_len, self.cooccurrence = profile_len, cooccurrence
        self.locations = None if data is None else UserLocations.of(data)
        self.names = PAIR_FEATURES + (("cooc_score",) if cooccurrence is not None else ()) + \
            (DISTANCE_FEATURES if self.locations is not None and self.locations.items is not None else ())

    def __call__(self, pipeline: FeaturePipeline, rows: np.ndarray, queries: np.ndarray, cands: np.ndarray,
                 lists: np.ndarray, in_sample: bool = False, here: np.ndarray | None = None) -> np.ndarray:
        """rows (B,) of ``pipeline``; queries (B, ≥ d) their first stage's vectors (the retriever's d
        first); cands (B, C) items (−1 = empty); lists (B, K) the first stage's top-K for the rank
        feature; ``in_sample``: the rows are train events (out-of-fold co-occurrence); ``here`` (B, 2):
        where the users are, when the request says (default: ``UserLocations.where``) → (B, C, P) float32."""
        safe = np.maximum(cands, 0)
        score = np.einsum("bd,bcd->bc", queries[:, :self.item_vectors.shape[1]], self.item_vectors[safe])
        match = (lists[:, None, :] == cands[:, :, None]) & (cands[:, :, None] >= 0)
        rank = np.where(match.any(2), match.argmax(2) + 1, lists.shape[1] + 1)
        events, lengths = pipeline.history_events(rows, self.profile_len)
        profile = np.zeros((len(rows), self.genres.shape[1]), np.float32)
        np.add.at(profile, np.repeat(np.arange(len(rows)), lengths), self.genres[pipeline.item_idx[events]])
        profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
        overlap = np.einsum("bg,bcg->bc", profile, self.genres[safe])
        # item-to-item similarity with the newest history items: (B, RECENT) padded at the start
        events, lengths = pipeline.history_events(rows, self.RECENT)
        recent = np.full((len(rows), self.RECENT), -1, np.int64)
        slot = np.arange(len(events)) - np.repeat(np.cumsum(lengths) - lengths, lengths) + \
            np.repeat(self.RECENT - lengths, lengths)
        recent[np.repeat(np.arange(len(rows)), lengths), slot] = pipeline.item_idx[events]
        sim = np.einsum("bcd,brd->bcr", self.unit_vectors[safe], self.unit_vectors[np.maximum(recent, 0)])
        sim = np.where(recent[:, None, :] >= 0, sim, -np.inf)
        sim_last = np.where(recent[:, -1:] >= 0, sim[:, :, -1], 0.0)
        sim_max = np.where(lengths[:, None] > 0, sim.max(2), 0.0)
        columns = [score, np.log(rank), overlap, sim_last, sim_max]
        if self.cooccurrence is not None:
            columns.append(self.cooccurrence.at(pipeline, rows, cands, in_sample))
        if "log_distance_km" in self.names:
            columns.extend(self._distance(pipeline, rows, safe, here))
        out = np.stack(columns, axis=2).astype(np.float32)
        out[cands < 0] = 0.0
        return out


    def _distance(self, pipeline: FeaturePipeline, rows: np.ndarray, items: np.ndarray,
                  here: np.ndarray | None) -> list[np.ndarray]:
        """The ``DISTANCE_FEATURES`` columns, each (B, C), from where each row's user is to each
        candidate: log(1 + km), then the 0/1 bucket columns (all 0 where the distance is unknown)."""
        here = self.locations.where(pipeline, rows) if here is None else here
        if here is None:
            return [np.zeros(items.shape, np.float32) for _ in DISTANCE_FEATURES]
        coords = self.locations.items
        km = haversine_km(here[:, None, 0], here[:, None, 1], coords[items, 0], coords[items, 1])
        known = np.isfinite(km)
        bucket = np.searchsorted(np.asarray(DISTANCE_BUCKETS_KM), np.where(known, km, 0.0), side="right")
        onehot = [(known & (bucket == b)).astype(np.float32) for b in range(len(DISTANCE_BUCKETS_KM) + 1)]
        return [np.nan_to_num(np.log1p(km), nan=0.0), *onehot]


class UserLocations:
    """Where users are and items lie, in degrees (lat, lon), from a dataset's columns.

    ``events`` (N, 2): each event's location context (interactions ``lat`` / ``lon``); ``homes``
    (U, 2): each user's home (users ``home_lat`` / ``home_lon``); ``items`` (I, 2): items ``lat`` /
    ``lon``. Each is None when the data lacks its columns; missing values are NaN.
    """

    def __init__(self, events: np.ndarray | None, homes: np.ndarray | None, items: np.ndarray | None,
                 events_ts: np.ndarray):
        self.events, self.homes, self.items, self._events_ts = events, homes, items, events_ts

    @classmethod
    def of(cls, data: SplitData) -> UserLocations | None:
        """The locations ``data`` has, or None when it has neither the events' nor the users' locations."""
        t = data.tables
        events, homes = coordinates(t.interactions, "lat", "lon"), coordinates(t.users, "home_lat", "home_lon")
        if events is None and homes is None:
            return None
        return cls(events, homes, coordinates(t.items, "lat", "lon"), data.ts)

    def where(self, pipeline: FeaturePipeline, rows: np.ndarray) -> np.ndarray | None:
        """(B, 2) where the users of ``rows`` (B,) are: a row of the data itself is at its event's
        location; a served request (a ``FeaturePipeline.for_request`` view) at its user's home; None
        when the data says neither."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.events is not None and pipeline.ts is self._events_ts:  # a pipeline over the data's own rows
            return self.events[rows]
        return None if self.homes is None else self.homes[pipeline.user_idx[rows]]


def coordinates(table, lat: str, lon: str) -> np.ndarray | None:
    """(n, 2) float64 of two columns of a DataFrame (NaN where missing), or None unless it has both."""
    if lat not in table or lon not in table:
        return None
    return np.stack([table[lat].to_numpy(np.float64, na_value=np.nan), table[lon].to_numpy(np.float64, na_value=np.nan)], 1)


def build_batch(pipeline: FeaturePipeline, pairs: PairFeatures, rows: np.ndarray, queries: np.ndarray,
                cands: np.ndarray, lists: np.ndarray, in_sample: bool = False,
                here: np.ndarray | None = None) -> dict[str, Any]:
    """The ranker's inputs for C candidates of each of B event rows (see the module docstring);
    ``in_sample``: the rows are train events; ``here`` (B, 2): where the users are, when known."""
    B, C = cands.shape
    batch: dict[str, Any] = pipeline.queries(rows)
    when = np.repeat(pipeline.ts[rows], C)
    batch["cand"] = pipeline.items(np.maximum(cands, 0).reshape(-1), when)
    batch["cand_idx"] = torch.from_numpy(cands.astype(np.int64))
    batch["pair_dense"] = torch.from_numpy(pairs(pipeline, rows, queries, cands, lists, in_sample, here))
    return batch


def ranker_inputs(data: SplitData, item_vectors: np.ndarray, features_cfg: Mapping[str, Any], profile_len: int = 50,
                  cooccurrence: CooccurrenceScores | None = None
                  ) -> tuple[FeatureSchema, FeaturePipeline, np.ndarray, PairFeatures]:
    """The ranker's schema, its feature pipeline over the first stage's data, the (I, G) genre matrix
    and the pair features over the first stage's (I, d) ``item_vectors`` (and ``cooccurrence``, when
    the first stage has it): everything needed to build ranker batches (training or serving)."""
    schema = resolve_schema(features_cfg, data, where=f"features ({features_cfg.get('name')})", scored_at_query_time=True)
    pipeline = FeaturePipeline(schema, data, where=f"features ({schema.name})")
    genres = genre_matrix(data.tables.items)
    return schema, pipeline, genres, PairFeatures(item_vectors, genres, profile_len, cooccurrence, data=data)


class TrainPairs(Dataset):
    """Training batches of pairs; indexed by (seed, epoch, batch index, positions) keys."""

    def __init__(self, dm: RankingDataModule):
        self.dm = dm

    def __len__(self) -> int:
        return len(self.dm.train_rows)

    def __getitem__(self, key) -> dict[str, Any]:
        positions, rng = unpack_key(key)
        rng = rng or np.random.default_rng()
        dm, p = self.dm, self.dm.pipeline
        rows, lists = dm.train_rows[positions], dm.train_lists[positions]
        pool = lists[:, :dm.hard_pool]
        B = len(rows)
        pos = p.item_idx[rows]
        # hard negatives: random picks from the pool, never the positive, never an empty slot
        usable = (pool >= 0) & (pool != pos[:, None])
        keys = np.where(usable, rng.random(pool.shape), np.inf)
        pick = np.argsort(keys, axis=1)[:, :dm.hard_negatives]
        hard = np.take_along_axis(pool, pick, 1)
        hard_ok = np.take_along_axis(usable, pick, 1)
        uniform = rng.integers(p.num_items, size=(B, dm.uniform_negatives))
        cands = np.concatenate([pos[:, None], np.where(hard_ok, hard, -1), uniform], axis=1)
        mask = np.concatenate([np.ones((B, 1), bool), hard_ok, uniform != pos[:, None]], axis=1)
        batch = build_batch(p, dm.pairs, rows, dm.train_queries[positions], cands, lists[:, :dm.candidates],
                            in_sample=True)
        label = np.zeros((*cands.shape, dm.head_labels.shape[1]), np.float32)
        label[:, 0] = dm.head_labels[rows]
        batch["label"], batch["mask"] = torch.from_numpy(label), torch.from_numpy(mask)
        return batch


class CandidateLists(Dataset):
    """Evaluation batches: each user's retrieved list and target (indexed by a list of positions)."""

    def __init__(self, dm: RankingDataModule, split: str):
        self.dm, self.split = dm, split

    def __len__(self) -> int:
        return len(self.dm.eval_rows[self.split])

    def __getitem__(self, positions) -> dict[str, Any]:
        dm, positions = self.dm, np.asarray(positions, dtype=np.int64)
        rows = dm.eval_rows[self.split][positions]
        lists = dm.eval_lists[self.split][positions]
        batch = build_batch(dm.pipeline, dm.pairs, rows, dm.eval_queries[self.split][positions], lists, lists)
        batch["target"] = torch.from_numpy(dm.pipeline.item_idx[rows])
        batch["target_labels"] = torch.from_numpy(dm.head_labels[rows])
        batch["retrieval_score"] = torch.from_numpy(dm.eval_scores[self.split][positions])
        batch["eval_pos"] = torch.from_numpy(positions)  # positions among the split's targets (their slices)
        return batch


class RankingDataModule(pl.LightningDataModule):
    """Pairs for the ranker from the first stage's candidates, over that stage's own data and split.
    Built from the funnel's ``pairs`` config (``_target_`` here) plus the retriever and features.

    Args:
        retriever: the first stage (a ``CandidateSource``: a loaded ``Retriever``, or a ``RankFusion``).
        cooccurrence: the first stage's co-occurrence scores (``RankFusion.cooccurrence``), for the
            ``cooc_score`` pair feature; None: no such feature.
        features: the ranker's feature schema (its own; it may differ from the retriever's).
        candidates: K, the retriever's list length at evaluation (and for the rank feature).
        hard_pool: top-N of the retriever that hard negatives are drawn from, ≥ ``candidates``: with
            fewer, no training pair would show a negative ranked between ``hard_pool`` and K while
            positives are ranked there, and the ranker learns to put those ranks first (with K 200
            and a pool of 100 on ML-100K its valid NDCG@10 fell from 0.16 to 0.03).
        hard_negatives, uniform_negatives: negatives per training event.
        max_events_per_user: train only on each user's latest events (None = all train events).
        retrieved_positives_only: train only on events whose positive is in the retriever's top-K
            (the lists the ranker re-orders at serving time); otherwise on all events.
        profile_len: history length of the genre profile feature.
        batch_size: training events per batch (each with 1 + negatives pairs).
        eval_batch_size: users per evaluation batch.
        objectives: the funnel's ``objectives`` config: what the ranker predicts
            (``recfunnel.data.objectives``); None: engagement alone. ``labels``: (N, T) per event;
            ``head_labels``: (N, T') those of the objectives the ranker predicts (batches' labels).
    """

    def __init__(self, retriever: CandidateSource, features: Mapping[str, Any], candidates: int = 100,
                 hard_pool: int = 100, hard_negatives: int = 8, uniform_negatives: int = 8,
                 max_events_per_user: int | None = None, retrieved_positives_only: bool = True,
                 profile_len: int = 50, batch_size: int = 256,
                 eval_batch_size: int = 256, num_workers: int = 0, seed: int = 0,
                 cooccurrence: CooccurrenceScores | None = None, objectives: Mapping[str, Any] | None = None):
        super().__init__()
        if hard_negatives + uniform_negatives < 1:
            raise RecfunnelError("pairs: hard_negatives + uniform_negatives must be ≥ 1 (a ranker needs negatives)")
        if hard_negatives > hard_pool:
            raise RecfunnelError(f"pairs.hard_negatives={hard_negatives} exceeds pairs.hard_pool={hard_pool}")
        if hard_pool < candidates:
            raise RecfunnelError(hard_pool_too_small(hard_pool, candidates))
        self.retriever, self.features_cfg, self.cooccurrence = retriever, features, cooccurrence
        self.candidates, self.hard_pool = candidates, hard_pool
        self.hard_negatives, self.uniform_negatives = hard_negatives, uniform_negatives
        self.max_events_per_user, self.profile_len = max_events_per_user, profile_len
        self.retrieved_positives_only = retrieved_positives_only
        self.batch_size, self.eval_batch_size, self.num_workers, self.seed = batch_size, eval_batch_size, num_workers, seed
        self.objectives = parse_objectives(objectives)
        self.pipeline: FeaturePipeline | None = None
        self.train_rows: np.ndarray | None = None  # set up with the training pairs (setup: None or "fit")

    def setup(self, stage: str | None = None) -> None:
        """Each split's candidate lists, and for ``stage`` None or "fit" the training pairs too (the
        first stage's lists for every train event: most of the time on a large split). A ranker loaded
        to be scored again needs only the former (``setup("test")``)."""
        if self.pipeline is None:
            self._setup_evaluation()
        if stage in (None, "fit") and self.train_rows is None:
            self._setup_training()

    def _setup_evaluation(self) -> None:
        r = self.retriever
        self.data = r.data
        self.labels = event_labels(self.data.tables.interactions, self.objectives)
        self.head_labels = np.ascontiguousarray(self.labels[:, [o.predict for o in self.objectives]])
        self.schema, self.pipeline, self.genres, self.pairs = ranker_inputs(self.data, r.item_vectors, self.features_cfg,
                                                                            self.profile_len, self.cooccurrence)
        self.eval_rows, self.eval_queries, self.eval_lists, self.eval_scores = {}, {}, {}, {}
        for split in ("valid", "test"):
            rows = EvalSet.build(self.data, split).rows
            self.eval_rows[split] = rows
            self.eval_queries[split], self.eval_lists[split], self.eval_scores[split] = \
                r.retrieve(rows, self.candidates, f"{split} users")

    def _setup_training(self) -> None:
        r = self.retriever
        rows = np.flatnonzero(self.data.split == TRAIN)
        if self.max_events_per_user:
            p = self.pipeline
            from_end = np.diff(p.timeline_ptr)[p.user_idx[rows]] - p.timeline_pos[rows]  # 1 = the user's last event
            rows = rows[from_end <= self.max_events_per_user + 2]  # + valid and test events after them
        pool = max(self.hard_pool, self.candidates)
        queries, lists, _ = r.retrieve(rows, pool, "train events")
        if self.retrieved_positives_only:
            # the ranker only ever sees retrieved lists: train it on events whose positive was retrieved
            keep = (lists[:, :self.candidates] == self.pipeline.item_idx[rows][:, None]).any(1)
            rows, queries, lists = rows[keep], queries[keep], lists[keep]
        self.train_rows, self.train_queries, self.train_lists = rows, queries, lists
        log.info("ranker pairs: %d train events × (1 + %d hard + %d uniform); K=%d candidates for %d/%d valid/test users",
                 len(self.train_rows), self.hard_negatives, self.uniform_negatives, self.candidates,
                 len(self.eval_rows["valid"]), len(self.eval_rows["test"]))

    # -- what the model needs ----------------------------------------------------------------------
    @property
    def num_embeddings(self) -> dict[str, int]:
        return self.pipeline.num_embeddings

    def dense_stats(self, sample: int = 20000) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(mean, std) per tower over train events, and of the pair features over training pairs."""
        stats = self.pipeline.tower_dense_stats(self.train_rows)
        n = min(len(self.train_rows), max(1, sample // (1 + self.hard_negatives + self.uniform_negatives)))
        positions = np.random.default_rng(self.seed).choice(len(self.train_rows), n, replace=False)
        batch = TrainPairs(self)[(self.seed, 2**31, 0, positions)]
        pair = batch["pair_dense"][batch["mask"]].numpy()
        stats["pair"] = (pair.mean(0), pair.std(0))
        return stats

    @property
    def num_pair_dense(self) -> int:
        return len(self.pairs.names)

    def model_inputs(self) -> dict[str, Any]:
        """What a ranker built for this data needs to know (``recfunnel.tasks.build.build_task``). Set up
        without training pairs, the dense statistics are None: the ranker's own buffers (0 / 1) wait for
        a checkpoint's, which hold the statistics it was trained with."""
        return {"schema": self.schema, "num_embeddings": self.num_embeddings, "num_pair_dense": self.num_pair_dense,
                "dense_stats": None if self.train_rows is None else self.dense_stats(),
                "text_vectors": self.pipeline.text_vectors,
                "objectives": predicted(self.objectives)}

    # -- loaders ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return training_loader(self, TrainPairs(self), self.batch_size, self.seed, drop_last=False,
                               num_workers=self.num_workers)

    def eval_dataloader(self, split: str) -> DataLoader:
        return evaluation_loader(CandidateLists(self, split), self.eval_batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
