"""Time-ordered leave-one-out split (``../shared/EVALUATION.md``).

Per user, events are ordered by ``(ts, position in the source file)``; the last goes to test, the
second-to-last to valid, the rest to train. The tie-break by source position is part of the
protocol: many users rate several items within the same second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


def event_order(interactions: pd.DataFrame) -> np.ndarray:
    """Row indices sorted by (user_id, ts, source position): each user's timeline, in protocol order."""
    return np.lexsort((np.arange(len(interactions)), interactions["ts"].to_numpy(),
                       interactions["user_id"].to_numpy()))


def leave_last_out(interactions: pd.DataFrame, min_events: int = 3) -> np.ndarray:
    """Split code (TRAIN / VALID / TEST) per row of ``interactions``, rows kept in source order.

    Users with fewer than ``min_events`` events keep all of them in train (none in ML-100K).
    """
    order = event_order(interactions)
    users = interactions["user_id"].to_numpy()[order]
    # rank from the end of each user's timeline: 0 = last event
    is_last = np.r_[users[1:] != users[:-1], True]
    group_end = np.flatnonzero(is_last)
    group_id = np.repeat(np.arange(len(group_end)), np.diff(np.r_[-1, group_end]))
    from_end = group_end[group_id] - np.arange(len(order))
    counts = np.diff(np.r_[-1, group_end])[group_id]
    split_sorted = np.full(len(order), TRAIN, dtype=np.int8)
    eligible = counts >= min_events
    split_sorted[eligible & (from_end == 0)] = TEST
    split_sorted[eligible & (from_end == 1)] = VALID
    split = np.empty_like(split_sorted)
    split[order] = split_sorted
    return split


def split_sizes(split: np.ndarray) -> dict[str, int]:
    return {name: int((split == code).sum()) for code, name in SPLIT_NAMES.items()}
