"""The funnel's first stage from several sources: the two-tower retriever fused with item-to-item
co-occurrence and, optionally, a second retriever.

    fusion = RankFusion.build(retriever, cfg.first_stage, second=second)  # None: the index alone
    queries, lists, scores = fusion.retrieve(rows, k=100)   # a CandidateSource, as a Retriever is

Each source ranks the catalogue for a query event, the user's earlier items removed: a retriever
through its FAISS index, co-occurrence (``recfunnel.models.cooccurrence``) from the user's latest
items. The top ``depth`` of each are fused by reciprocal rank,

    fused(j) = (1 - s) · [w / (k0 + rank_two_tower(j)) + (1 - w) / (k0 + rank_cooccurrence(j))]
               + s / (k0 + rank_second(j)),

a source's term left out for an item outside its top ``depth`` (w = ``weight``, s = ``second_weight``;
without co-occurrence the two-tower term has weight 1 - s), and the K items of highest fused score are
the candidates. The defaults (k0 = 60, weight = 0.3) were chosen on ML-100K validation NDCG@10 of the
full-catalogue fusion (``benchmarks/candidate_recall.py --fusion``).

The second retriever (the funnel's ``second_retriever``, e.g. the causal transformer beside the
recency-pooled two-tower) reads the first one's data and features (``Retriever.beside``). A first
stage with one has query vectors of both, side by side: (B, d1 + d2), the first retriever's d1 first;
``item_vectors`` stays the first retriever's (what the ranker's pair features read). The second
retriever's score as a ranker pair feature was tried on ML-100K and not kept (docs/ml100k-tried.md).

Co-occurrence as of each event, without leakage into the ranker's training (``CrossFitted``): valid,
test and served events are scored by the model fitted on every train event, all of which precede
them; a train event is scored by a model fitted on the other users' train events only (``folds``
user folds: cross-fitting), because the full model counts the event itself and its user's later
events. The ranker's pair feature ``cooc_score`` (``recfunnel.data.ranking``) reads the same scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.store import FeatureStore
from recfunnel.models.cooccurrence import Cooccurrence
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.arrays import concat_ranges
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.progress import progress_bar

log = logging.getLogger(__name__)


SECOND_RUN_FILE = "second_retriever_run.txt"  # in a funnel run with a second retriever: that run's directory


def read_second_retriever_run(funnel_dir: str | Path) -> Path | None:
    """The second retriever run a finished funnel run used (its ``second_retriever_run.txt``), or None."""
    path = Path(funnel_dir) / SECOND_RUN_FILE
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if not text:
        raise RecfunnelError(f"{path} names no run; it should hold the second retriever's run directory")
    return Path(text)


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
    """The top-``depth`` lists of the retriever, co-occurrence and a second retriever fused by
    reciprocal rank (module docstring).

    Args:
        retriever: the loaded two-tower run.
        cooccurrence: co-occurrence fitted on the retriever's data (None: not a source).
        weight: the two-tower term's weight against co-occurrence's (1 − weight), in [0, 1].
        k0: the rank offset (larger: flatter weights down the lists), > 0.
        depth: how much of each source's ranking is fused (≥ the candidates asked for).
        second: a second retriever over the first one's data and features (``Retriever.beside``).
        second_weight: its term's weight, in [0, 1); the others share 1 − second_weight (without
            ``second``: no effect, the fused scores are those of the two sources).
    """

    def __init__(self, retriever: Retriever, cooccurrence: CrossFitted | None, weight: float = 0.3, k0: float = 60.0,
                 depth: int = 200, chunk: int = 512, second: Retriever | None = None, second_weight: float = 0.0):
        if not 0 <= weight <= 1:
            raise RecfunnelError(f"first_stage.weight={weight} is not valid; use a value in [0, 1]")
        if k0 <= 0:
            raise RecfunnelError(f"first_stage.k0={k0} is not valid; use a value > 0")
        if not 0 <= second_weight < 1:
            raise RecfunnelError(f"first_stage.second_weight={second_weight} is not valid; use a value in [0, 1)")
        self.retriever, self.cooccurrence, self.second = retriever, cooccurrence, second
        self.weight, self.k0, self.depth, self.chunk = float(weight), float(k0), int(depth), chunk
        self.second_weight = float(second_weight) if second is not None else 0.0

    @classmethod
    def build(cls, retriever: Retriever, cfg: Mapping[str, Any] | None, seed: int = 0,
              second: Retriever | None = None) -> RankFusion | None:
        """From the funnel's ``first_stage`` config and its loaded ``second`` retriever, if any; None
        when there is neither co-occurrence (``first_stage.cooccurrence``) nor a second retriever."""
        cfg = cfg or {}
        options = cfg.get("cooccurrence")
        if options is None and second is None:
            return None
        cooc = None
        if options is not None:
            folds = {"folds": int(cfg["folds"])} if "folds" in cfg else {}
            cooc = CrossFitted(lambda: hydra.utils.instantiate(options), retriever.data, seed=seed, **folds)
        fusion = cls(retriever, cooc, **{k: cfg[k] for k in ("weight", "k0", "depth", "second_weight") if k in cfg},
                     second=second)
        log.info("first stage: two-tower%s%s fused by reciprocal rank (weight %.2f, k0 %g, depth %d)",
                 f" + co-occurrence ({cooc.folds} folds)" if cooc else "",
                 f" + {second.run_dir} (second_weight {fusion.second_weight:.2f})" if second else "",
                 fusion.weight, fusion.k0, fusion.depth)
        return fusion

    @classmethod
    def of_funnel_run(cls, retriever: Retriever, funnel_dir: str | Path, cfg: Mapping[str, Any]) -> RankFusion | None:
        """The first stage of the finished funnel run ``funnel_dir`` (its config ``cfg``) over its loaded
        ``retriever``: the fusion refitted (deterministic), its second retriever loaded beside it."""
        second = read_second_retriever_run(funnel_dir)
        return cls.build(retriever, cfg.get("first_stage"), seed=cfg["seed"],
                         second=Retriever.beside(second, retriever) if second else None)

    # what the ranker's data needs of a first stage (recfunnel.data.ranking.CandidateSource)
    @property
    def data(self) -> SplitData:
        return self.retriever.data

    @property
    def item_vectors(self) -> np.ndarray:
        return self.retriever.item_vectors

    def query_vectors(self, pipeline: FeaturePipeline | FeatureStore, rows: np.ndarray) -> np.ndarray:
        """(B, d1 [+ d2]) the retriever's query vectors for event ``rows`` (B,) of ``pipeline`` (the
        retriever's pipeline, store or a request view), the second retriever's beside them."""
        return self.retriever.query_vectors(pipeline, rows, beside=[self.second] if self.second is not None else [])

    def retrieve(self, rows: np.ndarray, k: int, what: str = "events") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query vectors (B, d1 [+ d2]; ``query_vectors``), fused top-``k`` lists (B, k; the user's
        earlier items removed, −1 pads) and their fused scores (B, k) for event ``rows`` (B,) of the
        retriever's data; train events read out-of-fold co-occurrence."""
        r = self.retriever
        queries, lists, scores = [], [], []
        for lo in progress_bar(range(0, len(rows), self.chunk), desc=f"retrieving and fusing for {what}", leave=False,
                               disable=len(rows) <= 8 * self.chunk):
            part = rows[lo:lo + self.chunk]
            q = self.query_vectors(r.store, part)
            items, s = self.search(r.pipeline, part, q, r.seen_before(r.pipeline, part), k,
                                   in_sample=r.data.split[part] == TRAIN)
            queries.append(q), lists.append(items), scores.append(s)
        if not lists:
            return self.query_vectors(r.store, rows), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(queries), np.concatenate(lists), np.concatenate(scores)

    def search(self, pipeline: FeaturePipeline, rows: np.ndarray, queries: np.ndarray,
               seen: tuple[np.ndarray, np.ndarray], k: int, in_sample: np.ndarray | bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """Fused top-``k`` items (B, k) int64 (−1 where fewer remain) and fused scores (B, k) float32
        (−inf there) for event ``rows`` (B,) of ``pipeline`` with ``queries`` (B, d1 [+ d2];
        ``query_vectors``), without each row's ``seen`` items (CSR: indptr (B+1,), items)."""
        B = len(rows)
        depth = max(self.depth, k)
        d1 = self.retriever.index.dim
        rest = 1.0 - self.second_weight
        two_tower, _ = self.retriever.search(queries[:, :d1], depth, seen=seen)
        sources = [(two_tower, rest * (self.weight if self.cooccurrence is not None else 1.0))]
        if self.cooccurrence is not None:
            cooc = self.cooccurrence.scores(pipeline, rows, in_sample).copy()
            ptr, seen_items = seen
            cooc[np.repeat(np.arange(B), np.diff(ptr)), seen_items] = -np.inf
            sources.append((top_k_rows(cooc, depth)[0], rest * (1.0 - self.weight)))
        if self.second is not None:
            sources.append((self.second.search(queries[:, d1:], depth, seen=seen)[0], self.second_weight))
        items, scores = self.fuse(sources, k)
        return items, scores.astype(np.float32)

    def fuse(self, sources: list[tuple[np.ndarray, float]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Reciprocal-rank fusion of ranked lists: ``sources`` [(items (B, D_s), −1 = empty; weight)]
        → the top-``k`` items (B, k) by fused score, ties to the lower item, and their float64 scores.

        Computed over the union of the lists, (B, Σ D_s), not over the catalogue: each row's entries
        sorted by item (stably, so one item's terms stay in source order and add up in the order a
        catalogue-wide sum would), an item's terms summed into its first entry."""
        items = np.concatenate([lst for lst, _ in sources], 1)
        terms = np.concatenate([np.broadcast_to(w / (self.k0 + np.arange(lst.shape[1]) + 1), lst.shape)
                                for lst, w in sources], 1)
        order = np.argsort(np.where(items >= 0, items, np.iinfo(np.int64).max), axis=1, kind="stable")
        items, terms = np.take_along_axis(items, order, 1), np.take_along_axis(terms, order, 1)
        fused = terms.copy()
        for offset in range(1, len(sources)):  # an item is in at most one entry per source
            same = (items[:, offset:] == items[:, :-offset]) & (items[:, offset:] >= 0)
            fused[:, :-offset] += np.where(same, terms[:, offset:], 0.0)
        first = items >= 0
        first[:, 1:] &= items[:, 1:] != items[:, :-1]
        # columns are in item order, so top_k_rows's ties to the lower column are ties to the lower item
        cols, scores = top_k_rows(np.where(first, fused, -np.inf), k)
        return np.where(cols >= 0, np.take_along_axis(items, np.maximum(cols, 0), 1), -1), scores
