"""How much revenue a funnel run on synthetic data captures, against what the planted truth allows.

For each target of a split (one per user, ../shared/EVALUATION.md), revenue@N is the target's
revenue (price x purchase) when it is in the user's top N, averaged over users (``test/revenue@10``
of ``metrics.json``). This script scores three lists of N items per user:

- ``funnel``: the run's final lists (recomputed; equal to its ``metrics.json``);
- ``oracle_rerank``: the run's own first-stage candidates, re-ordered by the planted expected revenue
  (``recfunnel.data.synthetic.expected_revenue``): the best any ranker over those candidates could
  expect to do;
- ``oracle_catalogue``: the top N of the whole catalogue by planted expected revenue (the user's
  earlier items excluded): the ceiling of the whole funnel.

    .venv/bin/python scripts/oracle_revenue.py RUN_DIR [RUN_DIR ...] [--split test] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from recfunnel.data.synthetic import expected_revenue  # noqa: E402
from recfunnel.eval.protocol import EvalSet  # noqa: E402
from recfunnel.serving.recommender import Recommender  # noqa: E402
from recfunnel.utils.cli import friendly_errors  # noqa: E402
from recfunnel.utils.errors import RecfunnelError  # noqa: E402


def revenue_at(lists: np.ndarray, targets: np.ndarray, revenue: np.ndarray) -> float:
    """Mean over users of the target's revenue when ``lists`` (U, N) hold the target."""
    return float((revenue * (lists == targets[:, None]).any(1)).mean())


def oracle_revenue(run_dir: Path, split: str = "test", batch: int = 512) -> dict[str, float]:
    rec = Recommender.from_run(run_dir, threads=None)
    funnel, data = rec.funnel, rec.funnel.retriever.dm.data
    if "revenue" not in data.tables.interactions:
        raise RecfunnelError(f"{run_dir} was not trained on synthetic data with purchases (its interactions have "
                             "no revenue column)")
    evalset = EvalSet.build(data, split)
    n, rows = funnel.top_n, evalset.rows
    revenue = data.tables.interactions["revenue"].to_numpy(np.float64)[rows]
    lists = {"funnel": [], "oracle_rerank": [], "oracle_catalogue": []}
    catalogue = np.arange(data.num_items)
    for lo in range(0, len(rows), batch):
        part = slice(lo, lo + batch)
        slates = funnel(funnel.retriever.pipeline, rec.ranker_pipeline, rows[part])
        lists["funnel"].append(slates["final"].items[:, :n])
        cands = slates["retrieval"].items
        value = np.where(cands >= 0, expected_revenue(data.tables, evalset.users[part], cands), -np.inf)
        lists["oracle_rerank"].append(np.take_along_axis(cands, np.argsort(-value, 1, kind="stable")[:, :n], 1))
        users = evalset.users[part]
        value = expected_revenue(data.tables, users, np.broadcast_to(catalogue, (len(users), data.num_items)))
        seen_rows, seen_items = evalset.exclusion_pairs(np.arange(lo, min(lo + batch, len(rows))))
        value[seen_rows.numpy(), seen_items.numpy()] = -np.inf
        lists["oracle_catalogue"].append(np.argsort(-value, 1, kind="stable")[:, :n])
    return {f"{split}/{name}/revenue@{n}": revenue_at(np.concatenate(v), evalset.targets, revenue)
            for name, v in lists.items()} | {f"{split}/mean_target_revenue": float(revenue.mean())}


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished recfunnel.funnel runs on synthetic data")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--json", type=Path, help="also write {run_dir: figures} here")
    args = parser.parse_args(argv)
    out = {}
    for run_dir in args.run_dirs:
        out[str(run_dir)] = figures = oracle_revenue(run_dir, args.split)
        print(run_dir, "  ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in figures.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
