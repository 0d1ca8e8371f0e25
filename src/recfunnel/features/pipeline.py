"""As-of-time feature pipeline: for any event, every schema feature from strictly earlier data.

``FeaturePipeline(schema, data)`` precomputes O(N) per-event scalars once (timeline positions,
session starts, popularity as of each event); ``query(rows)`` and ``items(item_idx, ts)`` then build
a batch's ``TowerInput``s with vectorised numpy, so history and session bags are never materialised
for the whole dataset.

What "as of" means here (see ``../shared/EVALUATION.md``):
- the user's own history and session: the user's events strictly before this one in protocol order
  (ts, then source position) — any split, since earlier validation events are known at test time;
- item popularity, and the friends' recent items: *train-split* events with a timestamp strictly
  earlier than the event's, so no other user's validation or test event ever leaks in;
- static attributes (demographics, genres, year: any column of the users / items table read by a
  ``user.<column>`` / ``item.<column>`` source) are known at all times. Each is encoded once per user
  / item (``static_codes``; list-valued columns as a CSR, ``list_ptr``), so a batch only gathers rows.
  A ``text`` column is embedded once per distinct text (``text_vectors``: the frozen (R, E) table the
  model projects; ``static_codes``: each user's / item's row in it, 0 = no text).
"""

from __future__ import annotations

import copy
import functools
import logging
import zlib
from collections.abc import Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recfunnel.data.dataset import SplitData
from recfunnel.features.batch import TowerInput, make_kjt
from recfunnel.features.schema import QUERY_TOWERS, FeatureSchema, FeatureSpec, table_column
from recfunnel.features.text import TextEncoder, as_text, text_table
from recfunnel.utils.arrays import concat_ranges, searchsorted_segments, sorted_unique
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.text import is_missing

log = logging.getLogger(__name__)

# Sources whose ids are dense item indices: features of these may share the item-id table.
ITEM_SPACE = {"item_id", "history.item_id", "session.item_id", "social.friend_items"}
# Numeric sources a categorical feature must bucket (user.age / item.year: when their column is numeric).
NUMERIC_SOURCES = {"user.age", "item.year", "session.position", "history.age"}
FIXED_VOCAB = {"context.hour": 24, "context.weekday": 7}


def _session_starts(users: np.ndarray, ts: np.ndarray, gap_s: int) -> np.ndarray:
    """For events sorted by (user, time): the position where each event's session starts."""
    new_session = np.r_[True, (users[1:] != users[:-1]) | (np.diff(ts) > gap_s)] if len(ts) else np.zeros(0, bool)
    return np.maximum.accumulate(np.where(new_session, np.arange(len(ts)), 0)) if len(ts) else np.zeros(0, np.int64)


def _segments(keys: np.ndarray, size: int) -> np.ndarray:
    """(size+1,) CSR pointer of sorted non-negative integer ``keys``."""
    return np.searchsorted(keys, np.arange(size + 1), side="left").astype(np.int64)


def column_shape(values: pd.Series) -> str:
    """How a users/items column is shaped: "list" when every non-missing value is a list (a RecBole
    ``token_seq`` / ``float_seq`` field), "numeric" for a numeric dtype (bool excluded), "mixed" when
    only some values are lists, else "scalar" (strings, objects)."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return "scalar"
    if pd.api.types.is_numeric_dtype(values.dtype):
        return "numeric"
    if values.dtype != object:
        return "scalar"
    is_list = np.fromiter((isinstance(v, (list, tuple, np.ndarray)) for v in values), bool, len(values))
    present = ~values.isna().to_numpy() | is_list
    if is_list.any():
        return "list" if is_list[present].all() else "mixed"
    return "scalar"


def column_lists(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A list-valued column as CSR: (E+1,) int64 pointer and (nnz,) object values; missing rows are empty."""
    lists = [v if isinstance(v, (list, tuple, np.ndarray)) else () for v in values]
    lengths = np.fromiter((len(v) for v in lists), np.int64, len(lists))
    flat = np.empty(int(lengths.sum()), dtype=object)
    flat[:] = list(chain.from_iterable(lists))
    return np.r_[0, np.cumsum(lengths)].astype(np.int64), flat


