"""Canonical tables + dense indices + the protocol split: what models, features and evaluation read.

Ids may be integers or strings (tokens); both are mapped to dense indices in sorted-id order.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.data.fingerprint import tables_fingerprint
from recfunnel.data.split import TEST, TRAIN, VALID, event_order, leave_last_out
from recfunnel.data.tables import Tables
from recfunnel.utils.errors import RecfunnelError


def _dense_index(ids: np.ndarray, vocab: np.ndarray, what: str) -> np.ndarray:
    """Positions of ``ids`` in the sorted ``vocab``; unknown ids are an error naming a few of them."""
    pos = np.searchsorted(vocab, ids)
    pos = np.clip(pos, 0, len(vocab) - 1)
    bad = vocab[pos] != ids
    if bad.any():
        raise RecfunnelError(f"interactions reference {int(bad.sum())} {what}(s) absent from the {what}s table, "
                             f"e.g. {np.unique(ids[bad])[:5].tolist()}; the source files disagree")
    return pos


@dataclasses.dataclass
class SplitData:
    """Events with dense ``user_idx`` / ``item_idx`` (0-based, in users/items table order) and split codes.

    Arrays are aligned with ``tables.interactions`` rows (source order); ``order`` lists rows in
    protocol order (user, ts, source position).
    """

    tables: Tables
    user_idx: np.ndarray  # (N,) int64
    item_idx: np.ndarray  # (N,) int64
    ts: np.ndarray  # (N,) int64, seconds
    split: np.ndarray  # (N,) int8: TRAIN / VALID / TEST
    order: np.ndarray  # (N,) int64
    cache_dir: Path | None = None  # the dataset's cache folder (``load_split``): derived data (text vectors) goes there

    @classmethod
    def from_tables(cls, tables: Tables, min_events: int = 3) -> SplitData:
        tables.users = tables.users.sort_values("user_id", kind="stable").reset_index(drop=True)
        tables.items = tables.items.sort_values("item_id", kind="stable").reset_index(drop=True)
        inter = tables.interactions
        user_idx = _dense_index(inter["user_id"].to_numpy(), tables.users["user_id"].to_numpy(), "user")
        ts = inter["ts"].to_numpy().astype(np.int64)
        # dense indices follow the sorted ids, so the protocol's order is the same on them (and string
        # ids are compared once, here, not again by every sort)
        timeline = pd.DataFrame({"user_id": user_idx, "ts": ts})
        return cls(
            tables=tables,
            user_idx=user_idx,
            item_idx=_dense_index(inter["item_id"].to_numpy(), tables.items["item_id"].to_numpy(), "item"),
            ts=ts,
            split=leave_last_out(timeline, min_events=min_events),
            order=event_order(timeline),
        )

    @functools.cached_property
    def fingerprint(self) -> str:
        """``tables_fingerprint`` of these tables (computed once)."""
        return tables_fingerprint(self.tables)

    @property
    def num_users(self) -> int:
        return len(self.tables.users)

    @property
    def num_items(self) -> int:
        return len(self.tables.items)

    def rows(self, code: int) -> np.ndarray:
        """Row indices of one split, in protocol order."""
        return self.order[self.split[self.order] == code]

    def item_counts(self, code: int = TRAIN) -> np.ndarray:
        """(num_items,) number of events per item in one split (train by default)."""
        mask = self.split == code
        return np.bincount(self.item_idx[mask], minlength=self.num_items)


__all__ = ["SplitData", "TRAIN", "VALID", "TEST"]
