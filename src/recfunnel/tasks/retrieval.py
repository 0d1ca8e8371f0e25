"""RetrievalTask: trains a two-tower model with the sampled-softmax loss family and evaluates it on
the full catalogue by ``../shared/EVALUATION.md``.

Training batch (``RecDataModule``): query towers, the positive item's tower input, and optionally
``neg_item`` — ``num_uniform_negatives`` items drawn uniformly from the catalogue (mixed negative
sampling). logQ correction (switched by ``loss.logq_correction``) takes log q from exact train counts
(``logq_source: exact``) or from a streaming estimate (``logq_source: streaming``, Yi et al. 2019).

Evaluation: at the start of a validation/test epoch every item is embedded once (as of the end of
the train split); each batch of users is scored against all of them in one matrix product, the
user's earlier items are excluded, and the metric core accumulates per-user expectations. Logged as
``valid/ndcg@10``, ``test/recall@100``, ..., and over each slice's targets only (the ``EvalSet``'s
``slices``; ``recfunnel.eval.slices``) as ``valid/cold/ndcg@10``, ``test/query/targets``, ...
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recfunnel.eval.metrics import ranking_metrics
from recfunnel.features.schema import FeatureSchema
from recfunnel.models.two_tower import TwoTower
from recfunnel.tasks.base import RecTask
from recfunnel.tasks.losses import SampledSoftmaxLoss, StreamingFrequencyEstimator, exact_log_q
from recfunnel.tasks.optim import SparseAdamW
from recfunnel.utils.errors import RecfunnelError

log = logging.getLogger(__name__)

SCORES_AT_ONCE = 1 << 24  # evaluation scores held at once (users × items): 64 MiB of float32
LOGQ_SOURCES = ("exact", "streaming")


class RetrievalTask(RecTask):
    """Args:
        net: a ``TwoTower`` factory (Hydra ``_partial_``) called with schema, num_embeddings, dense_stats.
        loss: the ``SampledSoftmaxLoss``.
        schema, num_embeddings, dense_stats, item_counts: from the DataModule (train split only);
            text_vectors: the pretrained vectors of its text features.
        logq_source: where log q comes from when ``loss.logq_correction``: "exact" | "streaming".
        full_softmax: score each positive against the whole catalogue (exact softmax, as SASRec's
            next-item cross-entropy; the loss's temperature and label smoothing apply, its logQ,
            extra negatives and hit masking do not). For catalogues that fit one matrix product;
            item inputs are taken as of the end of the train split, so use static item features.
        lr, weight_decay: AdamW settings; ``warmup_steps`` of linear warm-up.
    """

    stage = "retriever"
    nan_hint = "lower model.lr, raise model.loss.temperature, or check the dense features"

    def __init__(self, net: Callable[..., TwoTower], loss: SampledSoftmaxLoss, schema: FeatureSchema,
                 num_embeddings: Mapping[str, int], item_counts: np.ndarray,
                 dense_stats: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                 logq_source: str = "exact", lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 0,
                 full_softmax: bool = False, text_vectors: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        if logq_source not in LOGQ_SOURCES:
            raise RecfunnelError(f"model.logq_source={logq_source!r} is not valid; choose one of: {', '.join(LOGQ_SOURCES)}")
        logq = logq_source if loss.logq_correction else "none"
        self.net = net(schema=schema, num_embeddings=num_embeddings, dense_stats=dense_stats, text_vectors=text_vectors)
        self.loss = loss
        self.logq, self.lr, self.weight_decay, self.warmup_steps = logq, lr, weight_decay, warmup_steps
        self.full_softmax = full_softmax
        self._train_items = None
        self.num_items = len(item_counts)
        self.register_buffer("item_counts", torch.as_tensor(np.asarray(item_counts), dtype=torch.float32))
        self.estimator = StreamingFrequencyEstimator(self.num_items) if logq == "streaming" else None
        self._catalogue: Tensor | None = None
        self._eval_buffers: list[Tensor] = []
        self._logq_tables: dict[int, Tensor] = {}

    # -- training ------------------------------------------------------------------------------
    def _log_q(self, ids: Tensor, batch_size: int) -> Tensor | None:
        if self.logq == "none":
            return None
        if self.logq == "exact":  # the table depends on the batch size only: built once per size
            if batch_size not in self._logq_tables:
                self._logq_tables[batch_size] = exact_log_q(self.item_counts, batch_size, self.loss.num_uniform_negatives)
            return self._logq_tables[batch_size].to(ids.device)[ids]
        return self.estimator.log_q(ids, self.loss.num_uniform_negatives)

    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        """The sampled-softmax loss of one training batch (towers, negatives, log q); with
        ``full_softmax`` the exact softmax over the whole catalogue instead."""
        ids = batch["item_idx"]
        if self.full_softmax:
            user = self.net.user_vectors(batch)
            if self._train_items is None:  # item inputs as of the end of train: use static item features
                self._train_items = self.trainer.datamodule.catalogue().to(self.device)
            logits = (user @ self.net.item_vectors(self._train_items).T).float() / self.loss._temperature()
            return F.cross_entropy(logits, ids, label_smoothing=self.loss.label_smoothing)
        user, item = self.net.pair_vectors(batch)
        if self.estimator is not None:
            self.estimator.update(ids, self.global_step)
        extra = {}
        if "neg_item" in batch:
            neg_ids = batch["neg_idx"]
            extra = dict(extra_item=self.net.item_vectors(batch["neg_item"]), extra_item_ids=neg_ids,
                         extra_log_q=self._log_q(neg_ids, len(ids)))
        return self.loss(user, item, ids, log_q=self._log_q(ids, len(ids)), **extra)

    def train_batch_size(self, batch: dict[str, Any]) -> int:
        return len(batch["item_idx"])

    def on_train_epoch_end(self) -> None:
        self.log("train/temperature", self.loss.temperature, sync_dist=True)

    def configure_optimizers(self):
        # weight decay on the towers only: it would drag a learned temperature towards 1
        groups = [{"params": list(self.net.parameters()), "weight_decay": self.weight_decay},
                  {"params": list(self.loss.parameters()), "weight_decay": 0.0}]
        opt = SparseAdamW([g for g in groups if g["params"]], lr=self.lr)
        if not self.warmup_steps:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- exact resume ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # dropout draws from torch's global generator: restoring it makes a resumed run continue
        # exactly as the uninterrupted one (batches and negatives are seeded by the loader)
        super().on_save_checkpoint(checkpoint)
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "torch_rng_state" in checkpoint and self._trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(checkpoint["torch_rng_state"])

    # -- full-corpus evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def catalogue_vectors(self) -> Tensor:
        """(I, d) vectors of every item, as of the end of the train split."""
        items = self.trainer.datamodule.catalogue().to(self.device)
        return self.net.item_vectors(items)

    def eval_start(self, split: str) -> None:
        self._catalogue = self.catalogue_vectors().float()
        # score and comparison buffers, made once per evaluation epoch: a fresh 64 MiB tensor per
        # chunk costs its page faults every time (on CPU ~40% of the matrix product's time)
        rows = max(1, SCORES_AT_ONCE // len(self._catalogue))
        self._eval_buffers = [torch.empty(rows, len(self._catalogue), device=self.device) for _ in range(2)]

    def eval_step(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """Per-user metrics of a batch, scoring ``SCORES_AT_ONCE // I`` users against the catalogue at
        a time: memory stays bounded whatever the catalogue and batch sizes (no users × items matrix)."""
        evalset = self.trainer.datamodule.evalsets[split]
        pos = batch["eval_pos"].cpu().numpy()
        users, items = self.net.user_vectors(batch).float(), self._catalogue
        scores_buf, work = self._eval_buffers
        step = len(scores_buf)
        parts = []
        for lo in range(0, len(pos), step):
            n = len(pos[lo:lo + step])
            scores = torch.mm(users[lo:lo + step], items.T, out=scores_buf[:n])
            exclude = evalset.exclusion_pairs(pos[lo:lo + step], device=scores.device)
            targets = torch.as_tensor(evalset.targets[pos[lo:lo + step]], device=self.device)
            parts.append(ranking_metrics(scores, targets, exclude, work=work[:n]))
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def eval_slices(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """{slice: (B,) bool}: the batch's targets in each slice of its ``EvalSet``."""
        pos = batch["eval_pos"].cpu().numpy()
        return {name: torch.from_numpy(mask[pos]) for name, mask in self.trainer.datamodule.evalsets[split].slices.items()}

    def eval_end(self, split: str) -> None:
        self._catalogue, self._eval_buffers = None, []
