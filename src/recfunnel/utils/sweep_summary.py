"""Hydra callback: after a sweep, one table of every trial's overrides and metrics.

Registered in ``configs/hydra/default.yaml`` (``hydra.callbacks.sweep_summary``); it acts only at
the end of a multirun (``-m``), so single runs are untouched. It scans the sweep directory for run
directories holding ``metrics.json`` and writes ``<sweep dir>/summary.csv`` and ``summary.json``:
one row per trial with its subdirectory (``trial``), the job's overrides (read from
``<trial>/overrides.yaml``, which each run writes; one column per overridden key and the raw list in
``overrides``) and every metric. ``python -m recfunnel.compare <sweep dir>`` goes further (the
config keys that differ, plots).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from recfunnel.utils.io import atomic_path, write_json
from recfunnel.utils.run_info import OVERRIDES_FILE

log = logging.getLogger(__name__)


def natural_key(path: str | Path) -> tuple[tuple[int, Any], ...]:
    """Sort key putting numeric path parts (Hydra's job numbers) in numeric order: 2 before 10."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in Path(path).parts)


def read_overrides(run_dir: Path) -> list[str]:
    """The job's overrides as given on the command line (``overrides.yaml``; Hydra's
    ``.hydra/overrides.yaml`` in a run from before the runs recorded their own), or []."""
    path = next((p for p in (run_dir / OVERRIDES_FILE, run_dir / ".hydra" / OVERRIDES_FILE) if p.is_file()), None)
    return list(yaml.safe_load(path.read_text()) or []) if path is not None else []


def override_key_values(overrides: list[str]) -> dict[str, str]:
    """``["+a.b=1", "c=x"]`` → ``{"a.b": "1", "c": "x"}`` (deletions ``~key`` are skipped)."""
    pairs = (o.split("=", 1) for o in overrides if "=" in o and not o.startswith("~"))
    return {k.lstrip("+"): v for k, v in pairs}


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Write ``summary.csv`` and ``summary.json`` into ``sweep_dir``; returns the rows (may be [])."""
    sweep_dir = Path(sweep_dir)
    runs = sorted((p.parent for p in sweep_dir.rglob("metrics.json")),
                  key=natural_key)
    rows = []
    for run in runs:
        overrides = read_overrides(run)
        rows.append({"trial": run.relative_to(sweep_dir).as_posix(), "overrides": overrides,
                     "params": override_key_values(overrides),
                     "metrics": json.loads((run / "metrics.json").read_text())})
    if not rows:
        return rows
    write_json(sweep_dir / "summary.json", rows)
    params = list(dict.fromkeys(k for r in rows for k in r["params"]))
    metrics = sorted({k for r in rows for k in r["metrics"]})
    with atomic_path(sweep_dir / "summary.csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "overrides", *params, *metrics])
        for r in rows:
            writer.writerow([r["trial"], " ".join(r["overrides"]), *(r["params"].get(k, "") for k in params),
                             *(r["metrics"].get(k, "") for k in metrics)])
    return rows


class SweepSummary(Callback):
    """Writes ``summary.csv``/``summary.json`` into the sweep directory when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            log.warning("sweep summary: %s does not exist; nothing to summarise", sweep_dir)
            return
        rows = summarize_sweep(sweep_dir)
        if rows:
            log.info("sweep summary (%d trials): %s", len(rows), sweep_dir / "summary.csv")
        else:
            log.warning("sweep summary: no trial under %s wrote metrics.json", sweep_dir)
