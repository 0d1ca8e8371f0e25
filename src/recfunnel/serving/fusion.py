"""The funnel's first stage from two sources: the two-tower retriever fused with item-to-item co-occurrence.

    fusion = RankFusion.build(retriever, cfg.first_stage)   # None when first_stage.cooccurrence is null
    queries, lists, scores = fusion.retrieve(rows, k=100)   # a CandidateSource, as a Retriever is

Each source ranks the catalogue for a query event, the user's earlier items removed: the retriever
through its FAISS index, co-occurrence (``recfunnel.models.cooccurrence``) from the user's latest
items. The top ``depth`` of each are fused by reciprocal rank,

    fused(j) = weight / (k0 + rank_two_tower(j)) + (1 - weight) / (k0 + rank_cooccurrence(j)),

a source's term left out for an item outside its top ``depth``, and the K items of highest fused
score are the candidates. The defaults (k0 = 60, weight = 0.3) were chosen on ML-100K validation
NDCG@10 of the full-catalogue fusion (``benchmarks/candidate_recall.py --fusion``).

Co-occurrence as of each event, without leakage into the ranker's training (``CrossFitted``): valid,
test and served events are scored by the model fitted on every train event, all of which precede
them; a train event is scored by a model fitted on the other users' train events only (``folds``
user folds: cross-fitting), because the full model counts the event itself and its user's later
events. The ranker's pair feature ``cooc_score`` (``recfunnel.data.ranking``) reads the same scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import hydra
import numpy as np
from tqdm.auto import tqdm

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.models.cooccurrence import Cooccurrence
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.arrays import concat_ranges
from recfunnel.utils.errors import RecfunnelError

log = logging.getLogger(__name__)


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row of ``scores`` (B, I), best first, ties broken by the lower
    column (exactly, at the k-th place too): items (B, k) int64, −1 where the score is −inf, and
    their scores (B, k)."""
    B, I = scores.shape
    k = min(k, I)
    if k == 0:
        return np.zeros((B, 0), np.int64), np.zeros((B, 0), scores.dtype)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1:k]  # (B, 1) the k-th largest value
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(1, keepdims=True)  # how many of the tied ones fit, lowest columns first
    take = above | (tied & (np.cumsum(tied, axis=1) <= room))
    cols = np.nonzero(take)[1].reshape(B, k)
    s = np.take_along_axis(scores, cols, 1)
    order = np.lexsort((cols, -s), axis=1)
    items, s = np.take_along_axis(cols, order, 1), np.take_along_axis(s, order, 1)
    items[~np.isfinite(s)] = -1
    return items.astype(np.int64), s


class CrossFitted:
    """Co-occurrence scores as of each event (see the module docstring).

    Args:
        make: builds an unfitted ``Cooccurrence`` (its options).
        data: the data to fit on (its train split).
        folds: user folds of the cross-fitted models that score train events (≥ 2).
        seed: the users' assignment to folds.
    """

    def __init__(self, make: Callable[[], Cooccurrence], data: SplitData, folds: int = 5, seed: int = 0):
        if folds < 2:
            raise RecfunnelError(f"first_stage.folds={folds} is not valid; use an integer >= 2 (train events are "
                                 "scored by models fitted without their user's fold)")
        self._make, self._data, self.folds = make, data, folds
        self.full = make().fit(data)
        self.fold_of_user = np.random.default_rng(seed).permutation(data.num_users) % folds
        self._fold_models: dict[int, Cooccurrence] = {}
        self.history = self.full.history
        self._last: tuple[tuple[bytes, ...], np.ndarray] | None = None  # the latest call's histories and scores

    def model(self, fold: int) -> Cooccurrence:
        """The model of ``fold`` (−1: the full model), fitted on first use."""
        if fold < 0:
            return self.full
        if fold not in self._fold_models:
            self._fold_models[fold] = self._make().fit(self._data, users=self.fold_of_user != fold)
        return self._fold_models[fold]

    def scores(self, pipeline: FeaturePipeline, rows: np.ndarray, in_sample: np.ndarray | bool = False) -> np.ndarray:
        """(B, I) float32 co-occurrence scores (``Cooccurrence.score_queries``) for event ``rows`` (B,) of
        ``pipeline`` (the data's, or a request view), from each row's history in that pipeline.
        ``in_sample`` (bool or (B,) bool): rows that are train events of the fitted data, scored by
        their user's out-of-fold model. Read-only; the same histories as the latest call (a funnel's
        first stage, then its ranker's pair features) reuse that call's scores."""
        rows = np.asarray(rows, np.int64)
        max_len = self.history if self.history is not None else np.iinfo(np.int64).max // 4
        events, lengths = pipeline.history_events(rows, max_len)
        items = pipeline.item_idx[events]
        which = np.where(np.broadcast_to(in_sample, rows.shape), self.fold_of_user[pipeline.user_idx[rows]], -1)
        key = (which.tobytes(), lengths.tobytes(), items.tobytes())
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        if (which == which[:1]).all():
            out = self.model(int(which[0]) if len(which) else -1).score_histories(items, lengths)
        else:
            out = np.empty((len(rows), self._data.num_items), np.float32)
            ptr = np.r_[0, np.cumsum(lengths)]
            for fold in np.unique(which):
                sel = np.flatnonzero(which == fold)
                out[sel] = self.model(int(fold)).score_histories(items[concat_ranges(ptr[sel], ptr[sel + 1])],
                                                                 lengths[sel])
        out.flags.writeable = False
        self._last = (key, out)
        return out

    def at(self, pipeline: FeaturePipeline, rows: np.ndarray, items: np.ndarray, in_sample: bool = False) -> np.ndarray:
        """(B, C) float32 scores of ``items`` (B, C; −1 = empty slot, scored 0) for event ``rows`` (B,)."""
        dense = self.scores(pipeline, rows, in_sample)
        return np.where(items >= 0, np.take_along_axis(dense, np.maximum(items, 0), 1), 0.0).astype(np.float32)


