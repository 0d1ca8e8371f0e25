"""Ragged-range helpers: concat_ranges and searchsorted_segments against their loop definitions."""

import numpy as np

from recfunnel.utils.arrays import concat_ranges, searchsorted_segments, sorted_unique


def test_concat_ranges_is_the_concatenation_of_aranges():
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 50, 40)
    ends = starts + rng.integers(0, 6, 40)  # empty ranges included
    want = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
    assert np.array_equal(concat_ranges(starts, ends), want)
    assert concat_ranges(np.zeros(3, int), np.zeros(3, int)).dtype == np.int64
    one = concat_ranges(np.array([7], np.int32), np.array([11], np.int32))  # one range: its own shortcut
    assert np.array_equal(one, np.arange(7, 11)) and one.dtype == np.int64


def test_searchsorted_segments_equals_a_searchsorted_per_segment():
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 300, 200)  # empty segments and long ones
    values = np.concatenate([np.sort(rng.integers(0, 1000, n)) for n in lengths])
    ptr = np.r_[0, np.cumsum(lengths)]
    seg = rng.integers(0, 200, 5000)
    needles = rng.integers(-5, 1010, 5000)
    needles[:200] = values[np.minimum(ptr[seg[:200]], len(values) - 1)]  # exact hits, ties
    got = searchsorted_segments(values, ptr[seg], ptr[seg + 1], needles)
    want = [ptr[s] + np.searchsorted(values[ptr[s]:ptr[s + 1]], x, side="left") for s, x in zip(seg, needles)]
    assert np.array_equal(got, want)


def test_sorted_unique_equals_np_unique():
    values = np.random.default_rng(2).integers(0, 50, 500)
    assert np.array_equal(sorted_unique(values), np.unique(values))
    assert len(sorted_unique(np.zeros(0, np.int64))) == 0
