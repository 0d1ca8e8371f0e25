"""Builders from a run's config: the DataModule of ``cfg.data`` and the task of ``cfg.model``.

Shared by training (``recfunnel.runs``) and by loading a finished run (``recfunnel.serving``), so a
loaded model is built exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from recfunnel.data.datamodule import RecDataModule


def build_datamodule(cfg: DictConfig) -> RecDataModule:
    """The ``data`` group's DataModule with the run's features, cache folder, seed, and what the model
    config asks of the batches (uniform negatives, history length of window batches); set up."""
    history = OmegaConf.select(cfg, "model.net.history_feature", default=None)
    factory = hydra.utils.instantiate(cfg.data, _partial_=True, _recursive_=False)
    dm = factory(features=cfg.features, data_dir=cfg.paths.data_dir, seed=cfg.seed,
                 num_negatives=OmegaConf.select(cfg, "model.loss.num_uniform_negatives", default=0),
                 window_tokens=OmegaConf.select(cfg, f"features.features.{history}.max_len", default=None)
                 or cfg.features.get("history_len", 50))  # features=auto: its history_len
    dm.setup()
    return dm


def build_task(model_cfg: DictConfig, dm: Any) -> pl.LightningModule:
    """The task (LightningModule) of a ``model`` config for the set-up DataModule ``dm``.

    Data-derived arguments (``dm.model_inputs()``: schema, vocabulary sizes, dense statistics, ...)
    are passed to the built factory, not to instantiate, which would turn the schema dataclass and
    numpy arrays into config nodes.
    """
    factory = hydra.utils.instantiate(model_cfg, _partial_=True)
    return factory(**dm.model_inputs())
