"""Single-request latency of the whole funnel (features → retrieval → ranker → re-ranking) on CPU.

    .venv/bin/python benchmarks/bench_serving.py RUN_DIR [--requests 1000] [--threads 1 2] [--load-workers 2]

RUN_DIR is a finished ``recfunnel.funnel`` run. Requests cycle over the data's users, every other
one with two recent items; a few unknown users exercise the fallback. For each torch/faiss thread
count (``--threads``), on the idle machine and then with ``--load-workers`` competing processes
busy-looping on the CPUs (bounded by ``--load-seconds``, always stopped at the end), it prints
p50 / p90 / p99 / mean per request, and, as a reference measured in the same run, the same
percentiles of the retrieval stage alone (user tower + FAISS search), so the ratio is what ranking
and re-ranking add. All in one markdown table, under the command line that produced it.
The goal on ML-100K is p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from serving_requests import personalised_requests  # noqa: E402

from recfunnel.serving.recommender import Recommender, set_threads  # noqa: E402
from recfunnel.utils.cli import friendly_errors  # noqa: E402
from recfunnel.utils.errors import RecfunnelError  # noqa: E402


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": np.percentile(a, 50), "p90": np.percentile(a, 90), "p99": np.percentile(a, 99), "mean": a.mean()}


def busy(deadline: float, ready) -> None:
    """A competing CPU load: spin until ``deadline`` (time.time()), so a leaked worker still ends."""
    ready.release()
    while time.time() < deadline:
        pass


@contextlib.contextmanager
def competing_load(workers: int, seconds: float) -> Iterator[list]:
    """``workers`` processes busy-looping for at most ``seconds``; terminated when the block ends."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing of this process's torch/OpenMP state
    ready = ctx.Semaphore(0)
    procs = [ctx.Process(target=busy, args=(time.time() + seconds, ready), daemon=True) for _ in range(workers)]
    try:
        for p in procs:
            p.start()
        for _ in procs:  # measure only once every worker spins
            if not ready.acquire(timeout=120):
                raise RecfunnelError("a load worker did not start within 120 s")
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def measure(rec: Recommender, requests: list, warmup: int, k: int) -> tuple[list[float], list[float], int]:
    """Per-request ms of ``recommend`` and of the retrieval stage alone (personalised requests), and the
    number of fallbacks, over ``requests`` after the first ``warmup``."""
    f = rec.funnel
    full, retrieval_only = [], []
    fallbacks = 0
    for i, (user, recent) in enumerate(requests):
        start = time.perf_counter()
        out = rec.recommend(user, k=k, recent_items=recent)
        elapsed = (time.perf_counter() - start) * 1000
        if out["fallback"] is None:
            u = rec._user_index[str(user)]
            start = time.perf_counter()  # reference: the retrieval stage alone, same request
            view, row = f.retriever.pipeline.for_request(u, rec._items(recent, "recent_items"),
                                                         np.full(len(recent), rec.now), rec.now)
            rows = np.array([row])
            f.retriever.search(f.retriever.query_vectors(view, rows), f.candidates, f.retriever.seen_before(view, rows))
            ref = (time.perf_counter() - start) * 1000
        if i < warmup:
            continue
        if out["fallback"] is None:
            full.append(elapsed)
            retrieval_only.append(ref)
        else:
            fallbacks += 1
    return full, retrieval_only, fallbacks


@friendly_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch/faiss thread counts to compare")
    ap.add_argument("--load-workers", type=int, default=2, help="busy processes of the loaded condition (0: idle only)")
    ap.add_argument("--load-seconds", type=float, default=600, help="upper bound on how long the load runs")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    if args.requests < 1 or args.warmup < 0 or args.load_workers < 0:
        raise RecfunnelError("--requests must be ≥ 1, --warmup and --load-workers ≥ 0")

    rec = Recommender.from_run(args.run_dir, threads=args.threads[0])
    requests = personalised_requests(rec.user_ids, rec.item_ids, args.warmup + args.requests, unknown_every=97)

    rows, fallbacks = [], 0
    loads = ["idle"] + ([f"{args.load_workers} busy processes"] if args.load_workers else [])
    for load in loads:
        with competing_load(args.load_workers if load != "idle" else 0, args.load_seconds) as procs:
            for threads in args.threads:
                set_threads(threads)
                loadavg = os.getloadavg()[0]  # "idle" only as far as the rest of the machine is
                full, retrieval_only, fallbacks = measure(rec, requests, args.warmup, args.k)
                rows.append((threads, load, loadavg, percentiles(full), percentiles(retrieval_only)))
            if not all(p.is_alive() for p in procs):
                raise RecfunnelError(f"the load workers stopped (--load-seconds={args.load_seconds}) before the "
                                     "measurement ended; raise --load-seconds")

    f = rec.funnel
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{len(full)} personalised requests (+{fallbacks} unknown-user fallbacks) per row, k={args.k}, "
          f"K={f.candidates} candidates, {os.cpu_count()} CPUs, "
          f"re-ranking stages: {', '.join(f.reranker.names) or 'none'}")
    print("\n| torch/faiss threads | competing load | 1-min load avg before | p50 ms | p90 ms | p99 ms | mean ms "
          "| retrieval only p50 ms | retrieval only p99 ms | full / retrieval p50 | p99 < 20 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for threads, load, loadavg, a, b in rows:
        print(f"| {threads} | {load} | {loadavg:.1f} | {a['p50']:.2f} | {a['p90']:.2f} | {a['p99']:.2f} | {a['mean']:.2f} "
              f"| {b['p50']:.2f} | {b['p99']:.2f} | {a['p50'] / b['p50']:.2f} | {'met' if a['p99'] < 20 else 'not met'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