class RankFusion:
    """The retriever's and co-occurrence's top-``depth`` lists fused by reciprocal rank (module docstring).

    Args:
        retriever: the loaded two-tower run.
        cooccurrence: co-occurrence fitted on the retriever's data.
        weight: the two-tower term's weight (co-occurrence's is 1 − weight), in [0, 1].
        k0: the rank offset (larger: flatter weights down the lists), > 0.
        depth: how much of each source's ranking is fused (≥ the candidates asked for).
    """

    def __init__(self, retriever: Retriever, cooccurrence: CrossFitted, weight: float = 0.3, k0: float = 60.0,
                 depth: int = 200, chunk: int = 512):
        if not 0 <= weight <= 1:
            raise RecfunnelError(f"first_stage.weight={weight} is not valid; use a value in [0, 1]")
        if k0 <= 0:
            raise RecfunnelError(f"first_stage.k0={k0} is not valid; use a value > 0")
        self.retriever, self.cooccurrence = retriever, cooccurrence
        self.weight, self.k0, self.depth, self.chunk = float(weight), float(k0), int(depth), chunk

    @classmethod
    def build(cls, retriever: Retriever, cfg: Mapping[str, Any] | None, seed: int = 0) -> RankFusion | None:
        """From the funnel's ``first_stage`` config; None when it names no co-occurrence model."""
        if not cfg or cfg.get("cooccurrence") is None:
            return None
        options = cfg["cooccurrence"]
        folds = {"folds": int(cfg["folds"])} if "folds" in cfg else {}
        cooc = CrossFitted(lambda: hydra.utils.instantiate(options), retriever.data, seed=seed, **folds)
        fusion = cls(retriever, cooc, **{k: cfg[k] for k in ("weight", "k0", "depth") if k in cfg})
        log.info("first stage: two-tower fused with co-occurrence (weight %.2f, k0 %g, depth %d, %d folds)",
                 fusion.weight, fusion.k0, fusion.depth, cooc.folds)
        return fusion

    # what the ranker's data needs of a first stage (recfunnel.data.ranking.CandidateSource)
    @property
    def data(self) -> SplitData:
        return self.retriever.data

    @property
    def item_vectors(self) -> np.ndarray:
        return self.retriever.item_vectors

    def retrieve(self, rows: np.ndarray, k: int, what: str = "events") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query vectors (B, d), fused top-``k`` lists (B, k; the user's earlier items removed, −1 pads)
        and their fused scores (B, k) for event ``rows`` (B,) of the retriever's data; train events
        read out-of-fold co-occurrence."""
        r = self.retriever
        queries, lists, scores = [], [], []
        for lo in tqdm(range(0, len(rows), self.chunk), desc=f"retrieving and fusing for {what}", leave=False,
                       disable=len(rows) <= 8 * self.chunk):
            part = rows[lo:lo + self.chunk]
            q = r.query_vectors(r.store, part)
            items, s = self.search(r.pipeline, part, q, r.seen_before(r.pipeline, part), k,
                                   in_sample=r.data.split[part] == TRAIN)
            queries.append(q), lists.append(items), scores.append(s)
        if not lists:
            return np.zeros((0, r.index.dim), np.float32), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(queries), np.concatenate(lists), np.concatenate(scores)

    def search(self, pipeline: FeaturePipeline, rows: np.ndarray, queries: np.ndarray,
               seen: tuple[np.ndarray, np.ndarray], k: int, in_sample: np.ndarray | bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Fused top-``k`` items (B, k) int64 (−1 where fewer remain) and fused scores (B, k) float32
        (−inf there) for event ``rows`` (B,) of ``pipeline`` with retriever ``queries`` (B, d), without
        each row's ``seen`` items (CSR: indptr (B+1,), items)."""
        B, num_items = len(rows), self.retriever.index.num_items
        depth = max(self.depth, k)
        two_tower, _ = self.retriever.search(queries, depth, seen=seen)
        cooc = self.cooccurrence.scores(pipeline, rows, in_sample).copy()
        ptr, seen_items = seen
        cooc[np.repeat(np.arange(B), np.diff(ptr)), seen_items] = -np.inf
        cooccurrence, _ = top_k_rows(cooc, depth)
        fused = np.zeros((B, num_items), np.float64)
        member = np.zeros((B, num_items), bool)
        for items, w in ((two_tower, self.weight), (cooccurrence, 1.0 - self.weight)):
            b, rank = np.nonzero(items >= 0)
            fused[b, items[b, rank]] += w / (self.k0 + rank + 1)
            member[b, items[b, rank]] = True
        items, scores = top_k_rows(np.where(member, fused, -np.inf), k)
        if items.shape[1] < k:  # a catalogue smaller than k
            pad = k - items.shape[1]
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return items, scores.astype(np.float32)
