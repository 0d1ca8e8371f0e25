"""The cold-start slice of every evaluation: targets whose item the train split barely saw.

An evaluation target (a valid or test event) is *cold* when its item has fewer than
``COLD_MAX_TRAIN_EVENTS`` events in the train split (``SplitData.split == TRAIN``, counted by
``SplitData.item_counts()``). Beside each metric over all targets, every evaluation path reports
its mean over the cold targets only, ``<split>/cold/<metric>`` (e.g. ``test/cold/ndcg@10``), and
their number, ``<split>/cold/targets``. The per-target values the metrics are averaged from are
masked: nothing is scored again.

A split without a cold target reports ``cold/targets`` = 0 and no cold mean at all (a NaN would
break sorting and comparing runs); the evaluation logs one line saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.utils.errors import RecfunnelError

log = logging.getLogger(__name__)

COLD_MAX_TRAIN_EVENTS = 5
"""A target is cold when its item has fewer than this many train events (issue 15)."""
PREFIX = "cold/"
COUNT = f"{PREFIX}targets"


def cold_items(train_counts: np.ndarray) -> np.ndarray:
    """(I,) bool: the items with fewer than ``COLD_MAX_TRAIN_EVENTS`` train events, from (I,) counts."""
    return np.asarray(train_counts) < COLD_MAX_TRAIN_EVENTS


def cold_targets(data: SplitData, rows: np.ndarray) -> np.ndarray:
    """(U,) bool: whether the item of each event row (U,) (targets of valid or test) is cold."""
    return cold_items(data.item_counts(TRAIN))[data.item_idx[np.asarray(rows)]]


def cold_sums(per_target: Mapping[str, torch.Tensor], cold: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Sums over the cold targets of one chunk: {"cold/<metric>": sum, "cold/targets": count}.

    Args:
        per_target: {metric: (B,)} per-target values (``ranking_metrics``, ``list_metrics``).
        cold: (B,) bool, which of those targets are cold.
    Sums of several chunks (or processes) add up key by key; ``cold_means`` turns them into means.
    """
    mask = torch.as_tensor(cold)
    if mask.dtype != torch.bool or mask.ndim != 1:
        raise RecfunnelError(f"the cold mask must be a 1-d bool array (one per target), got {mask.dtype} of shape "
                             f"{tuple(mask.shape)}")
    out: dict[str, float] = {}
    for name, values in per_target.items():
        if len(values) != len(mask):
            raise RecfunnelError(f"the cold mask has {len(mask)} targets but the {name} values have {len(values)}; "
                                 "give one flag per target")
        out[f"{PREFIX}{name}"] = float(values[mask.to(values.device)].sum())
    out[COUNT] = float(mask.sum())
    return out


def cold_means(sums: Mapping[str, float], where: str | None = None) -> dict[str, float]:
    """{"cold/<metric>": mean over the cold targets, "cold/targets": their number} from added-up
    ``cold_sums``. With no cold target, the count (0) only; ``where`` (e.g. "test") names the
    evaluation in the one log line that says so (None: no line)."""
    count = float(sums.get(COUNT, 0.0))
    if count == 0:
        if where is not None:
            log.info("%s: no cold targets (items with fewer than %d train events); the cold/ metrics are left out",
                     where, COLD_MAX_TRAIN_EVENTS)
        return {COUNT: 0.0}
    return {**{k: v / count for k, v in sums.items() if k != COUNT}, COUNT: count}


def cold_metrics(per_target: Mapping[str, torch.Tensor], cold: torch.Tensor | np.ndarray,
                 where: str | None = None) -> dict[str, float]:
    """``cold_means`` of one set of per-target values ({metric: (B,)}) and its (B,) bool cold mask."""
    return cold_means(cold_sums(per_target, cold), where)


def is_cold_key(name: str) -> bool:
    """Whether a metric name (without its split) belongs to the cold slice."""
    return name.startswith(PREFIX)


__all__ = ["COLD_MAX_TRAIN_EVENTS", "COUNT", "cold_items", "cold_means", "cold_metrics", "cold_sums",
           "cold_targets", "is_cold_key"]
