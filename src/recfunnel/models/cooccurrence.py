"""Item-to-item co-occurrence: a non-neural candidate source scored from the user's latest items.

Fit (train split only, so nothing of a valid or test event can leak into it):

- Each user's train events are taken in protocol order (``SplitData.order``: user, ts, source
  position). Two events ``d`` positions apart (``1 <= d <= window``) make a pair of items weighted
  ``d ** -distance_power`` (1/sqrt(d) by default; 1/d with ``distance_power=1``): the earlier item *i* and the later item *j* add that
  weight to ``C[i, j]`` and ``backward`` times it to ``C[j, i]`` (``backward=1``: symmetric).
  ``window=None`` counts every pair of a user's train items with weight 1 (``C = XᵀX`` over the
  binary user × item matrix; the order and distance play no part then). The diagonal is dropped.
- ``normalize``: ``"none"`` keeps the weighted counts; ``"cosine"`` divides by
  ``sqrt(n_i n_j)`` (``n`` = train events per item) so popular items stop dominating every row;
  ``"conditional"`` divides row *i* by ``n_i`` (so each history item carries comparable weight
  whatever its popularity, and popular neighbours keep their advantage).
- ``neighbours``: only the top-N entries of each row are kept (ties: lower item index first), so the
  (I, I) matrix stays sparse on large catalogues.

Score, for one target of an ``EvalSet``: the user's last ``history`` events strictly before the
target in protocol order (exactly what the protocol treats as known: train events for a valid
target, train + valid for a test target), the k-th newest weighted ``decay ** k`` (k = 0 newest),
give a sparse query row ``q`` (I,); the scores are ``q @ S`` (S the pruned, normalised matrix).
A tiny popularity tie-breaker is added, scaled per user below their smallest positive score, so every
co-occurring item stays above every other one, and items with no co-occurrence (all of them, for a
user with none) are ranked by train popularity, as ``Popularity`` ranks them.

The defaults (also ``configs/model/cooccurrence.yaml``) were chosen on ML-100K validation Recall@100:
valid 0.7052, test 0.6511 (Recall@10 0.2174, NDCG@10 0.1171).

    python -m recfunnel.evaluate model=cooccurrence hydra.run.dir=DIR
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.eval.protocol import EvalSet, Scorer
from recfunnel.utils.arrays import concat_ranges
from recfunnel.utils.errors import RecfunnelError

NORMALIZE = ("none", "cosine", "conditional")
# Scoring multiplies sparse query rows by S. Against a dense copy of S the product is 4.6x faster on
# ML-100K (S 42% full; 512 queries: 6.6 ms against 30 ms, the same numbers to the bit), so a fitted
# model keeps one when it costs at most this much memory and S is at least this full.
DENSE_PRODUCT_MAX_BYTES = 256 << 20
DENSE_PRODUCT_MIN_FILL = 1 / 16


def top_n_per_row(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """``m`` (R, C) with only each row's ``n`` largest entries kept (ties: lower column first); vectorised."""
    m = m.tocsr()
    m.sum_duplicates()
    m.sort_indices()
    lengths = np.diff(m.indptr)
    if lengths.max(initial=0) <= n:
        return m
    rows = np.repeat(np.arange(m.shape[0]), lengths)
    order = np.lexsort((m.indices, -m.data, rows))  # by row, then value descending, then column
    rank = np.arange(len(order)) - m.indptr[rows[order]]
    keep = np.sort(order[rank < n])  # back into CSR order (row, column)
    out = sp.csr_matrix((m.data[keep], m.indices[keep], np.r_[0, np.cumsum(np.minimum(lengths, n))]), shape=m.shape)
    return out


