"""The evaluation protocol as data: which users, which target, which items to exclude, per split.

``EvalSet.build(data, "test")`` gives every user with a test event, the target item, and a CSR
list of excluded items (train items for valid; train + valid items for test), and which targets are
in each slice (``recfunnel.eval.slices``). ``evaluate`` runs any scorer over the full catalogue in user
chunks and averages ``metrics.ranking_metrics``, over all targets and over each slice's
(``cold/...``, ``query/...`` keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
import torch

from recfunnel.data.dataset import TEST, TRAIN, VALID, SplitData
from recfunnel.eval.metrics import ranking_metrics
from recfunnel.eval.slices import metric_means, slice_sums, target_slices
from recfunnel.utils.arrays import concat_ranges, sorted_unique
from recfunnel.utils.progress import progress_bar

SPLIT_CODES = {"valid": VALID, "test": TEST}


@dataclasses.dataclass
class EvalSet:
    """One target per user for one split.

    rows: (U,) event row of each target (index into the interactions table).
    users: (U,) dense user index; targets: (U,) dense item index.
    exclude_ptr: (U+1,), exclude_items: (E,) CSR of items removed from each user's candidates.
    slices: {name: (U,) bool} which targets are in each slice that applies to the data
        (``recfunnel.eval.slices``); empty: no slice.
    """

    name: str
    rows: np.ndarray
    users: np.ndarray
    targets: np.ndarray
    exclude_ptr: np.ndarray
    exclude_items: np.ndarray
    slices: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def build(cls, data: SplitData, name: str) -> EvalSet:
        code = SPLIT_CODES[name]
        rows = data.rows(code)
        users = data.user_idx[rows]
        seen_codes = [TRAIN] if code == VALID else [TRAIN, VALID]
        seen = np.isin(data.split, seen_codes)
        # seen items per user as CSR aligned with `users`
        su, si = data.user_idx[seen], data.item_idx[seen]
        pairs = sorted_unique(su * data.num_items + si)
        su, si = pairs // data.num_items, pairs % data.num_items
        starts = np.searchsorted(su, users, side="left")
        ends = np.searchsorted(su, users, side="right")
        ptr = np.r_[0, np.cumsum(ends - starts)]
        items = si[concat_ranges(starts, ends)]
        return cls(name, rows, users, data.item_idx[rows], ptr, items, target_slices(data, rows))

    def __len__(self) -> int:
        return len(self.users)

    def exclusion_pairs(self, positions: np.ndarray, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, items): the excluded items of those users of this set, rows counted within ``positions``."""
        positions = np.asarray(positions)
        lo, hi = self.exclude_ptr[positions], self.exclude_ptr[positions + 1]
        rows = np.repeat(np.arange(len(positions)), hi - lo)
        cols = self.exclude_items[concat_ranges(lo, hi)]
        return torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)


Scorer = Callable[[np.ndarray], torch.Tensor]
"""Given ``idx`` (B,) positions into an EvalSet, return (B, num_items) scores for those targets' users."""


def per_target_chunks(scorer: Scorer, evalset: EvalSet, chunk_size: int = 1024, progress: bool = False
                      ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """(positions (B,), {metric: (B,) per target}) for each chunk of ``evalset``'s targets, scored by
    ``scorer`` under the set's exclusions (``ranking_metrics``: ties as expectation)."""
    starts = range(0, len(evalset), chunk_size)
    for lo in progress_bar(starts, desc=f"eval {evalset.name}", disable=not progress, leave=False):
        positions = np.arange(lo, min(lo + chunk_size, len(evalset)))
        with torch.no_grad():
            scores = scorer(positions)
            exclude = evalset.exclusion_pairs(positions, device=scores.device)
            targets = torch.as_tensor(evalset.targets[positions], device=scores.device)
            yield positions, ranking_metrics(scores.float(), targets, exclude)


@torch.no_grad()
def evaluate(scorer: Scorer, evalset: EvalSet, num_items: int, chunk_size: int = 1024,
             progress: bool = False) -> dict[str, float]:
    """Mean metrics of ``scorer`` over ``evalset``, keys like ``recall@10``, ``ndcg@10``, ``mrr``, and
    those of each of its slices: ``cold/recall@10``, ..., ``cold/targets`` (``recfunnel.eval.slices``)."""
    sums: dict[str, float] = {}
    for positions, per_target in per_target_chunks(scorer, evalset, chunk_size, progress):
        chunk = {k: float(v.sum()) for k, v in per_target.items()}
        for name, mask in evalset.slices.items():
            chunk.update(slice_sums(per_target, mask[positions], name))
        for k, v in chunk.items():
            sums[k] = sums.get(k, 0.0) + v
    return metric_means(sums, len(evalset), where=evalset.name)
