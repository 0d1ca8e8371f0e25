"""Batch-assembly benchmark (not a test): materialised features (``FeatureStore``) vs the per-batch
``FeaturePipeline``, on the same events and batch size, in the same run.

    .venv/bin/python benchmarks/bench_data.py [--events 300000] [--json OUT]
    .venv/bin/python benchmarks/bench_data.py --datasets synthetic --synthetic-events 10000000 --users 100000 --items 100000

For each dataset (ML-100K with ``configs/features/ml100k.yaml``; synthetic with
``configs/features/synthetic.yaml``) it materialises the store into a temporary folder (timed), then
times what a training batch needs (the query towers and the event's own item tower) over
``--events`` random train events in batches of ``--batch-size``, alternating which path goes first
in each of ``--repeats`` rounds; figures are medians over rounds, the ratio the median of per-round
ratios. Each dataset runs in its own process, so ``peak_rss_mib`` (the process's maximum resident
set) is that dataset's alone; it includes the data, the pipeline, the store's mapped pages and both
paths' batches.

JSON (``--json``): ``{dataset: {"events_per_s", "reference_events_per_s", "ratio", "peak_rss_mib",
"materialise_s", "events", "batch_size", "dataset_events"}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DATASETS = ("ml100k", "synthetic")


def bench_one(name: str, args) -> dict:
    from hydra import compose, initialize_config_dir

    from recfunnel.data.dataset import TRAIN
    from recfunnel.data.sources import load_split
    from recfunnel.features.pipeline import FeaturePipeline
    from recfunnel.features.schema import FeatureSchema
    from recfunnel.features.store import FeatureStore

    overrides = [f"paths.data_dir={args.data_dir}", f"data={name}", f"features={name}"]
    if name == "synthetic":
        overrides += [f"data.source.num_interactions={args.synthetic_events}", f"data.source.num_users={args.users}",
                      f"data.source.num_items={args.items}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    data = load_split(cfg.data, cfg.paths.data_dir)
    pipeline = FeaturePipeline(FeatureSchema.from_config(cfg.features), data)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        start = time.perf_counter()
        store = FeatureStore.open(pipeline, folder, "bench", progress=False)
        materialise_s = time.perf_counter() - start
        train = np.flatnonzero(data.split == TRAIN)
        rng = np.random.default_rng(0)
        batches = [rng.choice(train, size=args.batch_size, replace=False)
                   for _ in range(max(1, args.events // args.batch_size))]
        paths = {"store": lambda r: (store.queries(r), store.event_items(r)),
                 "pipeline": lambda r: (pipeline.queries(r), pipeline.items(pipeline.item_idx[r], pipeline.ts[r]))}
        for fn in paths.values():  # warm-up: page in the mapped arrays, fill caches
            for r in batches[:5]:
                fn(r)
        rounds = []
        for rep in range(args.repeats):
            times = {}
            for which in (("store", "pipeline") if rep % 2 == 0 else ("pipeline", "store")):
                start = time.perf_counter()
                for r in batches:
                    paths[which](r)
                times[which] = time.perf_counter() - start
            rounds.append(times)
    n = len(batches) * args.batch_size
    store_s = float(np.median([t["store"] for t in rounds]))
    pipeline_s = float(np.median([t["pipeline"] for t in rounds]))
    return {"events_per_s": n / store_s, "reference_events_per_s": n / pipeline_s,
            "ratio": float(np.median([t["pipeline"] / t["store"] for t in rounds])),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "materialise_s": materialise_s, "events": n, "batch_size": args.batch_size,
            "dataset_events": len(data.ts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000, help="events timed per path and round")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--synthetic-events", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=50_000, help="synthetic users")
    ap.add_argument("--items", type=int, default=20_000, help="synthetic items")
    ap.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR", str(ROOT / "data")))
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--one", choices=DATASETS, help=argparse.SUPPRESS)  # a child process: one dataset, JSON out
    args = ap.parse_args()
    if args.one:
        print(json.dumps(bench_one(args.one, args)))
        return
    results = {}
    for name in args.datasets:
        child = [sys.executable, __file__, "--one", name, *sys.argv[1:]]
        out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch assembly (query towers + event item), batch {args.batch_size}, "
                        f"median of {args.repeats} alternating rounds")
    for col in ("dataset", "events", "store events/s", "pipeline events/s", "ratio", "materialise s", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['dataset_events']:,}", f"{r['events_per_s']:,.0f}",
                      f"{r['reference_events_per_s']:,.0f}", f"{r['ratio']:.2f}x", f"{r['materialise_s']:.1f}",
                      f"{r['peak_rss_mib']:,.0f}")
    Console(width=130).print(table)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
