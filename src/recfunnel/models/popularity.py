"""Most-popular baseline: every user gets items ranked by their train-split interaction count."""

from __future__ import annotations

import torch

from recfunnel.data.dataset import SplitData
from recfunnel.eval.protocol import EvalSet, Scorer


class Popularity:
    """No parameters to learn; ``fit`` counts train interactions per item."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    def fit(self, data: SplitData) -> Popularity:
        self.counts = torch.as_tensor(data.item_counts(), dtype=torch.float32)
        return self

    def scorer(self, evalset: EvalSet) -> Scorer:
        """Same (num_items,) score row for every user of ``evalset``."""
        assert self.counts is not None, "call fit() first"
        return lambda idx: self.counts.expand(len(idx), -1)
