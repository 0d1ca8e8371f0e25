"""``timed(name)``: log how long a step of a job took and the process's peak memory so far."""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("recfunnel.stage")


def peak_rss_mib() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    """Log ``stage <name>: <seconds> s, peak RSS <MiB> MiB`` when the block ends (successfully).

    The peak is the process's since it started (monotonic): a stage that raised it shows its own.
    """
    start = time.perf_counter()
    yield
    log.info("stage %s: %.1f s, peak RSS %.0f MiB", name, time.perf_counter() - start, peak_rss_mib())
