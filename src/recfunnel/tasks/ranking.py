"""RankingTask: trains the DLRM ranker on (query, candidate) pairs, pointwise (binary cross-entropy),
listwise (softmax cross-entropy over each event's candidates) or both, and evaluates it as the second
stage of the funnel.

Training batches come from ``RankingDataModule`` (positive, hard and uniform negatives per event).
Validation/test batches hold each user's retrieved list; the ranker re-orders it and logs

* ``{split}/ndcg@10``, ``recall@K``, ``mrr``: of the re-ordered list (a target the retriever missed
  scores 0), what early stopping and sweeps watch; the same over each slice's targets only
  (``{split}/cold/ndcg@10``, ..., ``{split}/query/targets``: ``recfunnel.eval.slices``);
* ``{split}/auc``, ``{split}/logloss``: of the ranker's score over the held-out (user, candidate)
  pairs of those lists, for users whose target was retrieved (the others have no positive pair);
* ``{split}/objective/<name>/auc``: per objective (``recfunnel.data.objectives``), of its head over
  the same pairs, the pair's label being the target's label for that objective (> 0 for an mse head).

With several objectives, each head has its own loss (``bce`` or ``mse``, weighted by the
objective's ``loss_weight``), or the losses are weighted by learned uncertainty
(``uncertainty_weighting``: Kendall et al. 2018, Σ_t exp(−s_t)·L_t + s_t with one learned s_t per task).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from recfunnel.data.objectives import Objective
from recfunnel.eval.metrics import list_metrics
from recfunnel.eval.slices import target_slices
from recfunnel.features.schema import FeatureSchema
from recfunnel.models.dlrm import DLRM
from recfunnel.tasks.base import RecTask
from recfunnel.tasks.optim import SparseAdamW
from recfunnel.utils.dist import rank_world
from recfunnel.utils.errors import RecfunnelError


class RankingTask(RecTask):
    """Args:
        net: a ``DLRM`` factory (Hydra ``_partial_``) called with schema, num_embeddings, num_pair_dense,
            dense_stats.
        schema, num_embeddings, num_pair_dense, dense_stats, text_vectors: from the ranking DataModule.
        lr, weight_decay: AdamW settings.
        loss: ``bce`` (binary cross-entropy over the real pairs), ``softmax`` (cross-entropy of the
            positive against its event's negatives: listwise) or ``bce+softmax`` (their sum); with
            several objectives, ``bce``: each objective's own loss.
        objectives: the objectives the data labels (``RankingDataModule.objectives``).
        uncertainty_weighting: weigh the objectives' losses by learned uncertainty instead of their
            ``loss_weight``.
    """

    LOSSES = ("bce", "softmax", "bce+softmax")

    stage = "ranker"

    def __init__(self, net: Callable[..., DLRM], schema: FeatureSchema, num_embeddings: Mapping[str, int],
                 num_pair_dense: int, dense_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 lr: float = 1e-3, weight_decay: float = 0.0, loss: str = "bce",
                 objectives: list[Objective] | None = None, uncertainty_weighting: bool = False,
                 text_vectors: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        if loss not in self.LOSSES:
            raise RecfunnelError(f"model.loss={loss!r} is not valid; choose one of: {', '.join(self.LOSSES)}")
        self.loss = loss
        self.net = net(schema=schema, num_embeddings=num_embeddings, num_pair_dense=num_pair_dense,
                       dense_stats=dense_stats, objectives=objectives, text_vectors=text_vectors)
        self.objectives = self.net.objectives
        if len(self.objectives) > 1 and loss != "bce":
            raise RecfunnelError(f"model.loss={loss!r} is for one objective; with {len(self.objectives)} objectives "
                                 "each head has its own (objectives.<name>.loss): set model.loss=bce")
        self.log_vars = torch.nn.Parameter(torch.zeros(len(self.objectives))) if uncertainty_weighting else None
        self.lr, self.weight_decay = lr, weight_decay
        self._pairs: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """(B, C) logits; empty candidate slots (``cand_idx`` −1) get −inf."""
        logits = self.net(batch)
        return logits.masked_fill(batch["cand_idx"] < 0, float("-inf"))

    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        """``loss`` over the batch's real (query, candidate) pairs. ``label`` (B, C, T): each event's
        labels in its first column (its positive), 0 elsewhere; ``mask`` (B, C) marks the real pairs."""
        mask, outputs, labels = batch["mask"], self.net.heads(batch), batch["label"]
        if len(self.objectives) == 1:
            logits, label = outputs[..., 0], labels[..., 0]
            loss = logits.new_zeros(())
            if "bce" in self.loss:
                loss = loss + F.binary_cross_entropy_with_logits(logits[mask], label[mask])
            if "softmax" in self.loss:
                listwise = logits.masked_fill(~mask, float("-inf"))
                loss = loss + F.cross_entropy(listwise, label.argmax(1))
            return loss
        loss = outputs.new_zeros(())
        for t, o in enumerate(self.objectives):
            y_hat, y = outputs[..., t][mask], labels[..., t][mask]
            part = F.binary_cross_entropy_with_logits(y_hat, y) if o.binary else F.mse_loss(y_hat, y)
            if self._trainer is not None:
                self.log(f"train/loss_{o.name}", part.detach(), on_step=False, on_epoch=True,
                         batch_size=int(mask.sum()))
            if self.log_vars is None:
                loss = loss + o.loss_weight * part
            else:
                loss = loss + torch.exp(-self.log_vars[t]) * part + self.log_vars[t]
        return loss

    def train_batch_size(self, batch: dict[str, Any]) -> int:
        return int(batch["mask"].sum())

    def configure_optimizers(self):
        return SparseAdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- evaluation ----------------------------------------------------------------------------
    def eval_start(self, split: str) -> None:
        # the slices of the split's targets (recfunnel.eval.slices), by position among them
        dm = self.trainer.datamodule
        self._eval_slices = {name: torch.from_numpy(mask)
                             for name, mask in target_slices(dm.data, dm.eval_rows[split]).items()}

    def eval_slices(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """{slice: (B,) bool}: the batch's targets in each slice, by their ``eval_pos``."""
        pos = batch["eval_pos"].cpu()
        return {name: mask[pos] for name, mask in self._eval_slices.items()}

    def eval_step(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        outputs = self.net.heads(batch)
        logits = self.net.mix(outputs).masked_fill(batch["cand_idx"] < 0, float("-inf"))
        order = logits.argsort(dim=1, descending=True, stable=True)
        ranked = batch["cand_idx"].gather(1, order)
        targets = batch["target"]
        labels = (batch["cand_idx"] == targets[:, None])
        has_positive = labels.any(1)
        real = (batch["cand_idx"] >= 0) & has_positive[:, None]
        # per objective: the pair's label is the target's label for it (> 0), on the target's pair only
        objective_labels = labels[..., None] & (batch["target_labels"][:, None, :] > 0)
        self._pairs.append((logits[real].float().cpu(), labels[real].float().cpu(),
                            outputs[real].float().cpu(), objective_labels[real].float().cpu()))
        return list_metrics(ranked, targets)

    def eval_end(self, split: str) -> None:
        pairs, world = self._pairs, rank_world()[1]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, pairs)  # every rank's pairs: AUC is not a mean of per-rank AUCs
            pairs = [p for part in gathered for p in part]
        if pairs:
            logits, labels, outputs, objective_labels = (torch.cat(x) for x in zip(*pairs))
            if labels.numel() and 0 < labels.sum() < labels.numel():
                self.log(f"{split}/auc", binary_auroc(logits, labels.long()).item(), sync_dist=True)
                if len(self.objectives) == 1:  # the score is a logit
                    self.log(f"{split}/logloss", F.binary_cross_entropy_with_logits(logits, labels).item(),
                             sync_dist=True)
            for t, o in enumerate(self.objectives):
                y = objective_labels[:, t]
                if 0 < y.sum() < y.numel():
                    self.log(f"{split}/objective/{o.name}/auc", binary_auroc(outputs[:, t], y.long()).item(),
                             sync_dist=True)
        self._pairs, self._eval_slices = [], {}
