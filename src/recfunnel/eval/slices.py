"""Named slices of every evaluation: metrics over a subset of the targets, beside those over all.

A slice is a function of ``SLICES``: given the data and the event rows (U,) of a split's targets
(valid or test events), it returns a (U,) bool mask of the targets in the slice, or None when the
slice does not apply to this data (then the evaluation has no key of it at all). Adding a slice is
adding one such function. The slices:

- ``cold``: the target's item has fewer than ``COLD_MAX_TRAIN_EVENTS`` events in the train split
  (``SplitData.split == TRAIN``, counted by ``SplitData.item_counts()``);
- ``query``: the target's own event has a search query (the interactions column ``query``, missing as
  for a text feature: ``recfunnel.utils.text.is_missing``); no slice without that column.

Beside each metric over all targets, every evaluation path (``recfunnel.eval.protocol.evaluate``,
the tasks' evaluation epochs, ``recfunnel.eval.funnel``) reports its mean over each slice's targets,
``<split>/<slice>/<metric>`` (e.g. ``test/cold/ndcg@10``), and their number,
``<split>/<slice>/targets``. The per-target values the metrics are averaged from are masked: nothing
is scored again. A split with no target in a slice reports ``<slice>/targets`` = 0 and no mean at
all (a NaN would break sorting and comparing runs); the evaluation logs one line saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.text import is_missing

log = logging.getLogger(__name__)

COLD_MAX_TRAIN_EVENTS = 5
"""A target is cold when its item has fewer than this many train events (issue 15)."""
COUNT = "targets"
"""``<slice>/targets``: the number of targets in a slice."""


def cold_targets(data: SplitData, rows: np.ndarray) -> np.ndarray:
    """(U,) bool: whether the item of each event row (U,) has fewer than ``COLD_MAX_TRAIN_EVENTS`` train events."""
    return (data.item_counts(TRAIN) < COLD_MAX_TRAIN_EVENTS)[data.item_idx[np.asarray(rows)]]


def query_targets(data: SplitData, rows: np.ndarray) -> np.ndarray | None:
    """(U,) bool: whether each event row (U,) has a search query (interactions column ``query``); None
    when the data has no such column."""
    inter = data.tables.interactions
    if "query" not in inter.columns:
        return None
    return ~is_missing(inter["query"].iloc[np.asarray(rows)].to_numpy(dtype=object, na_value=None))


SLICES: dict[str, Callable[[SplitData, np.ndarray], np.ndarray | None]] = {
    "cold": cold_targets,
    "query": query_targets,
}
"""Every slice by name: (data, target event rows (U,)) → (U,) bool mask, or None where it does not apply."""


def target_slices(data: SplitData, rows: np.ndarray) -> dict[str, np.ndarray]:
    """{name: (U,) bool mask} of the ``SLICES`` that apply to ``data``, for the target event rows (U,)."""
    masks = {name: fn(data, rows) for name, fn in SLICES.items()}
    return {name: np.asarray(mask, dtype=bool) for name, mask in masks.items() if mask is not None}


def slice_sums(per_target: Mapping[str, torch.Tensor], mask: torch.Tensor | np.ndarray, name: str) -> dict[str, float]:
    """Sums over the targets of slice ``name`` in one chunk: {"<name>/<metric>": sum, "<name>/targets": count}.

    Args:
        per_target: {metric: (B,)} per-target values (``ranking_metrics``, ``list_metrics``).
        mask: (B,) bool, which of those targets are in the slice.
    Every key is there even when no target is (sums 0): sums of several chunks (or processes) add up
    key by key; ``slice_means`` turns them into means.
    """
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or mask.ndim != 1:
        raise RecfunnelError(f"the {name} mask must be a 1-d bool array (one per target), got {mask.dtype} of shape "
                             f"{tuple(mask.shape)}")
    out: dict[str, float] = {}
    for metric, values in per_target.items():
        if len(values) != len(mask):
            raise RecfunnelError(f"the {name} mask has {len(mask)} targets but the {metric} values have {len(values)}; "
                                 "give one flag per target")
        out[f"{name}/{metric}"] = float(values[mask.to(values.device)].sum())
    out[f"{name}/{COUNT}"] = float(mask.sum())
    return out


def slice_means(sums: Mapping[str, float], name: str, where: str | None = None) -> dict[str, float]:
    """{"<name>/<metric>": mean over the slice's targets, "<name>/targets": their number} from added-up
    ``slice_sums`` (``sums`` may hold other keys too: only ``<name>/`` ones are read). With no target in
    the slice, the count (0) only; ``where`` (e.g. "test") names the evaluation in the one log line
    that says so (None: no line)."""
    prefix, count_key = f"{name}/", f"{name}/{COUNT}"
    count = float(sums.get(count_key, 0.0))
    if count == 0:
        if where is not None:
            log.info("%s: no %s targets; the %s metrics are left out", where, name, prefix)
        return {count_key: 0.0}
    return {**{k: v / count for k, v in sums.items() if k.startswith(prefix) and k != count_key}, count_key: count}


def slice_metrics(per_target: Mapping[str, torch.Tensor], slices: Mapping[str, torch.Tensor | np.ndarray],
                  where: str | None = None) -> dict[str, float]:
    """``slice_means`` of one set of per-target values ({metric: (B,)}) for each slice {name: (B,) bool}."""
    out: dict[str, float] = {}
    for name, mask in slices.items():
        out.update(slice_means(slice_sums(per_target, mask, name), name, where))
    return out


def metric_means(sums: Mapping[str, float], count: float, where: str | None = None) -> dict[str, float]:
    """Means from added-up sums: each metric's over all ``count`` targets, each slice's (its keys from
    ``slice_sums``, told by their ``<name>/targets`` count) over the slice's targets (``slice_means``)."""
    names = [k.removesuffix(f"/{COUNT}") for k in sums if k.endswith(f"/{COUNT}")]
    out = {k: v / max(count, 1) for k, v in sums.items() if k.split("/", 1)[0] not in names}
    for name in names:
        out.update(slice_means(sums, name, where))
    return out


__all__ = ["COLD_MAX_TRAIN_EVENTS", "COUNT", "SLICES", "cold_targets", "metric_means", "query_targets",
           "slice_means", "slice_metrics", "slice_sums", "target_slices"]
