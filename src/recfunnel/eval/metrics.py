"""Full-corpus ranking metrics exactly as ``../shared/EVALUATION.md`` defines them.

One target per user. With ``g`` candidates scoring strictly above the target and ``t`` others tied
with it, every rank in ``g+1 … g+t+1`` is equally likely; each metric is its expectation:

- Recall@K = P(rank ≤ K) = clip((K − g) / (t + 1), 0, 1)
- NDCG@K  = mean over those ranks r ≤ K of 1 / log2(r + 1)  (0 for ranks beyond K)
- MRR     = mean over those ranks of 1 / r

Everything is vectorised over a (users × items) score matrix in torch; excluded items (the user's
earlier items) are taken out of the counts, the target never is.
"""

from __future__ import annotations

import torch

RECALL_KS = (10, 20, 50, 100)
NDCG_KS = (10, 20)


def count_where(compare, scores: torch.Tensor, threshold: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) long: per row, how many of ``scores`` (B, I) satisfy ``compare(scores, threshold)``
    (``torch.gt`` or ``torch.eq``; ``threshold`` (B, 1)).

    The comparison is written as 0/1 into a float buffer (``work``, the shape of ``scores``; made
    when not given) and summed as floats: on CPU that is ~5x faster than summing the bool mask
    (whose int32 sum is not vectorised; 16.7M scores: 6.5 vs 32 ms). Float32 counts integers
    exactly below 2^24, so longer rows use float64.
    """
    dtype = torch.float32 if scores.shape[1] < 1 << 24 else torch.float64
    if work is None or work.shape != scores.shape or work.dtype != dtype:
        work = torch.empty(scores.shape, dtype=dtype, device=scores.device)
    return compare(scores, threshold, out=work).sum(1).long()


def target_rank_counts(scores: torch.Tensor, targets: torch.Tensor,
                       exclude: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                       work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Count competitors of each target.

    Args:
        scores: (B, I) float scores over the whole catalogue.
        targets: (B,) item index of each row's target.
        exclude: items removed from the candidates, either a (B, I) bool mask or unique
            (row, item) index pairs (two (E,) long tensors), which is far cheaper on large
            catalogues. The target is never removed, whatever ``exclude`` says.
        work: optional (B, I) float buffer for the comparisons (see ``count_where``), so that a
            caller scoring many chunks allocates it once.
    Returns:
        greater: (B,) number of candidates scoring strictly above the target.
        ties: (B,) number of other candidates scoring exactly the same as the target.
    """
    B = scores.shape[0]
    target_score = scores[torch.arange(B, device=scores.device), targets]
    greater = count_where(torch.gt, scores, target_score[:, None], work)
    ties = count_where(torch.eq, scores, target_score[:, None], work) - 1
    if exclude is None:
        return greater, ties
    rows, cols = exclude.nonzero(as_tuple=True) if isinstance(exclude, torch.Tensor) else exclude
    keep = cols != targets[rows]
    rows, cols = rows[keep], cols[keep]
    excluded_score, their_target = scores[rows, cols], target_score[rows]
    greater = greater - torch.bincount(rows[excluded_score > their_target], minlength=B)
    ties = ties - torch.bincount(rows[excluded_score == their_target], minlength=B)
    return greater, ties


def _prefix(values: torch.Tensor) -> torch.Tensor:
    """(n+1,) prefix sums with a leading zero, in float64 for exactness on long catalogues."""
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


def metrics_from_counts(greater: torch.Tensor, ties: torch.Tensor, num_items: int,
                        recall_ks=RECALL_KS, ndcg_ks=NDCG_KS) -> dict[str, torch.Tensor]:
    """Per-user expected metrics (each a (B,) float64 tensor) from ``target_rank_counts``."""
    g = greater.to(torch.float64)
    n = (ties + 1).to(torch.float64)  # number of equally likely ranks
    ranks = torch.arange(1, num_items + 2, dtype=torch.float64, device=greater.device)
    dcg = _prefix(1.0 / torch.log2(ranks + 1))  # dcg[m] = sum_{r<=m} 1/log2(r+1)
    harmonic = _prefix(1.0 / ranks)
    lo, hi = greater.long(), (greater + ties + 1).long()  # ranks lo+1 .. hi
    out = {}
    for k in recall_ks:
        out[f"recall@{k}"] = ((k - g) / n).clamp(0.0, 1.0)
    for k in ndcg_ks:
        top = hi.clamp(max=k)
        out[f"ndcg@{k}"] = torch.where(top > lo, (dcg[top] - dcg[lo.clamp(max=k)]) / n, torch.zeros_like(g))
    out["mrr"] = (harmonic[hi] - harmonic[lo]) / n
    return out


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor,
                    exclude: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                    recall_ks=RECALL_KS, ndcg_ks=NDCG_KS, work: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-user metrics for one chunk of users: (B, I) scores → {name: (B,) tensor}. ``work``: see
    ``target_rank_counts``."""
    greater, ties = target_rank_counts(scores, targets, exclude, work)
    return metrics_from_counts(greater, ties, scores.shape[1], recall_ks, ndcg_ks)


def list_metrics(lists: torch.Tensor, targets: torch.Tensor, recall_ks=RECALL_KS,
                 ndcg_ks=NDCG_KS) -> dict[str, torch.Tensor]:
    """Per-user metrics of *returned lists* (a funnel's output), not of full-catalogue scores.

    Args:
        lists: (B, N) item indices, best first (−1 = empty slot).
        targets: (B,) the target item of each row.
    Returns:
        {name: (B,) float64}: the target's rank is its position in the list; a target missing from
        the list scores 0 on every metric (MRR included). Recall@K is reported for K ≤ N only.
    """
    hit = lists == targets[:, None]
    found = hit.any(1)
    rank = (hit.to(torch.int64).argmax(1) + 1).to(torch.float64)
    zero = torch.zeros_like(rank)
    out = {f"recall@{k}": (found & (rank <= k)).to(torch.float64) for k in recall_ks if k <= lists.shape[1]}
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = torch.where(found & (rank <= k), 1.0 / torch.log2(rank + 1), zero)
    out["mrr"] = torch.where(found, 1.0 / rank, zero)
    return out
