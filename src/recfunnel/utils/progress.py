"""Progress bars that stay readable when stderr is a file (a SLURM log, ``nohup``, ``make train &> log``).

In a terminal a bar redraws itself in place several times a second. Written to a file, every redraw
is kept: tqdm's default (a redraw every 0.1 s) turned the funnel's 30-second retrieval over its
train events into one 19 kB line of its log. So, when stderr is not a terminal, ``progress_bar``
redraws at most once a minute. (Lightning's training bar, a Rich one, already writes one line per
epoch to a file.)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
FILE_REDRAW_S = 60.0  # the shortest time between two redraws of a bar written to a file


def interactive() -> bool:
    """True when stderr (where bars go) is a terminal."""
    return sys.stderr.isatty()


def progress_bar(iterable: Iterable[T], **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, redrawn at most every ``FILE_REDRAW_S`` seconds when stderr is
    not a terminal (an explicit ``mininterval`` wins)."""
    if not interactive():
        kwargs.setdefault("mininterval", FILE_REDRAW_S)
    return tqdm(iterable, **kwargs)
