"""Canonical tables every source produces and everything downstream reads.

- ``interactions(user_id, item_id, ts, rating, ...)``: one row per event, **in source order** (the
  row order is the tie-break of the evaluation protocol, so it is never re-sorted on disk). ``ts`` is
  integer unix seconds (or the row position where a dataset has no time), ``rating`` a float.
- ``users(user_id, ...)`` and ``items(item_id, ...)``: only the id is required; every other column
  is optional and kept as the source gives it. The columns the feature schemas read by name are
  ``users``' ``age``, ``gender``, ``occupation``, ``zip`` and ``items``' ``title``, ``year`` (float,
  nullable) and ``genres`` (a list of strings), as ML-100K has them. A dataset without a users or
  items file gets an id-only table (``id_table``).
- ``edges(src, dst)``: optional social graph (synthetic data), directed; friendship is both ways.

Ids are the source's own ids, integers or strings (tokens), one kind per id column;
``SplitData.from_tables`` maps them to dense indices. List columns (``genres``, RecBole's
``token_seq`` / ``float_seq`` fields) round-trip through the parquet cache as Python lists.
Every source's tables pass ``Tables.validated`` before they are cached (``sources.load_tables``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path

log = logging.getLogger(__name__)

# The columns each table must have; any other column is optional and kept.
COLUMNS = {
    "interactions": ["user_id", "item_id", "ts", "rating"],
    "users": ["user_id"],
    "items": ["item_id"],
    "edges": ["src", "dst"],
}


def id_table(ids: pd.Series, column: str) -> pd.DataFrame:
    """An id-only users or items table: the distinct ``ids`` in order of first appearance."""
    return pd.DataFrame({column: ids.drop_duplicates().to_numpy()})


def _id_kind(ids: pd.Series) -> str | None:
    """"integer" or "string" when every value of ``ids`` is one (no nulls, no mix); else None."""
    if ids.hasnans:
        return None
    if pd.api.types.is_integer_dtype(ids):
        return "integer"
    if isinstance(ids.dtype, pd.StringDtype):
        return "string"
    kind = pd.api.types.infer_dtype(ids, skipna=False)
    return kind if kind in ("integer", "string") else None


def read_parquet(path: str | Path) -> pd.DataFrame:
    """A parquet file as a DataFrame whose list columns hold Python lists (pandas gives arrays)."""
    df = pd.read_parquet(path)
    for field in pq.read_schema(path):
        if pa.types.is_list(field.type) or pa.types.is_large_list(field.type):
            df[field.name] = [v.tolist() if isinstance(v, np.ndarray) else v for v in df[field.name]]
    return df


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

    def validated(self, name: str) -> Tables:
        """These tables without exact duplicate events, once they hold what everything downstream assumes.

        - An event repeated exactly (same user_id, item_id, ts and rating) is dropped, the first kept and
          the order of the rest unchanged (it is the protocol's tie-break); one WARNING gives the count.
          Left in, a repeat can be its own user's held-out target and already in that user's history.
        - Interactions must be non-empty, ``ts`` integer seconds within int64, ids all integers or all
          strings (the same kind in the interactions and the users/items table), and every
          user_id/item_id listed once in the users/items table; otherwise ``RecfunnelError`` naming
          dataset ``name``.
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
            kinds = {}
            for where, ids in (("interactions", inter[col]), (f"{what}s", table[col])):
                kinds[where] = _id_kind(ids)
                if kinds[where] is None:
                    raise RecfunnelError(f"dataset {name}: {where}.{col} must be all integers or all strings with no "
                                         f"missing value, got dtype {ids.dtype}; fix the {col} column in its source "
                                         f"(data.source)")
            if len(set(kinds.values())) > 1:
                raise RecfunnelError(f"dataset {name}: interactions.{col} are {kinds['interactions']}s but the "
                                     f"{what}s table's are {kinds[what + 's']}s; read both files' ids the same way "
                                     f"(data.source)")
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
    def load(cls, folder: str | Path) -> Tables:
        folder = Path(folder)
        parts = {}
        for name in COLUMNS:
            path = folder / f"{name}.parquet"
            if path.exists():
                parts[name] = read_parquet(path)
            elif name != "edges":
                raise RecfunnelError(f"{path} is missing; delete {folder} and prepare the data again")
        return cls(**parts)
