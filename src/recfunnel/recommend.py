"""Batch recommendations from a finished funnel run: one JSON line per user id.

    python -m recfunnel.recommend run_dir=DIR users=FILE out=FILE.jsonl [k=10] [threads=1]

FILE holds one user id per line (``#`` comments and blank lines skipped). ``k`` (≥ 1) items per user,
clamped to the run's retrieval K (the line's ``note`` says so); ``threads`` (≥ 1): torch / faiss
threads of the process. In Python, use ``recfunnel.serving.recommender.Recommender``
(``Recommender.from_run(DIR).recommend(user, k=10)``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from recfunnel.serving.recommender import recommend_file
from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.errors import RecfunnelError

USAGE = "usage: python -m recfunnel.recommend run_dir=DIR users=FILE out=FILE.jsonl [k=10] [threads=1]"
KEYS = ("run_dir", "users", "out", "k", "threads")


def _int_arg(args: dict[str, str], key: str, default: int) -> int:
    text = args.get(key, str(default))
    try:
        return int(text)
    except ValueError:
        raise RecfunnelError(f"{key}={text} is not an integer; pass {key}=N with N ≥ 1 (e.g. {key}={default})") from None


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in KEYS]
    if unknown:
        raise RecfunnelError(f"unknown argument(s) {unknown}; {USAGE}")
    args = dict(a.split("=", 1) for a in argv)
    missing = [key for key in ("run_dir", "users", "out") if key not in args]
    if missing:
        raise RecfunnelError(f"missing {', '.join(missing)}; {USAGE}")
    n = recommend_file(args["run_dir"], args["users"], args["out"], _int_arg(args, "k", 10),
                       _int_arg(args, "threads", 1))
    print(f"wrote {n} users' recommendations to {args['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
