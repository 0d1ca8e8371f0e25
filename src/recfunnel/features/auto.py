"""``features=auto``: a feature schema built from a dataset's own columns, with no YAML to write.

``resolve_schema(features_cfg, data, where)`` is what a DataModule calls: an ordinary schema config
(``auto`` absent or false) is validated as it is; with ``auto: true`` the schema is first built by
``auto_schema(data, options)`` (a mapping of the same shape as ``configs/features/*.yaml``) and then
validated by ``FeatureSchema.from_config``. The same data and options always give the same schema,
so a finished run is rebuilt exactly from its saved config (``Recommender.from_run``, the funnel).

What ``auto_schema`` builds (feature names in brackets; in the schema, tower by tower: user,
context, item, each in this order):

- ids: ``user_id`` [user_id] and ``item_id`` [item_id], ``dim: id_dim``;
- the ordered history: ``history.item_id`` [hist_items] (a sequence of ``history_len`` items sharing
  the item_id table) and ``history.age`` [hist_age] (buckets < 1 min, < 1 h, < 1 day, < 1 week,
  < 30 days, older, as in ml100k.yaml);
- the session and its context: ``session.item_id`` [session_items] (``session_len`` items sharing the
  item_id table), ``session.position`` [session_pos] (buckets 1, 2, 4, ..., 64), ``context.hour``
  [hour] and ``context.weekday`` [weekday] (each skipped when it is one value over all train events,
  as for a dataset without timestamps, whose ``ts`` is the row position);
- ``social.friend_items`` [friend_items] when the dataset has a social graph (``edges``);
- counts, dense with ``transform: log1p``: ``user.activity`` [user_activity]; for a ranker's schema
  (``scored_at_query_time``) also ``item.pop_count`` [item_pop], ``item.pop_decayed``
  [item_pop_decayed] (a retriever's may not read them: ``check_item_time_features``);
- every other column ``C`` of the users / items table, as ``user.C`` [user_C] / ``item.C`` [item_C]
  (characters other than letters, digits and ``_`` become ``_``; a clash gets ``_2``, ``_3``...):

  * a string (token) column: categorical with a vocabulary (``vocab``) when it has at most
    ``max_vocab`` distinct values, else hashed into ``hash_size`` = the next power of two
    >= 2 x distinct values, at most ``max_hash_size``; missing values (empty, NaN) are row 0;
  * a numeric (float) column: categorical with ``buckets`` at the weighted quantiles k /
    ``numeric_buckets`` (k = 1 .. numeric_buckets - 1) of its values, each user / item weighted by
    its number of train events (so the buckets split the training examples evenly; users / items
    without train events count once each when no row has one); duplicate edges and an edge at the
    minimum are dropped; NaN is row 0;
  * a list column (RecBole ``token_seq`` / ``float_seq``): ``multi_hot`` over its elements, tokens by
    vocabulary or hashing as above, numbers by quantile buckets as above (each element weighted by
    its row's train events).

  Skipped, and listed with the reason in one INFO line: a column whose every value is missing (or
  every list empty), a constant column (one value, missing counted as a value; for lists, one list),
  an id-like token column: one of at least ``ID_LIKE_MIN`` values in which fewer than 2 rows share
  a value on average (a title, an e-mail, a full zip code: user_id / item_id already learn what it
  could, and its table would be as large), a column holding lists in some rows only, a
  column named like a computed source (users' ``activity``, items' ``pop_count`` / ``pop_decayed``),
  and the synthetic generator's answer keys (``recfunnel.data.synthetic.ANSWER_KEY_COLUMNS``:
  ``users.cluster`` / ``price_sensitivity``, ``items.cluster`` / ``popularity`` / ``appeal``), the
  planted truth, which as features would leak it (a real dataset's column of one of those names is
  skipped too; the INFO line says so, and a feature written in ``features`` with a kind and source
  still reads it). Only the users and items tables are read: no column of the interactions
  (``rating``, labels such as ``purchase`` / ``revenue``) ever becomes a feature.

Embedding widths: ``id_dim`` for the ids (whose table the history and session share), 8 for
hist_age, 4 for session_pos, hour and weekday; a column's width is
``min(max_dim, max(4, round(1.6 * n ** 0.56)))`` with n its number of distinct values (tokens) or of
buckets (numbers), the rule of thumb of fastai's ``emb_sz_rule``.

Options (``configs/features/auto.yaml``; defaults in ``AUTO_DEFAULTS``): ``max_vocab``,
``max_hash_size``, ``numeric_buckets``, ``history_len``, ``session_len``, ``friend_items_len``,
``id_dim``, ``max_dim``; the schema's own ``name``, ``session_gap_s``, ``popularity_half_life_days``,
``friend_items_per_friend`` pass through; ``features`` (optional) edits the built schema: a feature
given there with a ``kind`` or ``source`` replaces the built feature of that name (or is added when
there is none); without either, its keys are set on the built feature (a key set to null is
removed: ``{buckets: null, hash_size: 1024}``); ``NAME: null`` drops the built feature NAME.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.data.synthetic import ANSWER_KEY_COLUMNS
from recfunnel.features.pipeline import as_numbers, column_lists, column_shape
from recfunnel.features.schema import COMPUTED, POPULARITY_SOURCES, QUERY_TOWERS, FeatureSchema
from recfunnel.utils.errors import RecfunnelError

log = logging.getLogger(__name__)

AUTO_DEFAULTS: dict[str, int] = {
    "max_vocab": 10_000,  # a token column with more distinct values is hashed
    "max_hash_size": 1 << 18,  # the largest hashed table
    "numeric_buckets": 8,  # quantile buckets of a numeric column (at most; duplicate edges dropped)
    "history_len": 50,  # hist_items / hist_age length
    "session_len": 20,  # session_items length
    "friend_items_len": 20,  # friend_items length (datasets with a social graph)
    "id_dim": 32,  # width of the user_id and item_id tables
    "max_dim": 32,  # widest table of a column feature
}
SCHEMA_KEYS = ("name", "session_gap_s", "popularity_half_life_days", "friend_items_per_friend")
AUTO_KEYS = ("auto", *AUTO_DEFAULTS, "features")  # what resolve_schema strips before validating
ID_LIKE_MIN = 50  # a token column of at least this many values, fewer than 2 rows per value on average, is id-like
HIST_AGE_BUCKETS = [60, 3600, 86400, 604800, 2592000]  # < 1 min, < 1 h, < 1 day, < 1 week, < 30 days, older
SESSION_POS_BUCKETS = [1, 2, 4, 8, 16, 32, 64]

_logged: set[str] = set()  # schemas already logged by this process (each is logged once)


def resolve_schema(features_cfg: Mapping[str, Any], data: SplitData, where: str = "features",
                   scored_at_query_time: bool = False) -> FeatureSchema:
    """The validated schema of a ``features`` config for ``data``.

    ``auto`` absent: ``FeatureSchema.from_config(features_cfg)`` exactly; ``auto: false``: the same
    without that key; ``auto: true``: the schema ``auto_schema`` builds from ``data``'s columns with
    the config's options, validated, logged at INFO once per process. ``where`` names the config in
    errors.

    ``scored_at_query_time``: the schema is a ranker's, which computes every candidate's features as
    of the query's time; only such a schema may read an item's popularity as of the event
    (``check_item_time_features``), and only its auto schema has it.
    """
    cfg = _plain(features_cfg)
    if "auto" not in cfg:
        schema = FeatureSchema.from_config(features_cfg, where=where)
    elif not cfg.pop("auto"):
        schema = FeatureSchema.from_config(cfg, where=where)
    else:
        built, skipped, distinct = _build(data, cfg, where, scored_at_query_time)
        schema = FeatureSchema.from_config(built, where=f"{where} (built by features=auto)")
        _log_once(schema, skipped, distinct, data)
    if not scored_at_query_time:
        check_item_time_features(schema, where)
    return schema


def check_item_time_features(schema: FeatureSchema, where: str = "features") -> None:
    """Refuse an item-tower feature whose value depends on the time it is read at (an item's
    popularity as of the event: ``POPULARITY_SOURCES``) in a retriever's schema.

    A two-tower retriever trains against in-batch negatives, each item read as of its *own* event's
    time: a time-dependent item feature then tells the positive by when it happened rather than by
    taste, training learns that, and the index, which reads every item at one time, cannot use it
    (ML-100K full schema: validation NDCG@10 0.062 with popularity in the item tower, 0.139 without).
    A ranker reads every candidate as of the query's time, so its schema may have them.
    """
    bad = [f for f in schema.tower("item") if f.source in POPULARITY_SOURCES]
    if bad:
        f = bad[0]
        raise RecfunnelError(
            f"{where}: feature '{f.name}' (source {f.source}) reads an item's popularity as of each event, in a "
            "retriever's item tower: in-batch training reads each item at its own event's time, so the model "
            "learns to tell the positive by when it happened, which the index (every item at one time) cannot "
            "use. Remove it from this schema; a ranker's schema may read it (it scores candidates as of the query)")


def auto_schema(data: SplitData, options: Mapping[str, Any], where: str = "features",
                scored_at_query_time: bool = False) -> dict[str, Any]:
    """A schema config mapping (the shape of ``configs/features/*.yaml``) for ``data``'s columns; see
    the module docstring. ``options``: the keys of ``AUTO_DEFAULTS`` and ``SCHEMA_KEYS``, ``features``
    (edits of the built features) and ``auto``; any other key is an error naming ``where``;
    ``scored_at_query_time`` as in ``resolve_schema``."""
    return _build(data, _plain(options), where, scored_at_query_time)[0]


# -- building --------------------------------------------------------------------------------------
def _build(data: SplitData, cfg: dict[str, Any], where: str, scored_at_query_time: bool = False
           ) -> tuple[dict[str, Any], list[str], dict[str, int]]:
    """(schema config, skipped columns as "table.column (reason)", {column feature: distinct values})
    for ``data`` and the auto ``cfg`` (item popularity only when ``scored_at_query_time``)."""
    opts = _options(cfg, where)
    out: dict[str, Any] = {"name": str(cfg.get("name", "auto"))}
    out.update({k: cfg[k] for k in SCHEMA_KEYS[1:] if k in cfg})
    feats = _computed_features(data, opts, scored_at_query_time)
    skipped: list[str] = []
    distinct: dict[str, int] = {}
    for table, prefix in (("users", "user"), ("items", "item")):
        weights = _train_counts(data, table)
        df = getattr(data.tables, table)
        for col in df.columns:
            if col == f"{prefix}_id":
                continue
            if f"{table}.{col}" in ANSWER_KEY_COLUMNS:
                skipped.append(f"{table}.{col} (answer key of the synthetic generator, not a feature)")
                continue
            spec, note = _column_feature(prefix, str(col), df[col], weights, opts)
            if spec is None:
                skipped.append(f"{table}.{col} ({note})")
            else:
                name = _unique_name(f"{prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', str(col))}", feats)
                feats[name], distinct[name] = spec, note
    towers = (*QUERY_TOWERS, "item")
    feats = dict(sorted(feats.items(), key=lambda kv: towers.index(kv[1]["tower"])))  # stable: tower by tower
    out["features"] = _edit(feats, cfg.get("features") or {}, where)
    return out, skipped, distinct


def _options(cfg: Mapping[str, Any], where: str) -> dict[str, int]:
    """The auto options of ``cfg`` over ``AUTO_DEFAULTS``; unknown keys and non-positive sizes are errors."""
    unknown = set(cfg) - set(AUTO_KEYS) - set(SCHEMA_KEYS)
    if unknown:
        raise RecfunnelError(f"{where}: unknown key(s) {sorted(unknown)} for features=auto; valid keys: "
                             f"{', '.join(sorted({*AUTO_KEYS, *SCHEMA_KEYS}))}")
    opts = dict(AUTO_DEFAULTS)
    for key in AUTO_DEFAULTS:
        value = cfg.get(key, opts[key])
        least = 2 if key == "numeric_buckets" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise RecfunnelError(f"{where}: {key} must be an integer >= {least}, got {value!r}")
        opts[key] = value
    if not isinstance(cfg.get("features") or {}, Mapping):
        raise RecfunnelError(f"{where}: features must be a mapping of feature edits, got {cfg['features']!r}")
    return opts


def _computed_features(data: SplitData, opts: Mapping[str, int], scored_at_query_time: bool = False
                       ) -> dict[str, dict[str, Any]]:
    """Ids, history, session, context, social and count features (see the module docstring)."""
    hist, sess = opts["history_len"], opts["session_len"]
    f: dict[str, dict[str, Any]] = {
        "user_id": {"tower": "user", "kind": "categorical", "source": "user_id", "dim": opts["id_dim"]},
        "user_activity": {"tower": "user", "kind": "dense", "source": "user.activity", "transform": "log1p"},
        "hist_items": {"tower": "user", "kind": "sequence", "source": "history.item_id", "table": "item_id",
                       "max_len": hist},
        "hist_age": {"tower": "user", "kind": "sequence", "source": "history.age", "buckets": HIST_AGE_BUCKETS,
                     "max_len": hist, "dim": 8},
        "session_items": {"tower": "user", "kind": "sequence", "source": "session.item_id", "table": "item_id",
                          "max_len": sess},
    }
    edges = data.tables.edges
    if edges is not None and len(edges):
        f["friend_items"] = {"tower": "user", "kind": "multi_hot", "source": "social.friend_items", "table": "item_id",
                             "max_len": opts["friend_items_len"]}
    f["session_pos"] = {"tower": "context", "kind": "categorical", "source": "session.position",
                        "buckets": SESSION_POS_BUCKETS, "dim": 4}
    ts = data.ts[data.split == TRAIN]
    if _varies((ts // 3600) % 24):
        f["hour"] = {"tower": "context", "kind": "categorical", "source": "context.hour", "dim": 4}
    if _varies(ts // 86400 % 7):
        f["weekday"] = {"tower": "context", "kind": "categorical", "source": "context.weekday", "dim": 4}
    f["item_id"] = {"tower": "item", "kind": "categorical", "source": "item_id", "dim": opts["id_dim"]}
    if scored_at_query_time:  # a ranker's: see check_item_time_features
        f["item_pop"] = {"tower": "item", "kind": "dense", "source": "item.pop_count", "transform": "log1p"}
        f["item_pop_decayed"] = {"tower": "item", "kind": "dense", "source": "item.pop_decayed", "transform": "log1p"}
    return f


def _train_counts(data: SplitData, table: str) -> np.ndarray:
    """(E,) float64 train events per user (``table`` "users") or per item, in dense-index order."""
    train = data.split == TRAIN
    idx, size = (data.user_idx, data.num_users) if table == "users" else (data.item_idx, data.num_items)
    return np.bincount(idx[train], minlength=size).astype(np.float64)


def _column_feature(prefix: str, col: str, values: pd.Series, weights: np.ndarray, opts: Mapping[str, int]
                    ) -> tuple[dict[str, Any] | None, Any]:
    """(feature, its number of distinct values or buckets) of column ``col`` of the users (``prefix``
    "user") or items table, or (None, why not)."""
    source = f"{prefix}.{col}"
    if source in COMPUTED:
        return None, f"named like the computed source {source}; rename the column to use it"
    shape = column_shape(values)
    tower = "user" if prefix == "user" else "item"
    if shape == "mixed":
        return None, "lists in some rows only"
    if shape == "list":
        ptr, flat = column_lists(values)
        if not len(flat):
            return None, "every list empty"
        if len({tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else () for v in values}) < 2:
            return None, "constant"
        numbers = as_numbers(flat) if all(isinstance(v, (int, float, np.number)) for v in flat[:1000]) else None
        spec, reason = (_bucketed(numbers, np.repeat(weights, np.diff(ptr)), opts) if numbers is not None
                        else _tokens(flat, opts, id_like=False))
        return ({"tower": tower, "kind": "multi_hot", "source": source, **spec} if spec else None), reason
    missing = values.isna().to_numpy()
    if missing.all():
        return None, "every value missing"
    if shape == "numeric":
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if len(np.unique(x[~missing])) + missing.any() < 2:
            return None, "constant"
        spec, reason = _bucketed(x, weights, opts)
    else:
        spec, reason = _tokens(values.to_numpy(dtype=object), opts, id_like=True)
    return ({"tower": tower, "kind": "categorical", "source": source, **spec} if spec else None), reason


def _tokens(raw: np.ndarray, opts: Mapping[str, int], id_like: bool) -> tuple[dict[str, Any] | None, Any]:
    """(``hash_size`` when hashed, and ``dim``; distinct values) for (n,) token values, or (None, why not)."""
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    text = np.array([str(v) for v in uniques], dtype=object)
    present = codes >= 0
    present[present] = text[codes[present]] != ""
    distinct = len(np.unique(codes[present]))
    if distinct == 0:
        return None, "every value missing"
    if distinct + (not present.all()) < 2:
        return None, "constant"
    if id_like and present.sum() >= ID_LIKE_MIN and 2 * distinct > present.sum():
        return None, f"id-like: {distinct} values over {int(present.sum())} rows"
    spec: dict[str, Any] = {}
    if distinct > opts["max_vocab"]:
        spec["hash_size"] = min(opts["max_hash_size"], 1 << math.ceil(math.log2(2 * distinct)))
    spec["dim"] = _dim(distinct, opts)
    return spec, distinct


def _bucketed(x: np.ndarray, weights: np.ndarray, opts: Mapping[str, int]) -> tuple[dict[str, Any] | None, Any]:
    """(``buckets`` and ``dim``; buckets) for (n,) numbers with (n,) weights (train events), or (None, why not)."""
    edges = quantile_edges(x, weights, opts["numeric_buckets"])
    if edges is None:
        return None, "every value missing"
    return {"buckets": edges, "dim": _dim(len(edges) + 1, opts)}, len(edges) + 1


def quantile_edges(x: np.ndarray, weights: np.ndarray, buckets: int) -> list[float] | None:
    """Increasing bucket edges at the weighted quantiles k / ``buckets`` (k = 1 .. buckets - 1) of the
    non-NaN ``x`` (n,) with ``weights`` (n,): each edge is the smallest value whose cumulative weight
    exceeds k / buckets, so about that share of the weight lies below it. Duplicate edges and an edge
    at the minimum are dropped (a constant column gets the single edge [min]: missing or not). All
    weights zero counts every value once. None when every value is NaN."""
    keep = ~np.isnan(x)
    x, w = x[keep], weights[keep].astype(np.float64)
    if not len(x):
        return None
    if w.sum() <= 0:
        w = np.ones_like(x)
    order = np.argsort(x, kind="stable")
    x, cum = x[order], np.cumsum(w[order]) / w.sum()
    at = np.searchsorted(cum, np.arange(1, buckets) / buckets, side="right")
    edges = np.unique(x[np.minimum(at, len(x) - 1)])
    edges = edges[edges > x[0]]
    return [float(e) for e in edges] if len(edges) else [float(x[0])]


def _dim(n: int, opts: Mapping[str, int]) -> int:
    """Embedding width for ``n`` distinct values: min(max_dim, max(4, round(1.6 * n ** 0.56)))."""
    return int(min(opts["max_dim"], max(4, round(1.6 * n ** 0.56))))


def _unique_name(name: str, taken: Mapping[str, Any]) -> str:
    """``name``, or ``name_2``, ``name_3``... the first not in ``taken``."""
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    return out


def _edit(feats: dict[str, dict[str, Any]], edits: Mapping[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``feats`` with the config's ``features`` edits applied (see the module docstring)."""
    out = {k: dict(v) for k, v in feats.items()}
    for name, edit in edits.items():
        if edit is None:
            if name not in out:
                raise RecfunnelError(f"{where}: features.{name}: null drops a feature features=auto builds, but it "
                                     f"builds none named {name!r} (it builds: {', '.join(out)})")
            del out[name]
            continue
        if not isinstance(edit, Mapping):
            raise RecfunnelError(f"{where}: features.{name} must be a mapping of feature keys (or null), got {edit!r}")
        edit = dict(edit)
        merged = edit if {"kind", "source"} & set(edit) else {**out.get(name, {}), **edit}
        out[name] = {k: v for k, v in merged.items() if v is not None}
    return out


# -- helpers ---------------------------------------------------------------------------------------
def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A config node (OmegaConf or a mapping) as plain nested dicts and lists."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg).items()}


def _log_once(schema: FeatureSchema, skipped: list[str], distinct: Mapping[str, int], data: SplitData) -> None:
    """One INFO message per distinct built schema: each feature's tower, kind, source, rows and width."""
    lines = []
    for f in schema.features:
        lines.append(f"  {f.name:<20} {f.tower:<7} {f.kind:<11} {f.source:<22} {_rows(f, data, distinct):<30} "
                     f"{'dim ' + str(f.dim) if f.is_sparse and f.table is None else ''}".rstrip())
    text = (f"features=auto built schema '{schema.name}' ({len(schema.features)} features; {data.num_users} users, "
            f"{data.num_items} items):\n" + "\n".join(lines) +
            (f"\n  skipped columns: {', '.join(skipped)}" if skipped else "\n  skipped columns: none"))
    if text not in _logged:
        _logged.add(text)
        log.info("%s", text)


def _rows(f, data: SplitData, distinct: Mapping[str, int]) -> str:
    """How a feature's ids are made, for the log: the table it shares, or its mode and table size."""
    if f.kind == "dense":
        return f"transform {f.transform}"
    if f.table is not None:
        return f"table of {f.table}"
    if f.source in ("user_id", "item_id"):
        return f"ids: {data.num_users if f.source == 'user_id' else data.num_items} rows"
    if f.buckets is not None:
        return f"{len(f.buckets)} edges: {len(f.buckets) + 2} rows"
    if f.hash_size is not None:
        return f"hashed: {f.hash_size} rows" + (f" ({distinct[f.name]} values)" if f.name in distinct else "")
    if f.source in ("context.hour", "context.weekday"):
        return f"{24 if f.source == 'context.hour' else 7} rows"
    return f"vocabulary: {distinct[f.name] + 1} rows" if f.name in distinct else "vocabulary"


def _varies(values: np.ndarray) -> bool:
    """Whether an array holds more than one value (one pass, no sort)."""
    return bool(len(values)) and bool((values != values[0]).any())
