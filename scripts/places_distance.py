"""How far the recommended places are from where each user is: distances of the top 10 on the test split.

    python scripts/places_distance.py --retriever ids=RUN [ids=RUN2 ...] --funnel geo=RUN [geo=RUN2 ...] \\
        [--split test] [--top 10] [--out docs/places_distance.png]

``--retriever NAME=RUN``: a finished ``recfunnel.train`` run on places data (its index's top 10);
``--funnel NAME=RUN``: a finished ``recfunnel.funnel`` run, whose stages each count as one line
(``NAME retrieval``, ``NAME ranked``, ``NAME final``). Repeating a name pools its runs (seeds).
Where a user is: the test event's own ``lat`` / ``lon`` (the interactions' columns). Prints, per line,
the median distance and the share of the top 10 within 5 km and within 25 km (the city), and plots
the distributions (CDF, log km) into ``--out``, beside that of the places the users did visit (the
targets of the first run given).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from recfunnel.data.ranking import coordinates
from recfunnel.eval.protocol import EvalSet
from recfunnel.serving.recommender import Recommender
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.geo import haversine_km


def distances(data, rows: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """(n,) km from each row's event location to each of its listed items (empty slots dropped)."""
    here = coordinates(data.tables.interactions, "lat", "lon")
    where = coordinates(data.tables.items, "lat", "lon")
    if here is None or where is None:
        raise RecfunnelError("the run's data has no lat / lon on its interactions and items: use a places run "
                             "(data=synthetic_places)")
    keep = lists >= 0
    user = np.repeat(np.arange(len(rows)), keep.sum(1))
    item = lists[keep]
    here = here[rows]
    return haversine_km(here[user, 0], here[user, 1], where[item, 0], where[item, 1])


def retriever_lists(run: str, split: str, top: int) -> tuple[np.ndarray, np.ndarray]:
    """km of the run's top ``top`` lists, and of its targets."""
    r = Retriever.from_run(run)
    rows = EvalSet.build(r.data, split).rows
    _, lists, _ = r.retrieve(rows, top, f"{split} users")
    return distances(r.data, rows, lists), distances(r.data, rows, r.data.item_idx[rows][:, None])


def funnel_lists(run: str, split: str, top: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """km of each stage's top ``top`` lists of the funnel run, and of its targets."""
    rec = Recommender.from_run(run)
    f = rec.funnel
    data = f.retriever.data
    rows = EvalSet.build(data, split).rows
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for lo in range(0, len(rows), 256):
        batch = rows[lo:lo + 256]
        slates = f(f.retriever.pipeline, rec.ranker_pipeline, batch)
        for stage, slate in slates.items():
            out[stage].append(distances(data, batch, slate.items[:, :top]))
    targets = distances(data, rows, data.item_idx[rows][:, None])
    return {stage: np.concatenate(parts) for stage, parts in out.items()}, targets


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retriever", nargs="*", default=[], metavar="NAME=RUN")
    ap.add_argument("--funnel", nargs="*", default=[], metavar="NAME=RUN")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--out", default="places_distance.png")
    args = ap.parse_args(argv)
    lines: dict[str, list[np.ndarray]] = defaultdict(list)
    visited: list[np.ndarray] = []
    try:
        for spec in args.retriever:
            name, run = spec.split("=", 1)
            km, targets = retriever_lists(run, args.split, args.top)
            lines[name].append(km)
            visited = visited or [targets]
        for spec in args.funnel:
            name, run = spec.split("=", 1)
            stages, targets = funnel_lists(run, args.split, args.top)
            for stage, km in stages.items():
                lines[f"{name} {stage}"].append(km)
            visited = visited or [targets]
    except (RecfunnelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not lines:
        ap.error("give at least one --retriever or --funnel run")
    lines["visited (the targets)"] = visited
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    print(f"| top {args.top} of | runs | median km | within 5 km | within 25 km |")
    print("|---|---|---|---|---|")
    for name, parts in lines.items():
        km = np.concatenate(parts)
        print(f"| {name} | {len(parts)} | {np.median(km):.1f} | {np.mean(km <= 5):.3f} | {np.mean(km <= 25):.3f} |")
        x = np.sort(np.maximum(km, 0.01))
        ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("distance from where the user is (km, log scale)")
    ax.set_ylabel(f"share of the top {args.top} within")
    ax.set_title(f"places: distance of the recommended places ({args.split})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
