"""Vectorised helpers over ragged (CSR-style) index ranges."""

from __future__ import annotations

import numpy as np


def concat_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, e)`` for each pair: (sum(e - s),) int64, without a Python loop."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(ends, dtype=np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return offsets + np.arange(total, dtype=np.int64)


def searchsorted_segments(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """For each i, the first j in ``[lo[i], hi[i])`` with ``values[j] >= needles[i]`` (else ``hi[i]``):
    ``np.searchsorted(values[lo:hi], needle, side="left") + lo`` for many segments of one array, each
    sorted, at once. A vectorised bisection: log2(longest segment) rounds of gathers, each within a
    segment, so it stays fast on arrays far larger than the CPU caches (a global searchsorted over
    10M keys spends most of its time in cache misses)."""
    lo = np.asarray(lo, dtype=np.int64).copy()
    hi = np.asarray(hi, dtype=np.int64).copy()
    needles = np.asarray(needles)
    active = np.flatnonzero(lo < hi)
    while len(active):
        mid = (lo[active] + hi[active]) // 2
        right = values[mid] < needles[active]
        lo[active] = np.where(right, mid + 1, lo[active])
        hi[active] = np.where(right, hi[active], mid)
        active = active[lo[active] < hi[active]]
    return lo


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a large integer array by one sort (numpy 2's hash-based unique is
    several times slower on tens of millions of int64 keys)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out
