"""Multi-task heads for the ranker and the one score the funnel ranks by.

``MultiTaskHeads`` replaces the DLRM's single over arch when the ranker predicts T > 1 objectives
(``recfunnel.data.objectives``); ``model.net.multitask.kind`` chooses how the tasks share it::

    shared_bottom:  x → bottom MLP (shared) → one tower per task                      → (N, T)
    mmoe:           x → E experts; per task a softmax gate over the experts (Ma et al. 2018,
                    "Modeling Task Relationships in Multi-task Learning with Multi-gate
                    Mixture-of-Experts") → that task's tower                            → (N, T)
    ple:            one CGC level of PLE (Tang et al. 2020): E experts per task and S shared
                    experts; task t's gate mixes its own and the shared experts → its tower

``ObjectiveMix`` turns the (…, T) head outputs into one score (``funnel.objective_weights``,
``funnel.objective_combine``)::

    sum:      Σ_t w_t · v_t          v_t = sigmoid(logit) for a bce head, the value for an mse head
    product:  Σ_t w_t · log v_t      (the log of Π v_t^w_t; weights must be >= 0)

so p(click) × p(purchase | click) × price ... is a product of heads. With one objective the score is
its head's raw output (the logit), as the single-objective ranker always ranked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from recfunnel.data.objectives import Objective
from recfunnel.models.mlp import MLP
from recfunnel.utils.errors import RecfunnelError

KINDS = ("shared_bottom", "mmoe", "ple")
COMBINES = ("sum", "product")


def check_heads(objectives: Sequence[Objective], multitask: Mapping | None) -> None:
    """One head per predicted objective: ``multitask`` (the heads' config) is set iff there are two or more."""
    names = [o.name for o in objectives]
    if multitask is None and len(names) != 1:
        raise RecfunnelError(f"the ranker predicts {len(names)} objectives {names} but has one head: set "
                             "model.net.multitask (e.g. model=mmoe), or keep one objective")
    if multitask is not None and len(names) < 2:
        raise RecfunnelError(f"model.net.multitask is set but the ranker predicts one objective {names}: "
                             "name two or more in `objectives`, or set model.net.multitask=null")


class Expert(nn.Sequential):
    """(N, in_dim) → (N, hidden[-1]): an MLP whose output is activated too (it feeds a tower)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], dropout: float):
        super().__init__(MLP(in_dim, hidden[:-1], hidden[-1], dropout), nn.GELU())


class MultiTaskHeads(nn.Module):
    """(N, in_dim) → (N, T), one output per task.

    Args:
        in_dim: width of the interaction's output.
        num_tasks: T.
        kind: ``shared_bottom`` | ``mmoe`` | ``ple`` (see the module docstring).
        experts: E, experts (mmoe) or experts per task (ple).
        shared_experts: S, the shared experts of ple.
        expert_hidden: hidden widths of each expert (the last is its output width); for
            shared_bottom, of the bottom.
        tower_hidden: hidden widths of each task's tower.
        dropout: of every MLP.
    """

    def __init__(self, in_dim: int, num_tasks: int, kind: str = "mmoe", experts: int = 4, shared_experts: int = 2,
                 expert_hidden: Sequence[int] = (256,), tower_hidden: Sequence[int] = (64,), dropout: float = 0.1):
        super().__init__()
        if kind not in KINDS:
            raise RecfunnelError(f"model.net.multitask.kind={kind!r} is not valid; choose one of: {', '.join(KINDS)}")
        for key, value, low in (("experts", experts, 1), ("shared_experts", shared_experts, 0)):
            if not isinstance(value, int) or value < low:
                raise RecfunnelError(f"model.net.multitask.{key}={value!r} must be an integer >= {low}")
        expert_hidden = list(expert_hidden)
        if not expert_hidden:
            raise RecfunnelError("model.net.multitask.expert_hidden must name at least one width")
        self.kind, self.num_tasks = kind, num_tasks
        width = expert_hidden[-1]
        if kind == "shared_bottom":
            self.bottom = Expert(in_dim, expert_hidden, dropout)
        else:
            count = experts if kind == "mmoe" else experts * num_tasks + shared_experts
            self.experts = nn.ModuleList(Expert(in_dim, expert_hidden, dropout) for _ in range(count))
            gated = experts if kind == "mmoe" else experts + shared_experts
            self.gates = nn.ModuleList(nn.Linear(in_dim, gated) for _ in range(num_tasks))
            self.per_task, self.shared = experts, shared_experts
        self.towers = nn.ModuleList(MLP(width, list(tower_hidden), 1, dropout) for _ in range(num_tasks))

    def gate_inputs(self, t: int) -> list[int]:
        """Indices of the experts task ``t``'s gate mixes."""
        if self.kind == "mmoe":
            return list(range(len(self.experts)))
        own = list(range(t * self.per_task, (t + 1) * self.per_task))
        return own + list(range(self.per_task * self.num_tasks, len(self.experts)))

    def gate_weights(self, x: Tensor) -> Tensor:
        """(N, T, E_t) each task's softmax weights over its experts (mmoe, ple)."""
        return torch.stack([gate(x).softmax(-1) for gate in self.gates], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "shared_bottom":
            shared = self.bottom(x)
            return torch.cat([tower(shared) for tower in self.towers], dim=1)
        outs = torch.stack([expert(x) for expert in self.experts], dim=1)  # (N, E, width)
        weights = self.gate_weights(x)
        heads = []
        for t, tower in enumerate(self.towers):
            mixed = torch.einsum("ne,new->nw", weights[:, t], outs[:, self.gate_inputs(t)])
            heads.append(tower(mixed))
        return torch.cat(heads, dim=1)


class ObjectiveMix:
    """(…, T) head outputs → (…) one score (see the module docstring).

    Args:
        objectives: the T objectives, in head order.
        weights: {objective name: weight}; an objective left out weighs 0; None: every objective 1.
        combine: ``sum`` | ``product``.
    """

    def __init__(self, objectives: Sequence[Objective], weights: Mapping[str, Any] | None = None,
                 combine: str = "sum"):
        names = [o.name for o in objectives]
        if combine not in COMBINES:
            raise RecfunnelError(f"funnel.objective_combine={combine!r} is not valid; choose one of: "
                                 f"{', '.join(COMBINES)}")
        weights = {n: 1.0 for n in names} if weights is None else dict(weights)
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise RecfunnelError(f"funnel.objective_weights names {unknown}, which the ranker does not predict: its "
                                 f"objectives are {names} (config `objectives`); weigh only those")
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise RecfunnelError(f"funnel.objective_weights.{name}={w!r} must be a number")
            if combine == "product" and w < 0:
                raise RecfunnelError(f"funnel.objective_weights.{name}={w}: objective_combine=product multiplies "
                                     "probabilities raised to the weights, so weights must be >= 0; use "
                                     "objective_combine=sum for a penalty")
        self.objectives, self.combine = list(objectives), combine
        self.weights = [float(weights.get(n, 0.0)) for n in names]
        if not any(self.weights):
            raise RecfunnelError(f"funnel.objective_weights are all 0 ({weights}); give at least one objective a weight")
        if len(names) == 1 and self.weights[0] < 0:
            raise RecfunnelError(f"funnel.objective_weights.{names[0]}={self.weights[0]}: the only objective needs a "
                                 "positive weight")

    @classmethod
    def from_config(cls, objectives: Sequence[Objective], funnel_cfg: Mapping[str, Any]) -> ObjectiveMix:
        """The mix of a funnel config's ``objective_weights`` and ``objective_combine``."""
        weights = funnel_cfg.get("objective_weights")
        return cls(objectives, None if weights is None else dict(weights), funnel_cfg.get("objective_combine", "sum"))

    def values(self, outputs: Tensor) -> Tensor:
        """(…, T) what each head predicts: probabilities for bce heads, values for mse heads."""
        binary = torch.tensor([o.binary for o in self.objectives], device=outputs.device)
        return torch.where(binary, torch.sigmoid(outputs), outputs)

    def __call__(self, outputs: Tensor) -> Tensor:
        if outputs.shape[-1] != len(self.objectives):
            raise RecfunnelError(f"the ranker gives {outputs.shape[-1]} head outputs but {len(self.objectives)} "
                                 "objectives are weighed")
        if len(self.objectives) == 1:
            return outputs[..., 0]
        w = outputs.new_tensor(self.weights)
        if self.combine == "sum":
            return (self.values(outputs) * w).sum(-1)
        binary = torch.tensor([o.binary for o in self.objectives], device=outputs.device)
        logs = torch.where(binary, nn.functional.logsigmoid(outputs), outputs.clamp(min=1e-6).log())
        return (logs * w).sum(-1)

    def describe(self) -> str:
        terms = [f"{w:g}·{o.name}" for o, w in zip(self.objectives, self.weights) if w]
        return (" + " if self.combine == "sum" else " · ").join(terms) + f" ({self.combine})"
