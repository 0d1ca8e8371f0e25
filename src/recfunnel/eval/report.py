"""The ``metrics.json`` contract every model writes, and the table printed at the end of a run.

``metrics.json`` is flat: ``{"valid/recall@10": ..., "test/ndcg@10": ..., "test/mrr": ...}``;
other keys (``test/retrieval/...``, timings) may be added beside these by later stages. Every
path also writes each slice that applies to the data (``recfunnel.eval.slices``: the cold-start slice,
the targets with a search query), ``{valid,test}/<slice>/<metric>`` and ``{valid,test}/<slice>/targets``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from recfunnel.serving.pipeline import STAGES
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


def write_funnel_report(out: Path, metrics: dict[str, float], top_n: int) -> str:
    """``out/funnel.md`` (stage table, test and valid) and ``out/funnel.png`` of a funnel run's
    metrics (``recfunnel.eval.funnel`` keys); returns the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for split in ("test", "valid"):
        cols = ["recall@10", "ndcg@10", f"mrr@{top_n}", "recall@100", f"coverage@{top_n}", f"ild@{top_n}"]
        lines += [f"### {split}", "", "| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for stage, label in zip(STAGES, ("retrieval only", "+ ranker", "+ re-ranking")):
            vals = [metrics.get(f"{split}/{stage}/{c}") for c in cols]
            lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
        lines.append("")
    timing = [f"{s}: mean {metrics[f'{s}/ms_per_user_mean']:.1f} ms, p99 {metrics[f'{s}/ms_per_user_p99']:.1f} ms"
              for s in ("test", "valid") if f"{s}/ms_per_user_mean" in metrics]
    if timing:
        lines += ["Time per user (single-user calls): " + "; ".join(timing), ""]
    text = "\n".join(lines)
    (out / "funnel.md").write_text(text)

    shown = ["recall@10", "ndcg@10", f"mrr@{top_n}", f"coverage@{top_n}", f"ild@{top_n}"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.25
    x = np.arange(len(shown))
    for i, (stage, label) in enumerate(zip(STAGES, ("retrieval only", "+ ranker", "+ re-ranking"))):
        ax.bar(x + (i - 1) * width, [metrics.get(f"test/{stage}/{m}", 0.0) for m in shown], width, label=label)
    ax.set_xticks(x, shown)
    ax.set_title("funnel stages, test split (same users)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "funnel.png", dpi=120)
    plt.close(fig)
    return text


if __name__ == "__main__":  # python -m recfunnel.eval.report RUN_DIR [RUN_DIR ...]
    import sys

    print_runs(sys.argv[1:])
