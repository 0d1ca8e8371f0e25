"""The optimizer of every task: AdamW, with the lazy update for sparse-gradient embedding tables.

Embedding tables produce *sparse* gradients (``FeatureEmbedding`` sets ``sparse=True`` on its bags):
a batch touches a few thousand rows of a table that may have millions, and a dense gradient would
cost a full-table write in the backward pass and a full-table AdamW update in ``step`` — at 100k
users and 100k items that was most of a training step. ``SparseAdamW`` updates, for a parameter
whose gradient is sparse, only the rows in the batch ("lazy Adam", as ``torch.optim.SparseAdam``
and TorchRec's fused optimizers do); every dense-gradient parameter gets ``torch.optim.AdamW``'s
own update. Both keep the same per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq``), so the
state dict is an ordinary AdamW state dict, checkpoints resume exactly, and a parameter whose
gradient is sparse on one step and dense on another (a table also read by a sequence encoder) is
updated consistently.

The lazy update differs from dense AdamW in one way: a row's moments decay only on the steps that
touch it, so a row absent from a batch does not keep moving on its old momentum. With
``weight_decay`` > 0 the decoupled decay also applies to touched rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from recfunnel.utils.errors import RecfunnelError


class SparseAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` that accepts sparse gradients (updated lazily, row by row).

    Args: those of ``torch.optim.AdamW``; ``amsgrad`` and ``maximize`` are refused for parameters
    whose gradient is sparse. AdamW's own step only ever sees the dense gradients: the sparse ones
    are applied first and hidden from it. That step is the fused one unless ``fused=False`` is
    given: one kernel per parameter instead of about ten (a two-tower model's MLPs on 2 CPU cores:
    0.13 vs 0.5 ms per step).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **kwargs: Any):
        kwargs.setdefault("fused", True)
        super().__init__(params, lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    self._lazy_step(p, group)
                    held.append((p, p.grad))
                    p.grad = None  # AdamW's own step skips it
        try:
            super().step()
        finally:
            for p, grad in held:
                p.grad = grad
        return loss

    def _lazy_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        if group["amsgrad"] or group["maximize"]:
            raise RecfunnelError("the optimizer's amsgrad / maximize options do not support sparse embedding "
                                 "gradients; leave them off")
        rows, values = coalesce_rows(p.grad)
        if rows.numel() == 0:
            return
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, eps, decay = float(group["lr"]), group["eps"], group["weight_decay"]
        exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        denom = (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(eps)
        update = exp_avg.div_(denom).mul_(-lr / (1 - beta1 ** step))
        if decay:
            update.add_(p.index_select(0, rows), alpha=-lr * decay)
        p.index_add_(0, rows, update)


def coalesce_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse row gradient (N, D) → (rows (U,) sorted unique, values (U, D) with duplicates summed).

    What ``grad.coalesce()`` gives, computed as ``torch.unique`` + ``index_add_``: on CPU ~2.5x
    faster than torch's coalesce (80k looked-up rows of a 100k × 32 table: 5.7 vs 14 ms).
    """
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    index, values = grad._indices()[0], grad._values()
    rows, inverse = torch.unique(index, return_inverse=True)
    return rows, values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, inverse, values)


@torch.no_grad()
def clip_gradients(params: Iterable[torch.Tensor], clip_val: float, algorithm: str = "norm") -> None:
    """``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` for gradients that may be sparse
    (torch's own refuse sparse tensors). ``algorithm``: "norm" scales every gradient so that their
    joint L2 norm is at most ``clip_val``; "value" clamps each entry to [-clip_val, clip_val]."""
    grads = []
    for p in params:
        if p.grad is not None:
            if p.grad.is_sparse:  # duplicates summed, so the values are the gradient's entries
                rows, values = coalesce_rows(p.grad)
                p.grad = torch.sparse_coo_tensor(rows[None], values, p.grad.shape, is_coalesced=True)
            grads.append(p.grad)
    values = [g.values() if g.is_sparse else g for g in grads]
    if algorithm == "value":
        for v in values:
            v.clamp_(-clip_val, clip_val)
        return
    if algorithm != "norm":
        raise RecfunnelError(f"trainer.gradient_clip_algorithm={algorithm!r} is not valid; use norm or value")
    total = torch.sqrt(sum(v.double().square().sum() for v in values)) if values else torch.tensor(0.0)
    scale = clip_val / (float(total) + 1e-6)
    if scale < 1.0:
        for v in values:
            v.mul_(scale)
