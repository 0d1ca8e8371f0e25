"""Small shared blocks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """Linear → LayerNorm → GELU → Dropout per hidden layer, then a final Linear to ``out_dim``.

    (B, in_dim) → (B, out_dim). With ``hidden=()`` it is a single linear map.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim
