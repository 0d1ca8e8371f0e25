"""Canonical tables every source produces and everything downstream reads.

- ``interactions(user_id, item_id, ts, rating)``: one row per event, **in source order** (the row
  order is the tie-break of the evaluation protocol, so it is never re-sorted on disk).
- ``users(user_id, age, gender, occupation, zip)``; ``items(item_id, title, year, genres)`` where
  ``genres`` is a list of strings and ``year`` is nullable.
- ``edges(src, dst)``: optional social graph (synthetic data), directed; friendship is both ways.

Ids are the source's own integer ids; ``SplitData.from_tables`` maps them to dense indices.
Every source's tables pass ``Tables.validated`` before they are cached (``sources.load_tables``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path

log = logging.getLogger(__name__)

COLUMNS = {
    "interactions": ["user_id", "item_id", "ts", "rating"],
    "users": ["user_id", "age", "gender", "occupation", "zip"],
    "items": ["item_id", "title", "year", "genres"],
    "edges": ["src", "dst"],
}


@dataclasses.dataclass
class Tables:
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    edges: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        for name, cols in COLUMNS.items():
            df = getattr(self, name)
            if df is None:
                continue
            missing = [c for c in cols if c not in df.columns]
            if missing:
                raise RecfunnelError(f"table '{name}' lacks columns {missing}; expected {cols}")

    def validated(self, name: str) -> "Tables":
        """These tables without exact duplicate events, once they hold what everything downstream assumes.

        - An event repeated exactly (same user_id, item_id, ts and rating) is dropped, the first kept and
          the order of the rest unchanged (it is the protocol's tie-break); one WARNING gives the count.
          Left in, a repeat can be its own user's held-out target and already in that user's history.
        - Interactions must be non-empty, ``ts`` integer seconds within int64, and every user_id/item_id
          listed once in the users/items table; otherwise ``RecfunnelError`` naming dataset ``name``.
        - Negative timestamps (before 1970) are kept, with one WARNING giving the count and an example.
        """
        inter = self.interactions
        if inter.empty:
            raise RecfunnelError(f"dataset {name} has no interactions; check its source (data.source)")
        ts = inter["ts"]
        if not pd.api.types.is_integer_dtype(ts) or ts.max() > np.iinfo(np.int64).max:
            raise RecfunnelError(f"dataset {name}: timestamps must be integer unix seconds within int64, got "
                                 f"dtype {ts.dtype}; convert interactions.ts in its source (data.source)")
        duplicate = inter.duplicated(COLUMNS["interactions"], keep="first").to_numpy()
        if duplicate.any():
            log.warning("dataset %s: dropped %d duplicate interaction row(s) (same user_id, item_id, ts and "
                        "rating as an earlier row; the first kept)", name, int(duplicate.sum()))
            inter = inter[~duplicate].reset_index(drop=True)
        for what, table in (("user", self.users), ("item", self.items)):
            col = f"{what}_id"
            repeated = table[col][table[col].duplicated()]
            if len(repeated):
                raise RecfunnelError(f"dataset {name}: the {what}s table lists {col} {repeated.iat[0]} more "
                                     f"than once; keep one row per {what} in its source (data.source)")
            unknown = inter[col][~inter[col].isin(table[col])]
            if len(unknown):
                raise RecfunnelError(
                    f"dataset {name}: {len(unknown)} interaction(s) reference {col}(s) absent from the {what}s "
                    f"table, e.g. {unknown.iat[0]}; make its source files agree (data.source)")
        negative = inter[inter["ts"] < 0]
        if len(negative):
            log.warning("dataset %s: %d interaction(s) have a negative timestamp (before 1970), e.g. user_id "
                        "%s, item_id %s, ts %s; kept as they are", name, len(negative),
                        negative["user_id"].iat[0], negative["item_id"].iat[0], negative["ts"].iat[0])
        return dataclasses.replace(self, interactions=inter)

    def save(self, folder: str | Path) -> None:
        """Write one parquet per table into ``folder`` atomically (a crash leaves no partial folder)."""
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            for name in COLUMNS:
                df = getattr(self, name)
                if df is not None:
                    df.to_parquet(tmp / f"{name}.parquet", index=False)

    @classmethod
    def load(cls, folder: str | Path) -> "Tables":
        folder = Path(folder)
        parts = {}
        for name in COLUMNS:
            path = folder / f"{name}.parquet"
            if path.exists():
                df = pd.read_parquet(path)
                if name == "items":
                    df["genres"] = df["genres"].map(list)
                parts[name] = df
            elif name != "edges":
                raise RecfunnelError(f"{path} is missing; delete {folder} and prepare the data again")
        return cls(**parts)
