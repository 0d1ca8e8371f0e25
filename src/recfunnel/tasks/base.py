"""What both tasks share: the NaN guard, metric accumulation over an evaluation epoch, validation
and test hooks, and the checkpoint check on load.

A subclass implements ``compute_loss(batch)`` (training) and ``eval_step(batch) -> (metrics, n)``
(per-user metric values (n,) of one evaluation batch); ``eval_start``/``eval_end`` are optional
hooks around an evaluation epoch, and ``eval_slices`` says which targets of a batch are in each
slice (``recfunnel.eval.slices``). Logged keys: ``train/loss``, ``{valid,test}/<metric>`` (the mean
over users) and, for each slice ``eval_slices`` gives, ``{valid,test}/<slice>/<metric>`` (the mean
over the slice's targets; left out when there is none) and ``{valid,test}/<slice>/targets``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from recfunnel.eval.slices import metric_means, slice_sums
from recfunnel.tasks.checkpoints import check_compatible
from recfunnel.tasks.optim import clip_gradients
from recfunnel.utils.errors import RecfunnelError


class NonFiniteLossError(RecfunnelError):
    """The loss became NaN/inf; the message names the step and the learning rate."""


class RecTask(pl.LightningModule):
    """Base LightningModule of the retrieval and ranking tasks.

    Attributes:
        stage: the funnel stage a task trains ("retriever", "ranker"): names its W&B run and log lines.
        nan_hint: what to try when the loss becomes NaN, appended to the error.
    """

    stage = "model"
    nan_hint = "lower model.lr"

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, float] = {}
        self._count = 0
        self._valid_step: int | None = None  # the global step of the latest validation (not a sanity check)
        self.checkpoint_valid_metrics: dict[str, float] | None = None  # see on_load_checkpoint

    # -- training ------------------------------------------------------------------------------
    def compute_loss(self, batch: dict[str, Any]) -> Tensor:
        """The loss of one training batch (a scalar)."""
        raise NotImplementedError

    def train_batch_size(self, batch: dict[str, Any]) -> int:
        """How many examples the loss of ``batch`` averages over (weights the epoch mean)."""
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.compute_loss(batch)
        self.guard_finite(loss)
        if self._logged_this_step():
            self.log("train/loss", loss, prog_bar=True, batch_size=self.train_batch_size(batch))
        return loss

    def _logged_this_step(self) -> bool:
        """Whether Lightning hands this step's logged values to the loggers (every
        ``trainer.log_every_n_steps`` steps). On the other steps ``self.log`` would cost ~1.5 ms of
        bookkeeping (3% of a 10M-event training step on CPU) for a value nobody reads; the progress
        bar shows the newest logged loss."""
        trainer = self._trainer
        return trainer is None or bool(trainer.fast_dev_run) or trainer._logger_connector.should_update_logs

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val`` / ``gradient_clip_algorithm``, also for the sparse gradients of
        large embedding tables (``recfunnel.tasks.optim.clip_gradients``)."""
        if gradient_clip_val:
            clip_gradients(self.parameters(), float(gradient_clip_val), gradient_clip_algorithm or "norm")

    def guard_finite(self, loss: Tensor) -> None:
        """Stop training with one clear error when the loss is NaN or infinite."""
        if torch.isfinite(loss):
            return
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else self.lr
        # what the checkpoint callbacks wrote, in this run or in the run it resumed
        candidates = [p for c in self.trainer.checkpoint_callbacks
                      for p in (c.best_model_path, c.last_model_path,
                                c.dirpath and c.filename and Path(c.dirpath) / f"{c.filename}.ckpt") if p]
        saved = [Path(p) for p in candidates if Path(p).is_file()]
        kept = (f"the newest checkpoint, {max(saved, key=lambda p: p.stat().st_mtime)}, was saved before it"
                if saved else "no checkpoint had been saved yet")
        raise NonFiniteLossError(
            f"{self.stage} loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, "
            f"learning rate {lr:.3g}); {kept}. Try: {self.nan_hint}.")

    # -- evaluation ----------------------------------------------------------------------------
    def eval_step(self, batch: dict[str, Any], split: str) -> Mapping[str, Tensor]:
        """Per-user metric values, each (B,), of one evaluation batch."""
        raise NotImplementedError

    def eval_slices(self, batch: dict[str, Any], split: str) -> dict[str, Tensor]:
        """{slice name: (B,) bool}: which targets of an evaluation batch are in each slice
        (``recfunnel.eval.slices``), aligned with ``eval_step``'s values. Every batch of every rank
        must give the same names (those of the data's slices); {} (the default): no slice."""
        return {}

    def eval_start(self, split: str) -> None:
        """Called before an evaluation epoch (e.g. to embed the catalogue once)."""

    def eval_end(self, split: str) -> None:
        """Called after an evaluation epoch's means are logged (extra metrics, clean-up)."""

    def _accumulate(self, batch: dict[str, Any], split: str) -> None:
        size = 0
        values = self.eval_step(batch, split)
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v.sum())
            size = len(v)
        self._count += size
        # every batch adds every key of every slice (0 when none of its targets is in the slice), so
        # that all ranks reduce the same keys
        for name, mask in self.eval_slices(batch, split).items():
            for k, v in slice_sums(values, mask, name).items():
                self._sums[k] = self._sums.get(k, 0.0) + v

    def _log_means(self, split: str) -> None:
        """Log each metric's mean over every user scored, on all ranks together: sums and counts are
        added across processes first (a mean of per-rank means would weigh ranks, not users), and
        ``{split}/users`` is the number of users scored; a slice's sums are averaged over the slice's
        targets (``recfunnel.eval.slices.metric_means``)."""
        keys = sorted(self._sums)
        totals = torch.tensor([self._sums[k] for k in keys] + [self._count], dtype=torch.float64, device=self.device)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum").cpu()
        means = metric_means(dict(zip(keys, totals[:-1].tolist())), float(totals[-1]),
                             where=None if self.trainer.sanity_checking else split)
        for k, v in means.items():
            # the same value on every rank already; sync_dist averages equal values (and says so to Lightning)
            self.log(f"{split}/{k}", v, prog_bar=k == "ndcg@10", sync_dist=True)
        self.log(f"{split}/users", float(totals[-1]), sync_dist=True)
        if split == "valid" and not self.trainer.sanity_checking:
            self._valid_step = self.trainer.global_step
        self.eval_end(split)
        self._sums, self._count = {}, 0

    def on_validation_epoch_start(self) -> None:
        self._sums, self._count = {}, 0
        self.eval_start("valid")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._accumulate(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._log_means("valid")

    def on_test_epoch_start(self) -> None:
        self._sums, self._count = {}, 0
        self.eval_start("test")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._accumulate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_means("test")

    # -- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the latest validation's metrics (every valid/ key logged, as validate() would return them)
        # and its step: when that is the checkpoint's own step (best.ckpt, an epoch's last.ckpt),
        # they are the metrics of these very weights and scoring them later need not validate again
        if self._valid_step is not None and self._trainer is not None:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("valid/")}
            checkpoint["valid_metrics"] = {"step": self._valid_step, "metrics": metrics}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checks the weights fit; sets ``checkpoint_valid_metrics`` to the valid/ metrics computed with
        exactly the loaded weights (a validation at the checkpoint's own step), else None."""
        check_compatible(self, checkpoint)
        record = checkpoint.get("valid_metrics")
        same_step = record is not None and record.get("step") == checkpoint.get("global_step")
        self.checkpoint_valid_metrics = dict(record["metrics"]) if same_step else None
