"""Fetch / generate a dataset, cache its canonical tables and print their statistics.

    python -m recfunnel.data.prepare data=ml100k
    python -m recfunnel.data.prepare data=ml100k data.source.local_dir=/path/to/ml-100k
    python -m recfunnel.data.prepare data=synthetic data.source.num_interactions=1000000

Prints where the tables came from (the source read, or the cache it reused and why it is still
valid: see ``recfunnel.data.sources``), their statistics and their fingerprint (the
``data_fingerprint`` that runs trained on them record in ``run_info.json``).
"""

from __future__ import annotations

import hydra
import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from recfunnel.data.dataset import SplitData
from recfunnel.data.fingerprint import tables_fingerprint
from recfunnel.data.sources import open_tables
from recfunnel.data.split import split_sizes
from recfunnel.utils.cli import friendly_errors


def dataset_stats(data: SplitData) -> dict[str, float]:
    """Users, items, interactions, density, popularity skew and split sizes."""
    n = len(data.ts)
    counts = np.sort(np.bincount(data.item_idx, minlength=data.num_items))[::-1]
    top = max(1, int(round(0.1 * data.num_items)))
    lorenz = np.cumsum(np.sort(counts)) / max(counts.sum(), 1)
    gini = 1 - 2 * lorenz.mean() + 1 / max(len(counts), 1)
    per_user = np.bincount(data.user_idx, minlength=data.num_users)
    stats = {
        "users": data.num_users, "items": data.num_items, "interactions": n,
        "density": n / max(data.num_users * data.num_items, 1),
        "events per user (median)": float(np.median(per_user)),
        "share of events on top 10% items": counts[:top].sum() / max(n, 1),
        "item popularity gini": gini,
    }
    stats.update({f"split {k}": v for k, v in split_sizes(data.split).items()})
    if data.tables.edges is not None:
        stats["social edges"] = len(data.tables.edges)
    return stats


def print_stats(name: str, stats: dict[str, float]) -> None:
    table = Table(title=f"dataset {name}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for k, v in stats.items():
        table.add_row(k, f"{v:,}" if isinstance(v, (int, np.integer)) else f"{v:.4g}")
    Console(width=max(Console().width, 120)).print(table)


@hydra.main(version_base="1.3", config_path="../../../configs", config_name="prepare")
@friendly_errors
def main(cfg: DictConfig) -> None:
    tables, origin = open_tables(cfg.data, cfg.paths.data_dir)
    print(origin)
    fingerprint = tables_fingerprint(tables)
    data = SplitData.from_tables(tables, min_events=int(cfg.data.get("min_events", 3)))
    print_stats(cfg.data.name, dataset_stats(data))
    print(f"{cfg.data.name}: tables fingerprint {fingerprint}")


if __name__ == "__main__":
    main()
