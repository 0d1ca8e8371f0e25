"""Canonical tables every source produces and everything downstream reads.

- ``interactions(user_id, item_id, ts, rating)``: one row per event, **in source order** (the row
  order is the tie-break of the evaluation protocol, so it is never re-sorted on disk).
- ``users(user_id, age, gender, occupation, zip)``; ``items(item_id, title, year, genres)`` where
  ``genres`` is a list of strings and ``year`` is nullable.
- ``edges(src, dst)``: optional social graph (synthetic data), directed; friendship is both ways.

Ids are the source's own integer ids; ``Tables.encode`` maps them to dense indices when needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path

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
