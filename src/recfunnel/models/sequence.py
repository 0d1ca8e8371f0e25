"""History encoders: (B, L, D) embeddings of the user's last L items (+ mask) → (B, out_dim).

Sequences come from ``FeatureEmbedding.sequence``: oldest → newest, padded at the start, so the
newest item sits at position L−1. The pooled mean of the same bag is always part of the user
tower's features; an encoder adds an order-aware summary on top of it.

- ``recency``: a weighted mean whose weights decay with distance from the newest item at a
  learned rate.
- ``attention``: a small pre-norm transformer over the sequence with learned positions (and
  optional per-item side embeddings such as the item's age), read out at the newest position as
  in SASRec.
- ``recency+attention``: both, each with its own projection, summed (a linear map of the two
  summaries side by side).

Every encoder also reads window batches (``all_positions=True``): position i summarises tokens
0..i only, as if position i were the newest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recfunnel.utils.errors import RecfunnelError

ENCODERS = ("none", "recency", "attention", "recency+attention")


class RecencyPooling(nn.Module):
    """Weights w_i ∝ exp(−rate · (L−1−i)) over real entries; rate = softplus(θ) is learned.

    (B, L, D) → (B, out_dim), or (B, L, out_dim) with ``all_positions=True`` (position i pools
    tokens 0..i, weighted by their distance from i).
    """

    def __init__(self, dim: int, out_dim: int, init_rate: float = 0.1):
        super().__init__()
        self.raw_rate = nn.Parameter(torch.tensor(float(torch.log(torch.expm1(torch.tensor(init_rate))))))
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, seq: Tensor, mask: Tensor, side: Tensor | None = None, all_positions: bool = False) -> Tensor:
        L = seq.shape[1]
        x = seq if side is None else seq + side
        rate = F.softplus(self.raw_rate)
        if not all_positions:
            distance = torch.arange(L - 1, -1, -1, device=seq.device, dtype=seq.dtype)  # newest: 0
            logits = (-rate * distance).expand_as(mask).masked_fill(~mask, float("-inf"))
            weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # rows with no history → zeros
            return self.proj(torch.einsum("bl,bld->bd", weights, x))
        pos = torch.arange(L, device=seq.device)
        distance = (pos[:, None] - pos[None, :]).to(seq.dtype)  # (query i, token j): i − j
        allowed = (distance >= 0)[None] & mask[:, None, :]  # (B, L, L)
        logits = (-rate * distance.clamp(min=0)).expand(len(seq), L, L).masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(logits, dim=2).nan_to_num(0.0)
        return self.proj(torch.einsum("bij,bjd->bid", weights, x))


class AttentionEncoder(nn.Module):
    """Causal transformer over the history (SASRec-style), learned absolute positions.

    (B, L, D) tokens, oldest → newest, padded at the start → (B, out_dim) read at the newest
    position, or (B, L, out_dim) at every position with ``all_positions=True``: position i summarises
    tokens 0..i only, which lets one pass over a window of a user's timeline serve every event in
    it (``TwoTower`` with ``window`` batches), as SASRec trains.
    """

    def __init__(self, dim: int, out_dim: int, max_len: int, layers: int = 2, heads: int = 2,
                 dropout: float = 0.2, width: int | None = None):
        super().__init__()
        width = width or dim
        self.heads = heads
        self.inp = nn.Linear(dim, width) if width != dim else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(max_len, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, seq: Tensor, mask: Tensor, side: Tensor | None = None, all_positions: bool = False) -> Tensor:
        B, L, _ = seq.shape
        x = self.inp(seq if side is None else seq + side) + self.pos[-L:]
        # attend to real tokens at or before one's own position; every position may attend to
        # itself, so padded positions stay finite (their outputs are never read)
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)
        allowed = (torch.ones(L, L, dtype=torch.bool, device=seq.device).tril() & mask[:, None, :]) | eye
        attn_mask = ~allowed.repeat_interleave(self.heads, dim=0)  # (B·heads, L, L), True = blocked
        h = self.out(self.norm(self.encoder(self.drop(x), mask=attn_mask)))
        return h if all_positions else h[:, -1]


class SummedEncoders(nn.Module):
    """Several encoders over the same tokens, their (B, out_dim) outputs summed."""

    def __init__(self, encoders: list[nn.Module]):
        super().__init__()
        self.encoders = nn.ModuleList(encoders)

    def forward(self, seq: Tensor, mask: Tensor, side: Tensor | None = None, all_positions: bool = False) -> Tensor:
        return sum(e(seq, mask, side, all_positions=all_positions) for e in self.encoders)


def build_encoder(kind: str, dim: int, out_dim: int, max_len: int, **kw) -> nn.Module | None:
    """``kind`` one of ``ENCODERS``; ``kw`` (layers, heads, dropout, width) configure the attention part."""
    if kind == "none":
        return None
    if kind == "recency":
        return RecencyPooling(dim, out_dim)
    if kind == "attention":
        return AttentionEncoder(dim, out_dim, max_len, **kw)
    if kind == "recency+attention":
        return SummedEncoders([RecencyPooling(dim, out_dim), AttentionEncoder(dim, out_dim, max_len, **kw)])
    raise RecfunnelError(f"history_encoder={kind!r} is not valid; choose one of: {', '.join(ENCODERS)}")
