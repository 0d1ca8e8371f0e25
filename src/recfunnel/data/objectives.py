"""What the ranker predicts: objectives and their per-event labels.

An *objective* names a label every interaction has, as of the event itself (the event's own outcome,
never a later one): config ``objectives`` of ``configs/funnel.yaml``, one entry per objective::

    objectives:
      engagement:   {column: null}                 # the interaction happened: 1 for every event
      satisfaction: {column: rating, at_least: 4}  # 1 where the event's rating is >= 4, else 0
      revenue:      {column: revenue, loss: mse}   # the column's value (a regression target)
      liked:        {column: rating, at_least: 4, predict: false}   # reported, not predicted

A ranker pair (a user's event and a candidate item) has, for each objective, the event's label when
the candidate is the event's item and 0 otherwise (a candidate the user did not pick was neither
engaged with, nor liked, nor bought). So a ``bce`` head learns the joint probability, e.g.
p(interact and rate >= 4), and an ``mse`` head the expected value, e.g. expected revenue.

ML-100K: ``engagement`` and ``satisfaction`` (``experiment=ml100k_multitask``). Synthetic data
(``recfunnel.data.synthetic``): ``click``, ``purchase`` and ``revenue`` (``experiment=synthetic_multitask``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.utils.errors import RecfunnelError

LOSSES = ("bce", "mse")
#: the single objective of a ranker configured without ``objectives``: today's implicit label
ENGAGEMENT = {"engagement": {"column": None}}


@dataclasses.dataclass(frozen=True)
class Objective:
    """One label and how a head learns it.

    name: the objective's name (metrics ``{split}/objective/<name>/...``).
    column: the interactions column holding the label; None: the event itself (label 1).
    at_least: binarise ``column``: 1 where the value is >= at_least, else 0; None: the value as is.
    loss: ``bce`` (the label is a probability, in [0, 1]) or ``mse`` (a value, e.g. revenue).
    loss_weight: this objective's weight in the ranker's training loss.
    predict: False: a label reported only (its metrics of the final lists), with no head in the ranker
        (e.g. satisfaction beside a single-objective ranker, to compare it with a multi-task one).
    """

    name: str
    column: str | None = None
    at_least: float | None = None
    loss: str = "bce"
    loss_weight: float = 1.0
    predict: bool = True

    @property
    def binary(self) -> bool:
        return self.loss == "bce"


def parse_objectives(cfg: Mapping[str, Any] | None) -> list[Objective]:
    """``Objective``s of an ``objectives`` config (None or empty: engagement alone), in config order."""
    cfg = dict(cfg or ENGAGEMENT)
    out = []
    for name, spec in cfg.items():
        spec = dict(spec or {})
        unknown = sorted(set(spec) - {f.name for f in dataclasses.fields(Objective)} - {"name"})
        if unknown:
            raise RecfunnelError(f"objectives.{name}: unknown key(s) {unknown}; an objective has column, at_least, "
                                 "loss, loss_weight, predict")
        spec.pop("name", None)
        objective = Objective(name=str(name), **spec)
        if objective.loss not in LOSSES:
            raise RecfunnelError(f"objectives.{name}.loss={objective.loss!r} is not valid; choose one of: "
                                 f"{', '.join(LOSSES)}")
        if not isinstance(objective.loss_weight, (int, float)) or objective.loss_weight < 0:
            raise RecfunnelError(f"objectives.{name}.loss_weight={objective.loss_weight!r} must be a number >= 0")
        if objective.column is None and objective.at_least is not None:
            raise RecfunnelError(f"objectives.{name}: at_least needs a column (column: null is the event itself)")
        out.append(objective)
    if not any(o.predict for o in out):
        raise RecfunnelError(f"objectives {[o.name for o in out]} all have predict: false; the ranker needs one to "
                             "predict")
    return out


def predicted(objectives: list[Objective]) -> list[Objective]:
    """The objectives the ranker has a head for (``predict``), in order."""
    return [o for o in objectives if o.predict]


def event_labels(interactions: pd.DataFrame, objectives: list[Objective], where: str = "objectives"
                 ) -> np.ndarray:
    """(N, T) float32 labels of the N interactions for the T objectives (see the module docstring).

    Raises ``RecfunnelError`` naming the objective when its column is missing (listing the columns the
    interactions have), not numeric, has missing values, or holds values outside [0, 1] for a ``bce``
    objective without ``at_least``."""
    out = np.ones((len(interactions), len(objectives)), np.float32)
    for j, o in enumerate(objectives):
        if o.column is None:
            continue
        if o.column not in interactions:
            raise RecfunnelError(f"{where}.{o.name}.column={o.column!r}: the interactions have no such column "
                                 f"(they have {list(interactions.columns)}); name one of them, or drop the objective")
        values = interactions[o.column]
        if not pd.api.types.is_numeric_dtype(values):
            raise RecfunnelError(f"{where}.{o.name}: interactions.{o.column} is {values.dtype}, not numeric")
        values = values.to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            raise RecfunnelError(f"{where}.{o.name}: interactions.{o.column} has {int(np.isnan(values).sum())} missing "
                                 "value(s); fill them in the source")
        if o.at_least is not None:
            values = (values >= o.at_least).astype(np.float64)
        elif o.binary and ((values < 0) | (values > 1)).any():
            raise RecfunnelError(f"{where}.{o.name}: a bce objective needs labels in [0, 1] but interactions."
                                 f"{o.column} ranges over [{values.min():g}, {values.max():g}]; set at_least to "
                                 "binarise it, or loss: mse for a value")
        out[:, j] = values
    return out
