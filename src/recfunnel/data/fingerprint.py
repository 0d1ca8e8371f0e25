"""A short content hash of canonical tables: which data a run trained on.

``tables_fingerprint(tables)`` hashes every column of ``interactions``, ``users``, ``items`` and
``edges`` (when present) with ``pandas.util.hash_pandas_object`` (vectorised, one uint64 per row)
and folds the per-column hashes, with the table and column names, into one SHA-256, shown as 16 hex
digits. Tables with the same rows and values have the same fingerprint, and (up to a hash
collision) any change of a value, a row, a column or the order of events changes it:

- interactions and edges are hashed **in row order** (the order of events is the protocol's
  tie-break, so it is part of the data);
- users and items are hashed sorted by id (``SplitData.from_tables`` sorts them; their order is not
  data), so the fingerprint of freshly read tables equals that of a run's ``dm.data.tables``;
- list cells (``items.genres``) are hashed as their elements joined by a separator;
- values are what counts, not the in-memory dtype of a string column (``object`` or ``str``).

Cost: one vectorised pass over the data. Measured on a 2-core CPU machine (best of 3): 11 ms for
ML-100K (100k events, 943 users, 1,682 items); 0.7 s for random tables of 10M events, 100k users,
50k items and 1M edges. Runs compute it once when they load their data.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from recfunnel.data.tables import COLUMNS, Tables

#: tables whose row order is not data: hashed sorted by this id column
SORTED_BY = {"users": "user_id", "items": "item_id"}
_LIST_SEPARATOR = "\x1f"  # ASCII unit separator: joins the elements of a list cell
LENGTH = 16  # hex digits shown


def tables_fingerprint(tables: Tables) -> str:
    """16 hex digits identifying the content of ``tables`` (see the module docstring)."""
    digest = hashlib.sha256()
    for name in COLUMNS:
        df = getattr(tables, name)
        if df is None:
            continue
        if name in SORTED_BY:
            df = df.sort_values(SORTED_BY[name], kind="stable")
        digest.update(f"\x00{name}:{len(df)}".encode())
        for column in df.columns:
            digest.update(f"\x00{column}".encode())
            digest.update(_column_hash(df[column]).tobytes())
    return digest.hexdigest()[:LENGTH]


def _column_hash(values: pd.Series) -> np.ndarray:
    """(N,) uint64 hashes of one column's values (in its row order)."""
    if isinstance(values.dtype, pd.StringDtype):
        values = values.astype(object)
    elif values.dtype == object:  # may hold lists
        values = values.map(_cell)
    return pd.util.hash_pandas_object(values, index=False).to_numpy()


def _cell(value):
    """A list-like cell as one string (its elements joined); anything else as it is."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return _LIST_SEPARATOR.join(map(str, value))
    return value
