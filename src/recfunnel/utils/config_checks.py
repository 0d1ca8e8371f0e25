"""Value checks of a run's config, before anything is built or written: one line per mistake.

Hydra checks that a key exists; this checks that its value makes sense (``model.lr=abc``,
``data.batch_size=0``, ``model.net.dim=-4``, ``trainer.max_epochs=0``) and names the key and its
valid range, instead of a traceback from deep inside torch. Keys absent from a config are skipped,
so one table serves every entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recfunnel.utils.errors import RecfunnelError


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (what a valid value is, the test)
POSITIVE = ("a number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE = ("a number ≥ 0", lambda v: _number(v) and v >= 0)
PROBABILITY = ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
COUNT = ("an integer ≥ 1", lambda v: _integer(v) and v >= 1)
COUNT_OR_ZERO = ("an integer ≥ 0", lambda v: _integer(v) and v >= 0)
EPOCHS = ("an integer ≥ 1 (or -1: until early stopping); 0 would score an untrained model",
          lambda v: _integer(v) and (v >= 1 or v == -1))
OPTIONAL_COUNT = ("null or an integer ≥ 1", lambda v: v is None or (_integer(v) and v >= 1))

RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "seed": COUNT_OR_ZERO,
    "data.batch_size": COUNT,
    "data.num_workers": COUNT_OR_ZERO,
    "data.min_events": COUNT_OR_ZERO,
    "data.train_windows": COUNT_OR_ZERO,
    "model.lr": POSITIVE,
    "model.weight_decay": NON_NEGATIVE,
    "model.warmup_steps": COUNT_OR_ZERO,
    "model.net.dim": COUNT,
    "model.net.embedding_dim": COUNT,
    "model.net.dropout": PROBABILITY,
    "model.net.top_width": COUNT,
    "model.net.top_depth": COUNT_OR_ZERO,
    "model.loss.temperature": POSITIVE,
    "model.loss.num_uniform_negatives": COUNT_OR_ZERO,
    "model.loss.label_smoothing": PROBABILITY,
    "trainer.max_epochs": EPOCHS,
    "callbacks.ema.decay": ("a number in (0, 1)", lambda v: _number(v) and 0 < v < 1),
    "trainer.gradient_clip_val": ("null or a number > 0", lambda v: v is None or (_number(v) and v > 0)),
    "trainer.gradient_clip_algorithm": ("null, norm or value", lambda v: v in (None, "norm", "value")),
    "pairs.candidates": COUNT,
    "pairs.hard_pool": COUNT,
    "pairs.hard_negatives": COUNT_OR_ZERO,
    "pairs.uniform_negatives": COUNT_OR_ZERO,
    "pairs.max_events_per_user": OPTIONAL_COUNT,
    "pairs.profile_len": COUNT,
    "pairs.batch_size": COUNT,
    "pairs.eval_batch_size": COUNT,
    "retriever.members": COUNT,
    "funnel.top_n": COUNT,
    "funnel.batch_size": COUNT,
    "funnel.timing_users": COUNT_OR_ZERO,
    "eval_chunk_size": COUNT,
}


def hard_pool_too_small(hard_pool: int, candidates: int) -> str:
    """The error for ``pairs.hard_pool`` < ``pairs.candidates`` (``check_config``, and
    ``RankingDataModule`` built directly)."""
    return (f"pairs.hard_pool={hard_pool} is below pairs.candidates={candidates}: the ranker would re-order candidates "
            f"ranked {hard_pool + 1}-{candidates} without ever training on a negative ranked there (it learns to put "
            "them first); set pairs.hard_pool >= pairs.candidates (its default is pairs.candidates)")


SIDE_WITH_WINDOWS = ("model.net.history_side features are relative to each event's time and cannot be used with "
                     "window batches (data.train_windows > 0); set one of them off")


def check_config(cfg: DictConfig) -> None:
    """Raise one ``RecfunnelError`` naming every key of ``RULES`` whose value is out of range."""
    problems = []
    for key, (valid, ok) in RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False)
        if isinstance(value, str) and value == "<absent>":
            continue
        if not ok(value):
            problems.append(f"{key}={value!r} is not valid: use {valid}")
    if OmegaConf.select(cfg, "callbacks.ema") is not None and OmegaConf.select(cfg, "trainer.strategy") == "sharded":
        problems.append("callbacks=ema cannot average a sharded model (trainer.strategy=sharded): "
                        "use callbacks=default, or a strategy that keeps the model whole")
    pool, k = OmegaConf.select(cfg, "pairs.hard_pool", default=None), OmegaConf.select(cfg, "pairs.candidates", default=None)
    if _integer(pool) and _integer(k) and pool >= 1 and pool < k:
        problems.append(hard_pool_too_small(pool, k))
    windows = OmegaConf.select(cfg, "data.train_windows", default=0)
    if (OmegaConf.select(cfg, "model.net.history_side", default=None)
            and OmegaConf.select(cfg, "model.net.history_encoder", default="none") != "none"
            and _integer(windows) and windows > 0):
        problems.append(SIDE_WITH_WINDOWS)
    given = OmegaConf.select(cfg, "retriever.run_dir", default=None)
    members = OmegaConf.select(cfg, "retriever.members", default=1)
    runs = 1 if isinstance(given, str) else len(given or ())
    if given and _integer(members) and members not in (1, runs):
        problems.append(f"retriever.members={members} but retriever.run_dir names {runs} run(s): list as many "
                        "runs as members, or leave retriever.members at 1")
    if problems:
        raise RecfunnelError("; ".join(problems))
