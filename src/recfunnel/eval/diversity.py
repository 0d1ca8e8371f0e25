"""Beyond-accuracy metrics of top-N lists: catalogue coverage and intra-list diversity.

Both take ``items`` (U, N) int64 dense item indices with -1 padding (as ``rerank.Slate.items``).

- ``catalogue_coverage``: fraction of the catalogue recommended to at least one user.
- ``intra_list_diversity`` (ILD, Ziegler et al. 2005): mean over users of the mean pairwise
  cosine distance (1 - cosine similarity) between a list's items, from item feature rows
  (genre multi-hot or embeddings). Lists with fewer than two real items are skipped.
"""

from __future__ import annotations

import numpy as np

from recfunnel.utils.errors import RecfunnelError

__all__ = ["catalogue_coverage", "intra_list_diversity"]


def _check_items(items: np.ndarray, num_items: int, fn: str) -> np.ndarray:
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 2:
        raise RecfunnelError(f"{fn}: items must be (U, N) with -1 padding, got shape {items.shape}")
    if items.size and (items.max() >= num_items or items.min() < -1):
        raise RecfunnelError(f"{fn}: item indices must lie in [-1, {num_items}), got "
                             f"[{int(items.min())}, {int(items.max())}]")
    return items


def catalogue_coverage(items: np.ndarray, num_items: int) -> float:
    """Fraction of the catalogue appearing in at least one user's list; items (U, N) with -1 padding."""
    if num_items < 1:
        raise RecfunnelError(f"catalogue_coverage: num_items must be >= 1, got {num_items}")
    items = _check_items(items, num_items, "catalogue_coverage")
    hit = np.zeros(num_items, dtype=bool)
    hit[items[items >= 0]] = True
    return float(hit.mean())


def intra_list_diversity(items: np.ndarray, features: np.ndarray) -> float:
    """Mean over users of the mean pairwise (1 - cosine similarity) between the items of a list, from
    item feature rows (I, F) (genres multi-hot or embeddings); lists with < 2 real items are skipped;
    zero vectors have similarity 0 with everything.

    Returns NaN when no list has two real items. Cost O(U N F): the pair sum uses
    sum_{i != j} x_i . x_j = |sum_i x_i|^2 - sum_i |x_i|^2 over unit (or zero) rows.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise RecfunnelError(f"intra_list_diversity: features must be (I, F), got shape {features.shape}")
    items = _check_items(items, features.shape[0], "intra_list_diversity")
    real = items >= 0
    x = features[np.maximum(items, 0)].astype(np.float64)             # (U, N, F)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    x = np.divide(x, norm, out=np.zeros_like(x), where=(norm > 0) & real[..., None])
    total = x.sum(1)                                                  # (U, F)
    pair_sim = (total * total).sum(1) - (x * x).sum((1, 2))           # sum over ordered pairs i != j
    r = real.sum(1)
    ok = r >= 2
    if not ok.any():
        return float("nan")
    mean_sim = pair_sim[ok] / (r[ok] * (r[ok] - 1))
    return float(np.mean(1.0 - mean_sim))