def as_numbers(raw: np.ndarray | pd.Series) -> np.ndarray | None:
    """(n,) float64 of numeric values (missing → NaN), or None when some value is not a number."""
    try:
        return pd.to_numeric(pd.Series(raw, dtype=object), errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
    except (ValueError, TypeError):
        return None


class _Categorical:
    """Maps raw values of one categorical source to embedding rows (0 = missing / unknown)."""

    def __init__(self, spec: FeatureSpec, raw: np.ndarray | None, where: str, numeric: bool = True):
        """``raw``: the values a vocabulary is built from; ``numeric``: False for a column of a
        ``NUMERIC_SOURCES`` name that holds tokens (e.g. RecBole ML-1M's age:token), which may use one."""
        self.spec = spec
        if spec.source in ("user_id", "item_id") or spec.source in ITEM_SPACE:
            self.mode, self.size = "dense", None  # set by the pipeline (num_users / num_items)
        elif spec.source in FIXED_VOCAB:
            self.mode, self.size = "fixed", FIXED_VOCAB[spec.source]
        elif spec.buckets is not None:
            self.mode, self.size = "buckets", len(spec.buckets) + 2
            self.edges = np.asarray(spec.buckets, dtype=np.float64)
            # for an integer x: x >= e exactly when x >= ceil(e)
            self.int_edges = np.clip(np.ceil(self.edges), -2.0**62, 2.0**62).astype(np.int64)
        elif spec.source in NUMERIC_SOURCES and numeric:
            raise RecfunnelError(f"{where}: feature '{spec.name}' reads numeric source {spec.source}; "
                                 "give it 'buckets: [edges...]' (or make it kind: dense where allowed)")
        elif spec.hash_size is not None:
            self.mode, self.size = "hash", spec.hash_size
        else:
            self.mode = "vocab"
            _, text = self._distinct(raw)
            vocab = sorted({t for t in text if t})
            self.lookup = {v: i + 1 for i, v in enumerate(vocab)}
            self.size = len(vocab) + 1

    def _clean(self, v) -> str:
        v = str(v)
        return v[: self.spec.prefix] if self.spec.prefix else v

    def _distinct(self, raw: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """(n,) index of each value among the distinct ones (-1 = missing), and each distinct value as
        the cleaned string it is encoded by ("" = missing: None, NaN, or an empty string)."""
        codes, uniques = pd.factorize(np.asarray(raw, dtype=object), use_na_sentinel=True)
        return codes, [self._clean(v) if str(v) else "" for v in uniques]

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """(n,) raw values → (n,) int64 rows in [0, size); a missing value is row 0 (but in dense/fixed modes)."""
        if self.mode in ("dense", "fixed"):
            return raw.astype(np.int64)
        if self.mode == "buckets":
            if np.issubdtype(raw.dtype, np.integer):  # ages, positions: no float copy, no NaN
                return 1 + np.searchsorted(self.int_edges, raw, side="right")
            raw = raw.astype(np.float64)
            return np.where(np.isnan(raw), 0, 1 + np.digitize(raw, self.edges)).astype(np.int64)
        codes, text = self._distinct(raw)
        if self.mode == "hash":
            rows = [zlib.crc32(t.encode()) % self.size if t else 0 for t in text]
        else:
            rows = [self.lookup.get(t, 0) if t else 0 for t in text]
        return np.r_[np.asarray(rows, dtype=np.int64), 0][codes]  # code -1 (missing) → the appended 0


class _AsOfCounts:
    """Counts of train events per key (an item, or a group of items) strictly before a time.

    Args:
        keys: (E,) the train events' keys, in [0, num_keys).
        ts: (E,) their timestamps.
        t0, tau: time origin and decay constant (seconds) of the decayed count.
    """

    def __init__(self, keys: np.ndarray, ts: np.ndarray, num_keys: int, t0: int, tau: float):
        order = np.lexsort((ts, keys))
        self.ts, self.ptr, self.t0, self.tau = ts[order], _segments(keys[order], num_keys), t0, tau
        # decayed_cumsum[k] = sum over the first k events (key-major order) of exp((ts - t0) / tau)
        self.decayed_cumsum = np.r_[0.0, np.cumsum(np.exp((self.ts - t0) / tau))]

    def at(self, keys: np.ndarray, ts: np.ndarray, decayed: bool = False) -> np.ndarray:
        """(B,) float64: per (key, ts), the number of the key's events strictly before ts, or with
        ``decayed`` their sum of exp(-(ts - t_e) / tau)."""
        lo = self.ptr[keys]
        ends = searchsorted_segments(self.ts, lo, self.ptr[keys + 1], ts)
        count = ends - lo
        if not decayed:
            return count.astype(np.float64)
        total = self.decayed_cumsum[ends] - self.decayed_cumsum[lo]  # computed in log space below
        with np.errstate(divide="ignore"):
            return np.where(count > 0, np.exp(np.log(total) - (ts - self.t0) / self.tau), 0.0)


class FeaturePipeline:
    """Builds the towers' inputs for events (query side) and for (item, time) pairs (item side).

    Args:
        schema: the validated feature schema.
        data: events with dense indices and the protocol split.
        where: name of the schema's source (a file or config path) for error messages.

    ``text`` features are encoded once and cached in ``data.cache_dir / "text"`` (when the data has a
    cache folder; otherwise encoded every time).
    """

    def __init__(self, schema: FeatureSchema, data: SplitData, where: str = "features"):
        self.schema, self.where = schema, where
        self.text_cache = None if data.cache_dir is None else Path(data.cache_dir) / "text"
        self.num_users, self.num_items = data.num_users, data.num_items
        self.user_idx, self.item_idx, self.ts = data.user_idx, data.item_idx, data.ts
        self.split = data.split
        n = len(self.ts)

        # --- the user's own timeline (protocol order) -------------------------------------------
        self.order = data.order
        tl_user = self.user_idx[self.order]
        self.timeline_ptr = _segments(tl_user, self.num_users)  # (U+1,)
        pos_sorted = np.arange(n) - self.timeline_ptr[tl_user]
        self.timeline_pos = np.empty(n, dtype=np.int64)  # position of each row in its user's timeline
        self.timeline_pos[self.order] = pos_sorted
        self.session_start = np.empty(n, dtype=np.int64)  # index into `order` where the row's session starts
        self.session_start[self.order] = _session_starts(tl_user, self.ts[self.order], schema.session_gap_s)

        # --- train-split events per item and per user, sorted by time ----------------------------
        train = np.flatnonzero(self.split == 0)
        self.t0 = int(self.ts.min()) if n else 0
        tau = schema.popularity_half_life_days * 86400 / np.log(2)
        span = (self.ts.max() - self.t0) / tau if n else 0
        if span > 600:
            raise RecfunnelError(f"{where}: popularity_half_life_days={schema.popularity_half_life_days} is too short "
                                 f"for a dataset spanning {(self.ts.max() - self.t0) / 86400:.0f} days; raise it")
        self.tau = tau
        self.item_counts = _AsOfCounts(self.item_idx[train], self.ts[train], self.num_items, self.t0, tau)
        # per item column named by a popularity feature's `within`: each item's group, and the groups' counts
        self.item_groups: dict[str, tuple[np.ndarray, _AsOfCounts]] = {}
        for spec in schema.features:
            if spec.within is not None and spec.within not in self.item_groups:
                group = self._item_groups(spec, data)
                self.item_groups[spec.within] = group, _AsOfCounts(group[self.item_idx[train]], self.ts[train],
                                                                   int(group.max(initial=-1)) + 1, self.t0, tau)
        by_user = train[np.lexsort((self.ts[train], self.user_idx[train]))]
        self.user_train_ts, self.user_train_item = self.ts[by_user], self.item_idx[by_user]
        self.user_train_ptr = _segments(self.user_idx[by_user], self.num_users)

        # --- social graph (CSR of friends, both directions) --------------------------------------
        edges = data.tables.edges
        if edges is not None and len(edges):
            uid = data.tables.users["user_id"].to_numpy()
            src = np.searchsorted(uid, edges["src"].to_numpy())
            dst = np.searchsorted(uid, edges["dst"].to_numpy())
            a, b = np.r_[src, dst], np.r_[dst, src]
            pairs = sorted_unique(a * self.num_users + b)
            a, b = pairs // self.num_users, pairs % self.num_users
            self.friend_ptr, self.friends = _segments(a, self.num_users), b
        else:
            self.friend_ptr, self.friends = np.zeros(self.num_users + 1, np.int64), np.zeros(0, np.int64)

        # --- static attributes (users / items columns) and categorical encoders ------------------
        # only the columns the schema reads: a dataset need not have the others. Per user / item:
        self.encoders: dict[str, _Categorical] = {}
        self.static_codes: dict[str, np.ndarray] = {}  # feature → (E,) rows, or (nnz,) rows of a list column
        self.list_ptr: dict[str, np.ndarray] = {}  # list-valued source → (E+1,) CSR pointer into those rows
        self.dense_values: dict[str, np.ndarray] = {}  # dense column feature → (E,) float64, NaN → 0
        self.text_vectors: dict[str, np.ndarray] = {}  # text feature → (R, E) float32, row 0 = no text
        self.request_text: dict[str, np.ndarray] = {}  # a request view's texts the table lacks (for_request)
        self._text_encoder: TextEncoder | None = None
        columns: dict[str, pd.Series] = {}
        for spec in schema.features:
            if table_column(spec.source) is not None:
                if spec.source not in columns:
                    columns[spec.source] = self._source_column(spec, data)
                self._column_feature(spec, columns[spec.source])
            elif spec.kind == "text":
                raise RecfunnelError(f"{where}: feature '{spec.name}' is kind text but reads {spec.source}; a text "
                                     "feature reads a column: user.<column> or item.<column>")
            elif spec.kind != "dense":
                enc = _Categorical(spec, None, where)
                if enc.mode == "dense":
                    enc.size = self.num_users if spec.source == "user_id" else self.num_items
                self.encoders[spec.name] = enc
        # item.genres' CSR under its historical name (every feature of item.genres shares it)
        self.genre_ptr = self.list_ptr.get("item.genres", np.zeros(self.num_items + 1, np.int64))
        self._check_shared_tables()

    def _source_column(self, spec: FeatureSpec, data: SplitData) -> pd.Series:
        """The users/items column feature ``spec`` reads, in dense-index order; absent, an error listing
        the columns there are."""
        table, col = table_column(spec.source)
        df = getattr(data.tables, table)
        if col not in df.columns:
            raise RecfunnelError(
                f"{self.where}: feature '{spec.name}' reads {spec.source}, but this dataset's {table} table has no "
                f"column '{col}' (its columns: {', '.join(map(str, df.columns))}); remove the feature or choose a "
                f"features config this dataset fits (features=ml100k_seq needs only ids and history; features=auto "
                f"builds one from the columns there are)")
        return df[col]

    def _column_feature(self, spec: FeatureSpec, values: pd.Series) -> None:
        """Encode one ``user.<column>`` / ``item.<column>`` feature once per user / item: its
        ``static_codes`` (and ``list_ptr`` for multi_hot), or its ``dense_values``."""
        at = f"{self.where}: feature '{spec.name}' reads {spec.source}"
        if spec.kind == "text":
            self._text_feature(spec, values, at)
            return
        shape = column_shape(values)
        if shape == "mixed":
            raise RecfunnelError(f"{at}, whose column holds lists in some rows only; make every value a list "
                                 f"(a RecBole field NAME:token_seq) or none")
        if spec.kind == "multi_hot":
            if shape != "list":
                raise RecfunnelError(f"{at}, but that column does not hold lists (a RecBole field NAME:token_seq, "
                                     f"e.g. genres:token_seq); make the feature kind: categorical")
            self.list_ptr[spec.source], raw = column_lists(values)
        elif shape == "list":
            raise RecfunnelError(f"{at}, whose column holds lists; make the feature kind: multi_hot")
        else:
            raw = values.to_numpy(dtype=object)
        if spec.kind == "dense" or spec.buckets is not None:
            numbers = as_numbers(raw)
            if numbers is None:
                what = "kind: dense" if spec.kind == "dense" else "buckets"
                raise RecfunnelError(f"{at}, whose values are not all numbers; {what} needs a numeric column (a "
                                     f"RecBole field NAME:float): drop '{what}' to use a vocabulary of its values")
            raw = numbers
        if spec.kind == "dense":
            x = np.nan_to_num(raw, nan=0.0)
            if spec.transform == "log1p" and (x <= -1).any():
                raise RecfunnelError(f"{at} with transform: log1p, but the column has values <= -1 (min {x.min():g}); "
                                     f"use transform: none")
            self.dense_values[spec.name] = x
            return
        enc = _Categorical(spec, raw, self.where, numeric=shape == "numeric")
        self.encoders[spec.name] = enc
        self.static_codes[spec.name] = enc.encode(raw)

    def _text_feature(self, spec: FeatureSpec, values: pd.Series, at: str) -> None:
        """Embed a text column once per distinct text: ``text_vectors`` and each entity's row."""
        if column_shape(values) == "numeric":
            raise RecfunnelError(f"{at}, whose values are numbers, not text; make the feature kind: dense or categorical")
        if self._text_encoder is None:
            self._text_encoder = TextEncoder.from_config(self.schema.text_encoder_config,
                                                         where=f"{self.where}: text_encoder")
        rows, table, missing = text_table(values.to_numpy(dtype=object), self._text_encoder, self.text_cache)
        if missing:
            log.info("%s: %d of %d values have no text; they get the learned 'no text' vector", at, missing, len(values))
        self.static_codes[spec.name], self.text_vectors[spec.name] = rows, table

    def _entity(self, table: str, rows, item_idx) -> np.ndarray:
        """(B,) users (of event ``rows``), the events themselves, or items (``item_idx``, else the
        events' own items)."""
        if table == "users":
            return self.user_idx[rows]
        if table == "interactions":
            return np.asarray(rows, dtype=np.int64)
        return self.item_idx[rows] if item_idx is None else item_idx

    # ------------------------------------------------------------------------------------------
    @property
    def num_embeddings(self) -> dict[str, int]:
        """Rows of each embedding table, keyed by table name (the owning feature's name)."""
        return {name: enc.size for name, enc in self.encoders.items() if enc.spec.table is None}

    def _check_shared_tables(self) -> None:
        for name, enc in self.encoders.items():
            owner = enc.spec.table
            if owner is None:
                continue
            same_space = enc.spec.source in ITEM_SPACE and self.encoders[owner].spec.source in ITEM_SPACE
            if not same_space and enc.size != self.encoders[owner].size:
                raise RecfunnelError(f"{self.where}: feature '{name}' (source {enc.spec.source}) cannot share table "
                                     f"'{owner}' (source {self.encoders[owner].spec.source}): their ids differ")

    # ------------------------------------------------------------------------------------------
    def query(self, rows: np.ndarray, tower: str) -> TowerInput:
        """Inputs of the 'user' or 'context' tower for event ``rows`` (B,), as of each event."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._tower(tower, rows, None, None)

    def queries(self, rows: np.ndarray) -> dict[str, TowerInput]:
        """Inputs of every query tower (``QUERY_TOWERS``) for event ``rows`` (B,), as of each event."""
        return {t: self.query(rows, t) for t in QUERY_TOWERS}

    def items(self, item_idx: np.ndarray, ts: np.ndarray | int) -> TowerInput:
        """Inputs of the 'item' tower for items (B,) as of times ``ts`` (B,) or one time for all."""
        item_idx = np.asarray(item_idx, dtype=np.int64)
        ts = np.broadcast_to(np.asarray(ts, dtype=np.int64), item_idx.shape)
        return self._tower("item", None, item_idx, ts)

    def history_events(self, rows: np.ndarray, max_len: int, session_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The user's last ``max_len`` events strictly before each row (oldest first), as event rows
        (sum L,) and per-row lengths (B,); ``session_only`` keeps those of the row's session."""
        start_of_user = self.timeline_ptr[self.user_idx[rows]]
        end = start_of_user + self.timeline_pos[rows]  # exclusive, index into `order`
        first = self.session_start[rows] if session_only else start_of_user
        start = np.maximum(first, end - max_len)
        return self.order[concat_ranges(start, end)], end - start

    def for_request(self, user_idx: int, extra_items: np.ndarray, extra_ts: np.ndarray, now: int,
                    context: Mapping[str, Any] | None = None) -> tuple[FeaturePipeline, int]:
        """A view of this pipeline in which user ``user_idx`` has, after all their known events, the
        events ``extra_items`` at ``extra_ts`` and then a query event at ``now``; returns the view and
        that query event's row, to pass to ``query``/``history_events`` of the view.

        ``context``: the query event's own values of interactions columns, {column: value} (a search
        query, the cell the user is in), for the schema's ``context.<column>`` features; a column not
        given has no value (as the new events never do). A text the text table does not hold is
        encoded now: the view's ``request_text`` {feature: (Q, E)} holds its vector, and the model reads
        it inside ``features.embedding.request_texts``.

        Only the user's own timeline is rebuilt (O(their events)); everything learned from the train
        split (popularity, friends' items, vocabularies) is shared with this pipeline, so serving a
        request reads features exactly as training read them.
        """
        view = copy.copy(self)
        lo, hi = self.timeline_ptr[user_idx], self.timeline_ptr[user_idx + 1]
        known = self.order[lo:hi]
        items = np.r_[self.item_idx[known], np.asarray(extra_items, np.int64), 0]
        ts = np.r_[self.ts[known], np.asarray(extra_ts, np.int64), now]
        n = len(items)
        view.item_idx, view.ts = items, ts
        view.user_idx = np.full(n, user_idx, dtype=np.int64)
        view.order = np.arange(n)
        view.timeline_pos = np.arange(n)
        view.timeline_ptr = np.zeros(self.num_users + 1, dtype=np.int64)
        view.timeline_ptr[user_idx + 1:] = n
        view.session_start = _session_starts(view.user_idx, ts, self.schema.session_gap_s)
        # context.<column> values of the view's events: the known ones', then none (row 0) for the new
        # events; the request's own from `context`
        view.static_codes, view.dense_values, view.request_text = dict(self.static_codes), dict(self.dense_values), {}
        context = dict(context or {})
        unknown = set(context) - set(self.context_columns)
        if unknown:
            raise RecfunnelError(f"context has key(s) {sorted(unknown)} that no feature of schema '{self.schema.name}' "
                                 f"reads; the context columns it reads: {self.context_columns or 'none'}")
        for spec in self.schema.features:
            col = table_column(spec.source)
            if col is None or col[0] != "interactions":
                continue
            values = view.dense_values if spec.name in self.dense_values else view.static_codes
            values[spec.name] = np.r_[values[spec.name][known], np.zeros(n - len(known), values[spec.name].dtype)]
            if col[1] in context:
                values[spec.name][-1] = self._request_value(view, spec, context[col[1]])
        return view, n - 1

    @functools.cached_property
    def context_columns(self) -> list[str]:
        """The interactions columns the schema's ``context.<column>`` features read, sorted."""
        return sorted({table_column(f.source)[1] for f in self.schema.features
                       if table_column(f.source) is not None and table_column(f.source)[0] == "interactions"})

    def _request_value(self, view: FeaturePipeline, spec: FeatureSpec, value: Any) -> float | int:
        """The code (or dense value) of a request's own context ``value`` for feature ``spec``."""
        at = f"context[{table_column(spec.source)[1]!r}] (feature '{spec.name}')"
        if spec.kind == "dense":
            number = as_numbers(np.array([value], dtype=object))
            if number is None:
                raise RecfunnelError(f"{at} must be a number, got {value!r}")
            return float(np.nan_to_num(number[0], nan=0.0))
        if spec.kind != "text":
            return int(self.encoders[spec.name].encode(np.array([value], dtype=object))[0])
        if is_missing([value])[0]:
            return 0
        view.request_text[spec.name] = self._text_encoder.encode_one(as_text(value))
        return len(self.text_vectors[spec.name])

    def catalogue_time(self) -> int:
        """The time the whole catalogue is scored at: just after the last train event."""
        return int(self.ts[self.split == 0].max()) + 1

    def dense_stats(self, tower: str, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of a tower's dense features over train events (``rows`` default: all train)."""
        rows = np.flatnonzero(self.split == 0) if rows is None else rows
        if tower == "item":
            dense = self._dense("item", None, self.item_idx[rows], self.ts[rows])
        else:
            dense = self._dense(tower, rows, None, None)
        if dense.shape[1] == 0:
            return np.zeros(0, np.float32), np.ones(0, np.float32)
        return dense.mean(0), dense.std(0)

    def tower_dense_stats(self, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``dense_stats`` of the query towers and the item tower over event ``rows``."""
        return {t: self.dense_stats(t, rows) for t in (*QUERY_TOWERS, "item")}

    # ------------------------------------------------------------------------------------------
    def _tower(self, tower: str, rows, item_idx, ts) -> TowerInput:
        keys, values, lengths = [], [], []
        for spec in self.schema.tower(tower, "sparse"):
            v, l = self._sparse(spec, rows, item_idx, ts)
            keys.append(spec.name)
            values.append(v)
            lengths.append(l)
        dense = self._dense(tower, rows, item_idx, ts)
        return TowerInput(make_kjt(keys, values, lengths), torch.from_numpy(dense))

    def _dense(self, tower: str, rows, item_idx, ts) -> np.ndarray:
        cols = []
        for spec in self.schema.tower(tower, "dense"):
            x = self._dense_raw(spec, rows, item_idx, ts).astype(np.float64)
            cols.append(np.log1p(x) if spec.transform == "log1p" else x)
        b = len(rows) if rows is not None else len(item_idx)
        return np.stack(cols, 1).astype(np.float32) if cols else np.zeros((b, 0), np.float32)

    def _dense_raw(self, spec: FeatureSpec, rows, item_idx, ts) -> np.ndarray:
        """(B,) raw values (before ``transform``) of one dense feature for events ``rows`` or items ``item_idx``."""
        s = spec.source
        if spec.name in self.dense_values:
            return self.dense_values[spec.name][self._entity(table_column(s)[0], rows, item_idx)]
        if s == "user.activity":
            return self.timeline_pos[rows]
        if s == "session.position":
            return self.timeline_pos[rows] - (self.session_start[rows] - self.timeline_ptr[self.user_idx[rows]])
        if s in ("item.pop_count", "item.pop_decayed"):
            if item_idx is None:
                item_idx, ts = self.item_idx[rows], self.ts[rows]
            decayed = s == "item.pop_decayed"
            value = self.item_counts.at(item_idx, ts, decayed)
            if spec.within is None:
                return value
            group, counts = self.item_groups[spec.within]
            total = counts.at(group[item_idx], ts, decayed)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(total > 0, value / total, 0.0)
        raise RecfunnelError(f"{self.where}: feature '{spec.name}': source {s} cannot be dense")

    def _item_groups(self, spec: FeatureSpec, data: SplitData) -> np.ndarray:
        """(I,) each item's group: its value of the items column ``spec.within`` as a code ≥ 0 (a
        missing value is a group of its own)."""
        if spec.within not in data.tables.items:
            raise RecfunnelError(f"{self.where}: feature '{spec.name}' has within: {spec.within}, which is not a "
                                 f"column of the items table; its columns: {', '.join(map(str, data.tables.items.columns))}")
        codes, _ = pd.factorize(data.tables.items[spec.within], use_na_sentinel=False)
        return codes.astype(np.int64)

    def _sparse(self, spec: FeatureSpec, rows, item_idx, ts) -> tuple[np.ndarray, np.ndarray]:
        """(values, lengths) of one sparse feature for the batch."""
        s, enc = spec.source, self.encoders.get(spec.name)
        if s == "user_id":
            return self.user_idx[rows], np.ones(len(rows), np.int64)
        if spec.name in self.static_codes:  # a users / items column
            idx = self._entity(table_column(s)[0], rows, item_idx)
            codes = self.static_codes[spec.name]
            if spec.kind == "multi_hot":
                lo, hi = self.list_ptr[s][idx], self.list_ptr[s][idx + 1]
                return codes[concat_ranges(lo, hi)], hi - lo
            return codes[idx], np.ones(len(idx), np.int64)
        if s in ("context.hour", "context.weekday"):
            t = self.ts[rows]
            v = (t // 3600) % 24 if s == "context.hour" else (t // 86400 + 3) % 7  # 1970-01-01 was a Thursday
            return v.astype(np.int64), np.ones(len(rows), np.int64)
        if s == "session.position":
            return enc.encode(self._dense_raw(spec, rows, None, None)), np.ones(len(rows), np.int64)
        if s in ("history.item_id", "history.age", "session.item_id"):
            events, lengths = self.history_events(rows, spec.max_len, session_only=s == "session.item_id")
            if s == "history.age":
                return enc.encode(np.repeat(self.ts[rows], lengths) - self.ts[events]), lengths
            return self.item_idx[events], lengths
        if s == "social.friend_items":
            return self._friend_items(spec, rows)
        if item_idx is None:  # item features of the event's own item
            item_idx = self.item_idx[rows]
        if s == "item_id":
            return item_idx, np.ones(len(item_idx), np.int64)
        raise RecfunnelError(f"{self.where}: feature '{spec.name}': source {s} cannot be {spec.kind}")

    def _friend_items(self, spec: FeatureSpec, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each friend's last few train items strictly before the event (at most ``max_len`` in all)."""
        users, ts = self.user_idx[rows], self.ts[rows]
        f_lo, f_hi = self.friend_ptr[users], self.friend_ptr[users + 1]
        friend = self.friends[concat_ranges(f_lo, f_hi)]  # (sum F,)
        when = np.repeat(ts, f_hi - f_lo)
        end = searchsorted_segments(self.user_train_ts, self.user_train_ptr[friend], self.user_train_ptr[friend + 1], when)
        start = np.maximum(self.user_train_ptr[friend], end - self.schema.friend_items_per_friend)
        per_friend = end - start
        items = self.user_train_item[concat_ranges(start, end)]
        # regroup per event and keep at most max_len
        event_of_friend = np.repeat(np.arange(len(rows)), f_hi - f_lo)
        per_event = np.bincount(event_of_friend, weights=per_friend, minlength=len(rows)).astype(np.int64)
        ev_lo = np.r_[0, np.cumsum(per_event)[:-1]]
        keep = np.minimum(per_event, spec.max_len)
        return items[concat_ranges(ev_lo + per_event - keep, ev_lo + per_event)], keep
