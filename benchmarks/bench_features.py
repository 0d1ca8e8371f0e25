"""Feature benchmark (not a test): pipeline throughput and memory, embedding-layer speed.

    .venv/bin/python benchmarks/bench_features.py [--synthetic-events 1000000] [--batch 1024]

Prints three tables:
1. feature-pipeline throughput (events/s) for all three towers of every train event, on ML-100K
   and on synthetic data, with the pipeline's setup time and peak traced memory (tracemalloc);
2. embedding-layer forward+backward time on one real ML-100K batch, torchrec vs torch backend, in
   the same process, as a ratio (torchrec / torch);
3. the command line and machine, so figures can be reproduced.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recfunnel.data.dataset import TRAIN, SplitData  # noqa: E402
from recfunnel.data.movielens import load_movielens  # noqa: E402
from recfunnel.data.synthetic import generate_synthetic  # noqa: E402
from recfunnel.features.embedding import FeatureEmbedding  # noqa: E402
from recfunnel.features.pipeline import FeaturePipeline  # noqa: E402
from recfunnel.features.schema import FeatureSchema  # noqa: E402


def pipeline_throughput(name: str, data: SplitData, schema: FeatureSchema, batch: int, max_events: int) -> dict:
    tracemalloc.start()
    t0 = time.perf_counter()
    pipe = FeaturePipeline(schema, data)
    setup_s = time.perf_counter() - t0
    rows = np.flatnonzero(data.split == TRAIN)
    rows = np.random.default_rng(0).permutation(rows)[:max_events]  # shuffled, as in training
    t0 = time.perf_counter()
    for lo in range(0, len(rows), batch):
        r = rows[lo:lo + batch]
        pipe.query(r, "user"), pipe.query(r, "context"), pipe.items(data.item_idx[r], data.ts[r])
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"dataset": name, "events": len(rows), "setup s": setup_s, "events/s": len(rows) / elapsed,
            "peak MiB": peak / 2**20}


def embedding_speed(data: SplitData, schema: FeatureSchema, batch: int, repeats: int) -> list[dict]:
    pipe = FeaturePipeline(schema, data)
    rows = np.flatnonzero(data.split == TRAIN)[:batch]
    inputs = {"user": pipe.query(rows, "user"), "context": pipe.query(rows, "context"),
              "item": pipe.items(data.item_idx[rows], data.ts[rows])}
    layers = {b: FeatureEmbedding(schema, pipe.num_embeddings, backend=b) for b in ("torchrec", "torch")}
    layers["torch"].load_state_dict(layers["torchrec"].state_dict())
    times = {b: [] for b in layers}
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        for b, layer in layers.items():
            t0 = time.perf_counter()
            out = layer(inputs)
            sum(v.sum() for v in out.values()).backward()
            times[b].append(time.perf_counter() - t0)
            layer.zero_grad(set_to_none=True)
    ref = np.median(times["torch"])
    return [{"backend": b, "median ms": 1e3 * np.median(t), "min ms": 1e3 * np.min(t),
             "ratio vs torch": np.median(t) / ref} for b, t in times.items()]


def show(title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    for k in rows[0]:
        table.add_column(k, justify="right")
    for r in rows:
        table.add_row(*[f"{v:,.3g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                        for v in r.values()])
    Console(width=120).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR", ROOT / "data"))
    ap.add_argument("--synthetic-events", type=int, default=1_000_000)
    ap.add_argument("--max-events", type=int, default=300_000, help="train events timed per dataset")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)

    ml = SplitData.from_tables(load_movielens(args.data_dir))
    ml_schema = FeatureSchema.from_yaml(ROOT / "configs/features/ml100k.yaml")
    t0 = time.perf_counter()
    n = args.synthetic_events
    syn = SplitData.from_tables(generate_synthetic(max(n // 50, 100), max(n // 100, 100), n, seed=0))
    gen_s = time.perf_counter() - t0
    syn_schema = FeatureSchema.from_yaml(ROOT / "configs/features/synthetic.yaml")
    show(f"feature pipeline: all towers of shuffled train events, batch {args.batch}", [
        pipeline_throughput("ml100k", ml, ml_schema, args.batch, args.max_events),
        pipeline_throughput(f"synthetic {n:,} (generated in {gen_s:.1f} s)", syn, syn_schema, args.batch,
                            args.max_events),
    ])
    show(f"embedding layer forward+backward, ML-100K batch of {args.batch}, {args.repeats} repeats",
         embedding_speed(ml, ml_schema, args.batch, args.repeats))
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
