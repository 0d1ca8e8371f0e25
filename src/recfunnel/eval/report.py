"""The ``metrics.json`` contract every model writes, and the table printed at the end of a run.

``metrics.json`` is flat: ``{"valid/recall@10": ..., "test/ndcg@10": ..., "test/mrr": ...}``;
other keys (``test/retrieval/...``, timings) may be added beside these by later stages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from rich.console import Console
from rich.table import Table

from recfunnel.utils.io import write_json

METRIC_ORDER = ("recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "mrr")


def flatten(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{"valid": {"recall@10": x}} → {"valid/recall@10": x}."""
    return {f"{split}/{k}": float(v) for split, metrics in results.items() for k, v in metrics.items()}


def write_metrics(run_dir: str | Path, metrics: Mapping[str, float]) -> Path:
    """Write (or update) ``run_dir/metrics.json`` atomically; returns its path."""
    path = Path(run_dir) / "metrics.json"
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged.update({k: float(v) for k, v in metrics.items()})
    write_json(path, merged)
    return path


def print_metrics(title: str, metrics: Mapping[str, float], splits=("valid", "test")) -> None:
    """A table: one row per split, one column per metric of ``METRIC_ORDER`` present."""
    names = [m for m in METRIC_ORDER if any(f"{s}/{m}" in metrics for s in splits)]
    table = Table(title=title)
    table.add_column("split")
    for m in names:
        table.add_column(m, justify="right")
    for s in splits:
        if any(f"{s}/{m}" in metrics for m in names):
            table.add_row(s, *[f"{metrics[f'{s}/{m}']:.4f}" if f"{s}/{m}" in metrics else "-" for m in names])
    Console(width=max(Console().width, 120)).print(table)


def print_runs(run_dirs: list[str], split: str = "test") -> None:
    """One row per run directory: its ``split`` metrics from ``metrics.json``."""
    table = Table(title=f"{split} metrics (../shared/EVALUATION.md protocol)")
    table.add_column("run")
    for m in METRIC_ORDER:
        table.add_column(m, justify="right")
    for run_dir in run_dirs:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        table.add_row(str(run_dir), *[f"{metrics[f'{split}/{m}']:.4f}" if f"{split}/{m}" in metrics else "-"
                                      for m in METRIC_ORDER])
    Console(width=max(Console().width, 160)).print(table)


if __name__ == "__main__":  # python -m recfunnel.eval.report RUN_DIR [RUN_DIR ...]
    import sys

    print_runs(sys.argv[1:])