class Cooccurrence:
    """Item-to-item co-occurrence over the user's latest items (see the module docstring).

    Args:
        window: pairs of a user's train events at most ``window`` positions apart count; None: every
            pair of the user's train items, weight 1.
        distance_power: a pair ``d`` positions apart weighs ``d ** -distance_power`` (1: 1/d; 0: flat).
        backward: weight of the pair in the backward direction (later item → earlier one); 1 = symmetric.
        normalize: ``"none"``, ``"cosine"`` (count / sqrt(n_i n_j)) or ``"conditional"`` (count / n_i).
        neighbours: top-N neighbours kept per item (None: all).
        history: how many of the user's latest items before the target are used (None: all).
        decay: the k-th newest history item (k = 0 newest) weighs ``decay ** k``.
        tie_break: the popularity tie-breaker's scale, relative to each user's smallest positive score.

    After ``fit``: ``matrix`` (I, I) float64 CSR, row = history item, column = candidate;
    ``counts`` (I,) train events per item; ``dense_matrix`` the same matrix as a dense array when it
    is small and full enough to be the faster operand (``DENSE_PRODUCT_MAX_BYTES``), else None.
    """

    PAIRS_PER_BATCH = 1 << 23  # pairs collected before they are added into the matrix (memory bound)

    def __init__(self, window: int | None = 50, distance_power: float = 0.5, backward: float = 1.0,
                 normalize: str = "cosine", neighbours: int | None = None, history: int | None = 20,
                 decay: float = 0.8, tie_break: float = 1e-3) -> None:
        if normalize not in NORMALIZE:
            raise RecfunnelError(f"model.normalize={normalize!r} is not valid; choose one of: {', '.join(NORMALIZE)}")
        if window is not None and window < 1:
            raise RecfunnelError(f"model.window={window} is not valid; use an integer >= 1, or null for every pair")
        if history is not None and history < 1:
            raise RecfunnelError(f"model.history={history} is not valid; use an integer >= 1, or null for all earlier items")
        if not 0 < decay <= 1:
            raise RecfunnelError(f"model.decay={decay} is not valid; use a value in (0, 1]")
        if not 0 < tie_break < 1:
            raise RecfunnelError(f"model.tie_break={tie_break} is not valid; use a value in (0, 1)")
        self.window, self.distance_power, self.backward = window, distance_power, backward
        self.normalize, self.neighbours, self.history, self.decay = normalize, neighbours, history, decay
        self.tie_break = tie_break
        self.matrix: sp.csr_matrix | None = None
        self.dense_matrix: np.ndarray | None = None
        self.counts: np.ndarray | None = None

    # -- fit -----------------------------------------------------------------------------------------
    def fit(self, data: SplitData, users: np.ndarray | None = None) -> Cooccurrence:
        """Count co-occurrences on ``data``'s train split (only the train events of ``users``, a
        (num_users,) bool mask, when given); keep the protocol order to find histories later."""
        I = data.num_items
        rows = data.rows(TRAIN)  # protocol order: grouped by user, time-ordered within a user
        if users is not None:
            rows = rows[np.asarray(users, bool)[data.user_idx[rows]]]
        users, items = data.user_idx[rows], data.item_idx[rows]
        self.counts = np.bincount(items, minlength=I).astype(np.float64)
        if self.window is None:
            x = sp.csr_matrix((np.ones(len(rows)), (users, items)), shape=(data.num_users, I))
            x.data[:] = 1.0  # repeated (user, item) events count once
            c = (x.T @ x).tocsr()
        else:
            c = sp.csr_matrix((I, I), dtype=np.float64)
            pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            for d in range(1, self.window + 1):  # one vectorised pass per distance
                same = users[:-d] == users[d:]
                a, b = items[:-d][same], items[d:][same]  # earlier item i, later item j
                pending.append((a, b, np.full(len(a), float(d) ** -self.distance_power)))
                last = d == self.window or len(a) == 0  # no user has more than d events: nothing further
                if last or sum(len(x[0]) for x in pending) >= self.PAIRS_PER_BATCH:
                    a, b, w = (np.concatenate(x) for x in zip(*pending))
                    part = sp.csr_matrix((w, (a, b)), shape=(I, I))
                    c = c + part
                    if self.backward:
                        c = c + self.backward * part.T.tocsr()
                    pending = []
                if last:
                    break
        c = c.tocsr()
        c.setdiag(0)
        c.eliminate_zeros()
        c = c.tocoo()
        n = np.maximum(self.counts, 1.0)
        if self.normalize == "cosine":
            c.data = c.data / np.sqrt(n[c.row] * n[c.col])
        elif self.normalize == "conditional":
            c.data = c.data / n[c.row]
        c = c.tocsr()
        self.matrix = top_n_per_row(c, self.neighbours) if self.neighbours else c
        cells = self.matrix.shape[0] * self.matrix.shape[1]
        small = cells * 8 <= DENSE_PRODUCT_MAX_BYTES and self.matrix.nnz >= cells * DENSE_PRODUCT_MIN_FILL
        self.dense_matrix = self.matrix.toarray() if small else None
        # the protocol timeline of every event (all splits), to find each target's earlier events
        self._order = data.order
        self._position = np.empty(len(data.order), dtype=np.int64)
        self._position[data.order] = np.arange(len(data.order))
        self._user_start = np.searchsorted(data.user_idx[data.order], data.user_idx, side="left")
        self._item_idx = data.item_idx
        self._num_events = len(data.order)
        return self

    # -- score ---------------------------------------------------------------------------------------
    def history_matrix(self, rows: np.ndarray) -> sp.csr_matrix:
        """(B, I) sparse query rows: for each event row (B,), the user's last ``history`` events strictly
        before it in protocol order, the k-th newest weighted ``decay ** k``."""
        rows = np.asarray(rows, dtype=np.int64)
        end = self._position[rows]  # exclusive: the target itself and later events never enter
        start = self._user_start[rows]
        if self.history is not None:
            start = np.maximum(start, end - self.history)
        return self.query_matrix(self._item_idx[self._order[concat_ranges(start, end)]], end - start)

    def query_matrix(self, items: np.ndarray, lengths: np.ndarray) -> sp.csr_matrix:
        """(B, I) sparse query rows from B histories: ``items`` (sum L,) the items of each, oldest
        first, ``lengths`` (B,); the last ``history`` of each count, the k-th newest ``decay ** k``."""
        lengths = np.asarray(lengths, dtype=np.int64)
        ends = np.cumsum(lengths)
        keep = lengths if self.history is None else np.minimum(lengths, self.history)
        where = concat_ranges(ends - keep, ends)
        newest_first = np.repeat(ends, keep) - 1 - where  # k = 0 for the newest
        weights = self.decay ** newest_first.astype(np.float64)
        # CSR directly (an item repeated in a history is a repeated column, which products sum)
        return sp.csr_matrix((weights, np.asarray(items, np.int64)[where], np.r_[0, np.cumsum(keep)]),
                             shape=(len(lengths), len(self.counts)))

    def score_queries(self, queries: sp.csr_matrix) -> np.ndarray:
        """(B, I) float32 scores of B sparse query rows (``query_matrix``): co-occurrence + tie-breaker.

        ``score[u, j] = sum_k decay**k S[h_k, j] + eps_u * n_j / max(n)``, with ``h_k`` the k-th newest
        history item and ``eps_u = tie_break * (u's smallest positive co-occurrence score)``, or
        ``tie_break`` when u has none. So every item with some co-occurrence stays above every item with
        none, those are ordered by popularity, and co-occurrence scores closer than ``eps_u`` are the only
        ones the tie-breaker can reorder.
        """
        assert self.matrix is not None, "call fit() first"
        m = self.dense_matrix
        dense = queries @ m if m is not None else (queries @ self.matrix).toarray()
        positive = np.where(dense > 0, dense, np.inf).min(axis=1)
        eps = self.tie_break * np.where(np.isfinite(positive), positive, 1.0)
        pop = self.counts / max(self.counts.max(initial=0.0), 1.0)
        return (dense + eps[:, None] * pop[None, :]).astype(np.float32)

    def score_rows(self, rows: np.ndarray) -> np.ndarray:
        """(B, I) float32 scores (``score_queries``) for the targets at event ``rows`` (B,) of the data
        it was fitted on."""
        return self.score_queries(self.history_matrix(rows))

    def score_histories(self, items: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """(B, I) float32 scores (``score_queries``) for B histories (``query_matrix``'s arguments), e.g.
        a feature pipeline's ``history_events`` of a request view."""
        return self.score_queries(self.query_matrix(items, lengths))

    def scorer(self, evalset: EvalSet) -> Scorer:
        """Positions (B,) into ``evalset`` → (B, num_items) float32 scores for those targets' users."""
        assert self.matrix is not None, "call fit() first"
        if len(evalset) and (evalset.rows.max() >= self._num_events
                             or not np.array_equal(self._item_idx[evalset.rows], evalset.targets)):
            raise RecfunnelError("the EvalSet was not built from the data this model was fitted on; fit the model on that data")
        return lambda idx: torch.from_numpy(self.score_rows(evalset.rows[np.asarray(idx)]))
