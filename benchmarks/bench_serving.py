"""Single-request latency of the whole funnel (features → retrieval → ranker → re-ranking) on CPU.

    .venv/bin/python benchmarks/bench_serving.py RUN_DIR [--requests 1000] [--threads 1]

RUN_DIR is a finished ``recfunnel.funnel`` run. Requests cycle over the data's users, every other
one with two recent items; a few unknown users exercise the fallback. Prints p50 / p90 / p99 / mean
per request, and, as a reference measured in the same run, the same percentiles of the retrieval
stage alone (user tower + FAISS search), so the ratio is what ranking and re-ranking add.
The goal on ML-100K is p99 < 20 ms.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from recfunnel.recommend import Recommender  # noqa: E402
from recfunnel.utils.cli import friendly_errors  # noqa: E402


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": np.percentile(a, 50), "p90": np.percentile(a, 90), "p99": np.percentile(a, 99), "mean": a.mean()}


@friendly_errors
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 suits single requests)")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rec = Recommender.from_run(args.run_dir)
    users, items = rec.user_ids, rec.item_ids
    rng = np.random.default_rng(0)
    requests = []
    for i in range(args.warmup + args.requests):
        user = users[i % len(users)] if i % 97 else "unknown-user"
        recent = list(rng.choice(items, 2, replace=False)) if i % 2 else []
        requests.append((user, recent))

    f = rec.funnel
    full, retrieval_only = [], []
    fallbacks = 0
    for i, (user, recent) in enumerate(requests):
        start = time.perf_counter()
        out = rec.recommend(user, k=args.k, recent_items=recent)
        elapsed = (time.perf_counter() - start) * 1000
        if out["fallback"] is None:
            u = rec._user_index[str(user)]
            start = time.perf_counter()  # reference: the retrieval stage alone, same request
            view, row = f.retriever.pipeline.for_request(u, rec._items(recent, "recent_items"),
                                                         np.full(len(recent), rec.now), rec.now)
            rows = np.array([row])
            f.retriever.search(f.retriever.query_vectors(view, rows), f.candidates, f.retriever.seen_before(view, rows))
            ref = (time.perf_counter() - start) * 1000
        if i < args.warmup:
            continue
        if out["fallback"] is None:
            full.append(elapsed)
            retrieval_only.append(ref)
        else:
            fallbacks += 1

    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{len(full)} personalised requests (+{fallbacks} unknown-user fallbacks), k={args.k}, "
          f"K={f.candidates} candidates, torch threads={args.threads}, re-ranking stages: {', '.join(f.reranker.names) or 'none'}")
    print("\n| path | p50 ms | p90 ms | p99 ms | mean ms |\n|---|---|---|---|---|")
    a, b = percentiles(full), percentiles(retrieval_only)
    print(f"| full funnel (recommend) | {a['p50']:.2f} | {a['p90']:.2f} | {a['p99']:.2f} | {a['mean']:.2f} |")
    print(f"| retrieval stage only (reference) | {b['p50']:.2f} | {b['p90']:.2f} | {b['p99']:.2f} | {b['mean']:.2f} |")
    print(f"\nfull / retrieval-only p50 ratio: {a['p50'] / b['p50']:.2f}; goal p99 < 20 ms: "
          f"{'met' if a['p99'] < 20 else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
