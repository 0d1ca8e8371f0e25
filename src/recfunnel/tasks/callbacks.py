"""Lightning plug-ins every training run gets (``recfunnel.runs.build_trainer``):

* ``EpochSummary``: one line per epoch for every training stage, progress bar or not::

      [retriever] epoch 3/20  train/loss 4.1234  valid/ndcg@10 0.1102  8.4 s

* ``SaveOnSigterm``: on SIGTERM (Lightning stops at the next step boundary), the state is saved
  to ``last.ckpt`` so the same command resumes there;
* ``AppendingCSVLogger``: a CSV log that a resumed run continues instead of truncating.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities.exceptions import SIGTERMException


class EpochSummary(pl.Callback):
    """Prints the stage, epoch, mean training loss, the ``monitor`` metric and the epoch's seconds.

    The loss is the mean of the training steps' losses, summed on the device and read once per
    epoch (no per-step synchronisation).
    """

    def __init__(self, stage: str, monitor: str = "valid/ndcg@10"):
        self.stage, self.monitor = stage, monitor
        self._loss: torch.Tensor | None = None
        self._steps = 0
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._loss, self._steps, self._start = None, 0, time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss
            self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"[{self.stage}] epoch {trainer.current_epoch + 1}{of}"]
        if self._loss is not None:
            parts.append(f"train/loss {self._loss.item() / self._steps:.4f}")
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            parts.append(f"{self.monitor} {float(value):.4f}")
        parts.append(f"{time.perf_counter() - self._start:.1f} s")
        print("  ".join(parts), flush=True)


class SaveOnSigterm(pl.Callback):
    """Saves the training state to ``path`` when Lightning stops on SIGTERM (at a step boundary),
    so that resuming continues exactly where the run stopped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state, to resume from


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep an existing ``metrics.csv`` (Lightning deletes it): a resumed run appends to it, under
        the columns it already has (else the first new column would rewrite the file with this
        start's columns only, and its older rows would no longer fit)."""
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class AppendingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives a resume: new rows are appended
    (``recfunnel.runs.fit`` first drops the rows a resumed run will log again)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
