"""Recall and speed of the approximate item indexes (IVF, HNSW) against exact search (flat).

For each case, builds ``flat`` / ``ivf`` / ``hnsw`` ``ItemIndex``es and reports, per search setting,
recall@K against the exact top-K, queries per second (one batched search call, all queries), and the
speedup over exact search. All searches use the inner product, as the two-tower model scores.

Default cases (synthetic, 64 dims, gaussian mixture then L2-normalised, queries from the same mixture):
- ``large``: 1,000,000 items; HNSW is built on the first ``--hnsw-items`` (50,000) only, because the
  full build takes far more than the 2 minutes this run aims at on 2 cores (~105 s for 100k items on
  a busy 2-core box, and it grows a little faster than linearly), and its recall and speedup are
  against exact search on that subset.
- ``ml100k``: 1,682 items (the ML-100K catalogue size).

``--vectors items.npy`` replaces both with one case over real item-tower outputs (I, D); queries come
from ``--queries-file`` (Q, D) or, failing that, are perturbed copies of random items.

    python benchmarks/bench_index.py                   # defaults, ~2-3 min on 2 cores
    python benchmarks/bench_index.py --items 200000 --dim 32 --queries 500 --threads 8
    python benchmarks/bench_index.py --vectors item_vecs.npy --queries-file user_vecs.npy
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from recfunnel.serving.index import ItemIndex, ann_recall, faiss_threads
from recfunnel.utils.errors import RecfunnelError

MIN_TIMING_S = 0.2  # repeat fast searches until this much time has passed, for a stable QPS


@dataclass
class Case:
    name: str
    items: np.ndarray  # (I, D) float32
    queries: np.ndarray  # (Q, D) float32
    note: str


def mixture(n: int, centers: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """(n, D) L2-normalised draws around random rows of ``centers`` (C, D), noise std ``spread`` per dim."""
    x = centers[rng.integers(0, len(centers), n)]
    x += spread * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def synthetic_case(name: str, num_items: int, args: argparse.Namespace) -> Case:
    """√I standard-normal centres; items and queries both drawn around them."""
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((max(1, round(num_items ** 0.5)), args.dim), dtype=np.float32)
    return Case(name, mixture(num_items, centers, args.spread, rng), mixture(args.queries, centers, args.spread, rng),
                f"synthetic: {len(centers)}-component gaussian mixture (spread {args.spread}), L2-normalised; "
                f"recall depends strongly on the spread (try --spread 1.5), so check real vectors with --vectors")


def file_case(vectors: str, queries_file: str | None, num_queries: int, seed: int) -> Case:
    items = np.ascontiguousarray(np.load(vectors), dtype=np.float32)
    if queries_file is not None:
        return Case(vectors, items, np.ascontiguousarray(np.load(queries_file), dtype=np.float32),
                    f"queries from {queries_file}")
    rng = np.random.default_rng(seed)
    picked = items[rng.integers(0, len(items), num_queries)]
    queries = picked + 0.5 * items.std(0) * rng.standard_normal(picked.shape, dtype=np.float32)
    return Case(vectors, items, queries.astype(np.float32),
                "queries: random items + gaussian noise (0.5 × per-dim std); pass --queries-file for real ones")


def timed_search(index: ItemIndex, queries: np.ndarray, k: int, **kw) -> tuple[np.ndarray, float]:
    """Dense top-k indices (Q, k) and queries per second of batched search (repeated if fast)."""
    runs, start = 0, time.perf_counter()
    while True:
        _, idx = index.search(queries, k, **kw)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_TIMING_S:
            return idx, runs * len(queries) / elapsed


def timed_build(items: np.ndarray, kind: str, **kw) -> tuple[ItemIndex, float]:
    start = time.perf_counter()
    index = ItemIndex.build(items, kind=kind, **kw)
    return index, time.perf_counter() - start


def run_case(case: Case, args: argparse.Namespace, console: Console) -> None:
    num_items, dim = case.items.shape
    k = min(args.k, num_items)
    table = Table(title=f"{case.name}: {num_items:,} items × {dim} dims, {len(case.queries):,} queries, "
                        f"recall@{k} vs exact", title_justify="left")
    for col in ("index", "built with", "search", "build s", f"recall@{k}", "QPS", "× flat QPS"):
        table.add_column(col, justify="left" if col in ("index", "built with", "search") else "right")

    def add_row(kind: str, built_with: str, setting: str, build_s: float | None, recall: float, qps: float,
                ref_qps: float):
        table.add_row(kind, built_with, setting, "" if build_s is None else f"{build_s:.1f}",
                      f"{recall:.4f}", f"{qps:,.0f}", f"{qps / ref_qps:.1f}")

    flat, flat_build = timed_build(case.items, "flat")
    exact, flat_qps = timed_search(flat, case.queries, k)
    add_row("flat", "", "exact", flat_build, 1.0, flat_qps, flat_qps)

    ivf, ivf_build = timed_build(case.items, "ivf", nlist=args.nlist, seed=args.seed)
    nlist = ivf.params["nlist"]
    for i, nprobe in enumerate(sorted({min(p, nlist) for p in args.nprobe})):
        idx, qps = timed_search(ivf, case.queries, k, nprobe=nprobe)
        add_row("ivf" if i == 0 else "", f"nlist={nlist}" if i == 0 else "", f"nprobe={nprobe}",
                ivf_build if i == 0 else None, ann_recall(exact, idx), qps, flat_qps)
    del ivf

    hnsw_items, hnsw_exact, hnsw_ref_qps = case.items, exact, flat_qps
    subset = f", first {args.hnsw_items:,} items" if num_items > args.hnsw_items else ""
    if subset:
        hnsw_items = case.items[:args.hnsw_items]
        hnsw_exact, hnsw_ref_qps = timed_search(ItemIndex.build(hnsw_items), case.queries, k)
        add_row("flat", subset[2:], "exact", None, 1.0, hnsw_ref_qps, hnsw_ref_qps)
    hnsw, hnsw_build = timed_build(hnsw_items, "hnsw", seed=args.seed)
    built_with = f"M={hnsw.params['hnsw_m']} efC={hnsw.params['ef_construction']}{subset}"
    for i, ef in enumerate(args.ef_search):
        idx, qps = timed_search(hnsw, case.queries, k, ef_search=ef)
        add_row("hnsw" if i == 0 else "", built_with if i == 0 else "", f"ef_search={ef}",
                hnsw_build if i == 0 else None, ann_recall(hnsw_exact, idx), qps, hnsw_ref_qps)

    console.print(table)
    console.print(f"  {case.note}")
    if subset:
        console.print(f"  HNSW built on the first {len(hnsw_items):,} of {num_items:,} items only (--hnsw-items): "
                      f"building it on all of them takes well over 2 min on 2 cores. Its recall and × flat QPS "
                      f"are against exact search on the same {len(hnsw_items):,} items.")
    console.print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000, help="items in the large synthetic case")
    p.add_argument("--small-items", type=int, default=1682,
                   help="items in the small synthetic case (ML-100K size); 0 skips it")
    p.add_argument("--dim", type=int, default=64, help="dimension of the synthetic vectors")
    p.add_argument("--spread", type=float, default=1.0,
                   help="per-dim noise std around the unit-variance mixture centres (synthetic cases)")
    p.add_argument("--queries", type=int, default=500, help="queries (synthetic or sampled from --vectors)")
    p.add_argument("--vectors", help="(I, D) .npy of real item vectors; replaces the synthetic cases")
    p.add_argument("--queries-file", help="(Q, D) .npy of real query (user-tower) vectors for --vectors")
    p.add_argument("--k", type=int, default=100, help="top-K for recall")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: ItemIndex's ≈ 4·√I)")
    p.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    p.add_argument("--hnsw-items", type=int, default=50_000,
                   help="build HNSW on at most this many items (the first ones)")
    p.add_argument("--threads", type=int, default=None, help="faiss threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.queries_file and not args.vectors:
        p.error("--queries-file needs --vectors")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=120)
    start = time.perf_counter()
    try:
        with faiss_threads(args.threads):
            console.print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
                          f"metric: inner product")
            if args.vectors:
                cases = [file_case(args.vectors, args.queries_file, args.queries, args.seed)]
            else:
                cases = [synthetic_case("large", args.items, args)]
                if args.small_items:
                    cases.append(synthetic_case("ml100k", args.small_items, args))
            for case in cases:
                run_case(case, args, console)
    except RecfunnelError as e:
        console.print(f"error: {e}", markup=False)
        return 2
    console.print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
