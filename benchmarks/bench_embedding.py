"""Embedding-layer benchmark (not a test): forward+backward time of ``FeatureEmbedding`` on one real
ML-100K batch, torchrec vs torch backend, in the same process, as a ratio (torchrec / torch).

    .venv/bin/python benchmarks/bench_embedding.py [--batch 1024] [--repeats 30]

Batch assembly (materialised features vs the per-batch pipeline) is ``bench_data.py``'s.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recfunnel.data.dataset import TRAIN, SplitData  # noqa: E402
from recfunnel.data.movielens import load_movielens  # noqa: E402
from recfunnel.features.embedding import FeatureEmbedding  # noqa: E402
from recfunnel.features.pipeline import FeaturePipeline  # noqa: E402
from recfunnel.features.schema import FeatureSchema  # noqa: E402


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
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)

    ml = SplitData.from_tables(load_movielens(args.data_dir))
    ml_schema = FeatureSchema.from_yaml(ROOT / "configs/features/ml100k.yaml")
    show(f"embedding layer forward+backward, ML-100K batch of {args.batch}, {args.repeats} repeats",
         embedding_speed(ml, ml_schema, args.batch, args.repeats))
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
