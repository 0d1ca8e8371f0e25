"""Is run set A better than run set B on the same users? A paired test over per-target metrics.

    python -m recfunnel.significance --a RUN_A0 RUN_A1 RUN_A2 --b RUN_B0 RUN_B1 RUN_B2
    python -m recfunnel.significance --a FUNNEL_RUN --b RETRIEVER_RUN --split test --metric recall@10
    python -m recfunnel.significance --a RUN_S0 RUN_S1 RUN_S2 --target 0.139 --split test

Each RUN is a finished ``recfunnel.funnel`` run (its final lists; ``--stage ranked`` or
``retrieval`` for an earlier stage) or ``recfunnel.train`` two-tower run, scored again on
``--split`` (default valid) per target (``recfunnel.eval.per_target``; each run's mean is checked
against its own ``metrics.json`` when that holds the key). The runs of a set (e.g. seeds 0-2) are
averaged per user; A and B are then compared over the users (``recfunnel.eval.significance``):
means with standard errors, A − B with a bootstrap interval, a permutation p-value, and how many
users each set scores higher on. ``--target X`` (without ``--b``) compares set A with a constant:
the interval of A's mean and whether X lies in it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.errors import RecfunnelError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m recfunnel.significance", description=__doc__.split("\n")[0])
    p.add_argument("--a", nargs="+", required=True, metavar="RUN", help="run directories of set A (e.g. seeds 0-2)")
    p.add_argument("--b", nargs="+", metavar="RUN", help="run directories of set B, on the same data")
    p.add_argument("--target", type=float, help="compare set A with this constant instead of a set B")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    p.add_argument("--metric", default="ndcg@10", help="a per-target metric: ndcg@10, recall@10, mrr, ... (default ndcg@10)")
    p.add_argument("--stage", default="final", choices=("retrieval", "ranked", "final"),
                   help="a funnel run's lists to score (default final; a two-tower run has one ranking)")
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--data-dir", help="read the runs' data from this folder (default: each run's own)")
    args = p.parse_args(argv)
    if (args.b is None) == (args.target is None):
        p.error("give exactly one of --b RUN ... and --target X")
    return args


def set_values(runs: Sequence[str], args: argparse.Namespace) -> np.ndarray:
    """(U,) the per-target metric of the runs, averaged over them per user (their users must agree)."""
    from recfunnel.eval.per_target import per_target

    users0, total = None, None
    for run in runs:
        users, values = per_target(run, args.split, args.metric, args.stage, data_dir=args.data_dir)
        own = _own_metric(Path(run), f"{args.split}/{args.metric}" if args.stage == "final" else
                          f"{args.split}/{args.stage}/{args.metric}")
        if own is not None and abs(own - values.mean()) > 1e-4:
            raise RecfunnelError(f"{run}: {args.split} {args.metric} scored again is {values.mean():.6f} but its "
                                 f"metrics.json says {own:.6f}; its models or data changed since it ran")
        print(f"  {run}: {args.split} {args.metric} {values.mean():.4f} ({len(values)} targets)")
        if users0 is None:
            users0, total = users, values.copy()
        elif not np.array_equal(users, users0):
            raise RecfunnelError(f"{run} is scored on other users than {runs[0]} ({len(users)} vs {len(users0)} "
                                 "targets): a paired comparison needs runs on the same data and split")
        else:
            total += values
    return total / len(runs)


def _own_metric(run: Path, key: str) -> float | None:
    """The run's own figure for ``key`` from its ``metrics.json`` (None when absent)."""
    try:
        value = json.loads((run / "metrics.json").read_text()).get(key)
    except (OSError, ValueError):
        return None
    return None if value is None else float(value)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    from recfunnel.eval.significance import paired_comparison

    args = parse_args(argv)
    print("set A:")
    a = set_values(args.a, args)
    if args.b is not None:
        print("set B:")
        b = set_values(args.b, args)
        if a.shape != b.shape:
            raise RecfunnelError(f"set A is scored on {len(a)} targets and set B on {len(b)}: compare runs on the same data")
    else:
        b = np.full_like(a, args.target)
    result = paired_comparison(a, b, resamples=args.resamples, level=args.level)
    name = f"{args.split} {args.metric}" + ("" if args.stage == "final" else f" ({args.stage})")
    if args.b is not None:
        print(result.describe(name))
    else:
        inside = result.low <= 0 <= result.high
        print(f"{name}: A {result.mean_a:.4f} ± {result.se_a:.4f} (s.e. over {result.users} users), "
              f"{args.level:.0%} interval [{args.target + result.low:.4f}, {args.target + result.high:.4f}] "
              f"(bootstrap); {args.target:g} is {'inside' if inside else 'outside'} it; these users resolve "
              f"a true distance of ±{result.detectable:.4f} from it 80% of the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
