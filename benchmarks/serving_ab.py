"""Paired latency of one funnel request under two versions of the code: this tree against a git ref.

    .venv/bin/python benchmarks/serving_ab.py RUN_DIR [--against HEAD] [--requests 1000] [--warmup 50]

RUN_DIR is a finished ``recfunnel.funnel`` run. ``--against`` names a git revision whose ``src/`` is
extracted (``git archive``) into a temporary folder. Two worker processes, one per version, load the
run with one torch/faiss thread each and then serve the same personalised requests in lock-step:
request i goes to one worker, then to the other, the first alternating from request to request. Both
therefore see the same machine at nearly the same moment, which the separate runs of
``bench_serving.py`` cannot promise on a shared machine whose speed drifts by tens of percent within
minutes. Requests are those of ``bench_serving.py`` (``serving_requests.py``) without its unknown
users: the data's users in turn, every other one with two recent items.

It prints each version's p50 / p90 / p99 / mean in ms, the median over requests of the per-request
ratio (this tree / the ref) with the ratio of the means, and how many requests got different items
(0 when a change is meant to be a pure speed-up).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def worker(src: str, run_dir: str, n: int) -> None:
    """Serve request indices read from stdin, one per line; answer each with [ms, items] on stdout."""
    from serving_requests import personalised_requests  # numpy only: imported before the revision's recfunnel

    sys.path.insert(0, src)
    from recfunnel.serving.recommender import Recommender

    rec = Recommender.from_run(run_dir, threads=1)
    todo = personalised_requests(rec.user_ids, rec.item_ids, n)
    print("ready", flush=True)
    for line in sys.stdin:
        user, recent = todo[int(line)]
        start = time.perf_counter()
        out = rec.recommend(user, k=10, recent_items=recent)
        print(json.dumps([(time.perf_counter() - start) * 1000, [str(i) for i in out["items"]]]), flush=True)


def extract_src(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev`` of this repository, unpacked under ``into``."""
    archive = into / "src.tar"
    proc = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), rev, "src"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"serving_ab.py: cannot read src/ of --against {rev!r}: {proc.stderr.strip()}")
    with tarfile.open(archive) as tar:  # our own repository's files; the "data" filter where Python has it
        tar.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into / "src"


def start(src: Path, run_dir: Path, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--worker", str(src), str(run_dir), "--requests", str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(proc: subprocess.Popen, i: int) -> tuple[float, list[str]]:
    proc.stdin.write(f"{i}\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        sys.exit(f"serving_ab.py: a worker stopped (exit {proc.wait()}); its error is above")
    ms, items = json.loads(line)
    return ms, items


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--against", default="HEAD", help="git revision to compare this tree with (default HEAD)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: serve requests with this src/
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, str(args.run_dir), args.requests)
        return 0
    if args.requests < 1 or args.warmup < 0:
        sys.exit("serving_ab.py: --requests must be ≥ 1 and --warmup ≥ 0")
    if not (args.run_dir / "config.yaml").is_file():
        sys.exit(f"serving_ab.py: {args.run_dir} is not a finished recfunnel.funnel run (no config.yaml)")
    total = args.warmup + args.requests
    with tempfile.TemporaryDirectory(prefix="serving_ab_") as tmp:
        versions = {"this tree": ROOT / "src", args.against: extract_src(args.against, Path(tmp))}
        procs = {name: start(src, args.run_dir, total) for name, src in versions.items()}
        try:
            for name, proc in procs.items():
                if proc.stdout.readline().strip() != "ready":
                    sys.exit(f"serving_ab.py: the worker of {name} did not start (exit {proc.wait()}); its error is above")
            ms: dict[str, list[float]] = {name: [] for name in procs}
            differ = 0
            names = list(procs)
            for i in range(total):
                answers = {name: ask(procs[name], i) for name in (names if i % 2 else names[::-1])}
                if i < args.warmup:
                    continue
                for name, (t, _) in answers.items():
                    ms[name].append(t)
                differ += answers[names[0]][1] != answers[names[1]][1]
        finally:
            for proc in procs.values():
                proc.stdin.close()
                proc.wait()
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{args.requests} personalised requests after {args.warmup} warm-up, k=10, one thread per worker, "
          "the two workers in lock-step\n")
    print("| code | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, t in ms.items():
        a = np.asarray(t)
        print(f"| {name} | {np.percentile(a, 50):.2f} | {np.percentile(a, 90):.2f} | {np.percentile(a, 99):.2f} "
              f"| {a.mean():.2f} |")
    new, old = np.asarray(ms[names[0]]), np.asarray(ms[names[1]])
    print(f"\nthis tree / {args.against}: median per-request ratio {np.median(new / old):.3f}, "
          f"ratio of means {new.mean() / old.mean():.3f}; requests with different items: {differ}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
