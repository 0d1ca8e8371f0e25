"""Feature schema: one YAML file per dataset (``configs/features/*.yaml``) declares every feature.

Each feature has a ``tower`` (user / item / context), a ``kind`` and a ``source`` the pipeline
knows how to compute *as of the event's time*:

==============  ==================================================================================
kind            meaning
==============  ==================================================================================
categorical     one id per event (length-1 bag)
multi_hot       a bag of ids (e.g. an item's genres)
sequence        an ordered list of ids, oldest first (e.g. the user's history); pooled by the
                embedding bag, and also available unpooled for sequence encoders
dense           one float per event, normalised with train-split statistics
text            a text column (an item's title) embedded once per distinct text by the schema's
                ``text_encoder`` (``features/text.py``), frozen, then projected to ``dim`` by a
                learned linear map; missing text gets a learned "no text" vector
==============  ==================================================================================

Besides the computed sources below (``SOURCES``), ``user.<column>`` and ``item.<column>`` read any
column of the users / items table (``table_column``): categorical (one value per user / item),
multi_hot (a list-valued column, e.g. a RecBole ``token_seq`` field), dense (a numeric column) or
text. ``context.<column>`` reads a column of the interactions table: the event's own value, known
when the request is made (a search query as text, the place the user is as a categorical cell); a
served request has the values it gives (``FeaturePipeline.for_request(context=...)``), else none
(missing: row 0).
``item.pop_count`` / ``item.pop_decayed`` count an item's train events before the event; with
``within: COLUMN`` (an items column, e.g. ``geohash5``) they give instead the item's share of the
events of the items with its value of that column (popularity within a map cell, a brand, a genre).
Whether the column exists, and holds what the kind needs, is checked by the pipeline against the
dataset's table. A feature of the user / context towers reads only query-side sources, one of the
item tower only item-side sources (an item attribute on the query side would leak the target).

The schema's ``text_encoder`` (optional mapping: ``kind``, ``model``, ``dim``, ``batch_size``; see
``features/text.py``) embeds every ``text`` feature; ``kind: wordllama`` runs offline from its wheel.

Sparse features own an embedding table (``dim``, ``pooling``) or share another feature's table
(``table: item_id``): shared tables must agree on pooling. Ids are made dense by ``vocab: auto``
(values seen in the users/items tables, 0 = unknown or missing: empty, NaN), by ``buckets`` (numeric edges), by
``hash_size`` (string hashing), or are already dense indices (``user_id``, ``item_id``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recfunnel.utils.errors import RecfunnelError

TOWERS = ("user", "item", "context")
QUERY_TOWERS = ("user", "context")  # what is known of a request: the user and its context
KINDS = ("categorical", "multi_hot", "sequence", "dense", "text")
POOLINGS = ("sum", "mean")
TRANSFORMS = ("none", "log1p")

COLUMN_KINDS = ("categorical", "multi_hot", "dense", "text")  # what a user.<column> / item.<column> source can feed

# source -> (tower it describes, kinds it can feed). The user.* / item.* ones named here are columns
# as any other (listed for the record: the ML-100K demographics, genres and year).
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "user_id": ("user", ("categorical",)),
    "user.age": ("user", COLUMN_KINDS),
    "user.gender": ("user", COLUMN_KINDS),
    "user.occupation": ("user", COLUMN_KINDS),
    "user.zip": ("user", COLUMN_KINDS),
    "user.activity": ("user", ("dense",)),
    "history.item_id": ("user", ("sequence", "multi_hot")),
    "history.age": ("user", ("sequence", "multi_hot")),
    "session.item_id": ("user", ("sequence", "multi_hot")),
    "session.position": ("context", ("categorical", "dense")),
    "context.hour": ("context", ("categorical",)),
    "context.weekday": ("context", ("categorical",)),
    "social.friend_items": ("user", ("multi_hot", "sequence")),
    "item_id": ("item", ("categorical",)),
    "item.genres": ("item", COLUMN_KINDS),
    "item.year": ("item", COLUMN_KINDS),
    "item.pop_count": ("item", ("dense",)),
    "item.pop_decayed": ("item", ("dense",)),
}
POPULARITY_SOURCES = ("item.pop_count", "item.pop_decayed")
# computed sources that look like table columns: they are not read from the users / items / interactions table
COMPUTED = {"user.activity", "item.pop_count", "item.pop_decayed", "context.hour", "context.weekday"}
COLUMN_PREFIXES = {"user.": "users", "item.": "items", "context.": "interactions"}
EVENT_COLUMN_KINDS = ("categorical", "dense", "text")  # what a context.<column> source can feed
_FIELDS = {"tower", "kind", "source", "dim", "pooling", "table", "vocab", "buckets", "hash_size",
           "max_len", "prefix", "transform", "within"}


def table_column(source: str) -> tuple[str, str] | None:
    """("users" | "items" | "interactions", column) a source reads from a table, or None for a computed source.

    ``user.age`` → ("users", "age"), ``item.brand`` → ("items", "brand"), ``context.query`` →
    ("interactions", "query"); ``user.activity``, ``item.pop_count``, ``context.hour``, ``user_id``,
    ``history.*``... → None.
    """
    if source in COMPUTED:
        return None
    for prefix, table in COLUMN_PREFIXES.items():
        if source.startswith(prefix) and len(source) > len(prefix):
            return table, source[len(prefix):]
    return None


def source_info(source: str) -> tuple[str, tuple[str, ...]] | None:
    """(tower it describes, kinds it can feed) of a known source or a ``user.``/``item.`` column; else None."""
    if source in SOURCES:
        return SOURCES[source]
    col = table_column(source)
    if col is None:
        return None
    if col[0] == "interactions":
        return "context", EVENT_COLUMN_KINDS
    return ("user" if col[0] == "users" else "item"), COLUMN_KINDS


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    name: str
    tower: str
    kind: str
    source: str
    dim: int = 16
    pooling: str = "mean"
    table: str | None = None  # name of the feature whose table this one shares
    vocab: str | int | None = None  # "auto", or a fixed size for already-dense ids
    buckets: tuple[float, ...] | None = None
    hash_size: int | None = None
    max_len: int = 50
    prefix: int | None = None  # keep the first `prefix` characters of a string value (zip codes)
    transform: str = "none"
    within: str | None = None  # item.pop_count / item.pop_decayed: the share of the items with this column's value

    @property
    def is_sparse(self) -> bool:
        """In the tower's KJT (one or more ids per row): every kind but dense (a text feature's id is
        its row in the text table)."""
        return self.kind != "dense"

    @property
    def owns_table(self) -> bool:
        """Owns an embedding table of the collection (text features own a frozen text table instead)."""
        return self.is_sparse and self.kind != "text" and self.table is None

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
    """Ordered features plus the pipeline's global settings (history length, session gap, decay)."""

    name: str
    features: tuple[FeatureSpec, ...]
    session_gap_s: int = 1800
    popularity_half_life_days: float = 30.0
    friend_items_per_friend: int = 2
    text_encoder: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs; see features/text.py

    @property
    def text_encoder_config(self) -> dict[str, Any]:
        return dict(self.text_encoder)

    @property
    def text_features(self) -> list[FeatureSpec]:
        return [f for f in self.features if f.kind == "text"]

    def tower(self, tower: str, kind: str | None = None) -> list[FeatureSpec]:
        """Features of one tower (optionally one kind: 'sparse' / 'dense' / a KINDS value), in order."""
        out = [f for f in self.features if f.tower == tower]
        if kind == "sparse":
            return [f for f in out if f.is_sparse]
        if kind is not None:
            return [f for f in out if f.kind == kind]
        return out

    def __getitem__(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def with_dim(self, dim: int) -> FeatureSchema:
        """The same schema with every embedding table of width ``dim`` (DLRM's interaction needs one D)."""
        return dataclasses.replace(self, features=tuple(dataclasses.replace(f, dim=dim) for f in self.features))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "features") -> FeatureSchema:
        """Validate a schema mapping (a Hydra node or parsed YAML); ``where`` names it in errors."""
        cfg = dict(cfg)
        feats_cfg = cfg.pop("features", None)
        if not feats_cfg:
            raise RecfunnelError(f"{where}: no 'features' mapping; declare at least one feature")
        known_top = {"name", "session_gap_s", "popularity_half_life_days", "friend_items_per_friend", "text_encoder"}
        unknown = set(cfg) - known_top
        if unknown:
            raise RecfunnelError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(known_top | {'features'})}")
        specs = [_parse_feature(name, dict(fc), where) for name, fc in dict(feats_cfg).items()]
        if "text_encoder" in cfg:
            encoder = cfg["text_encoder"]
            if encoder is not None and not isinstance(encoder, Mapping):
                raise RecfunnelError(f"{where}: text_encoder must be a mapping (kind, model, dim, batch_size), "
                                     f"got {encoder!r}")
            cfg["text_encoder"] = tuple(sorted(dict(encoder or {}).items()))
        schema = cls(name=str(cfg.get("name", "schema")), features=tuple(specs),
                     **{k: cfg[k] for k in known_top - {"name"} if k in cfg})
        _check_tables(schema, where)
        return schema

    @classmethod
    def from_yaml(cls, path: str | Path) -> FeatureSchema:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise RecfunnelError(f"feature schema {path} does not exist")
        return cls.from_config(yaml.safe_load(path.read_text()), where=str(path))


def _choice(where: str, key: str, value: Any, valid: tuple[str, ...] | list[str]) -> None:
    if value not in valid:
        raise RecfunnelError(f"{where}: {key}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _parse_feature(name: str, fc: dict[str, Any], where: str) -> FeatureSpec:
    at = f"{where}: feature '{name}'"
    if not str(name) or "." in str(name):
        raise RecfunnelError(f"{at}: a feature name must be non-empty and without '.' (it names an embedding table); "
                             "rename it, e.g. with '_'")
    unknown = set(fc) - _FIELDS
    if unknown:
        raise RecfunnelError(f"{at}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(_FIELDS))}")
    for key in ("tower", "kind", "source"):
        if key not in fc:
            raise RecfunnelError(f"{at}: missing '{key}'")
    _choice(at, "kind", fc["kind"], KINDS)
    _choice(at, "tower", fc["tower"], TOWERS)
    info = source_info(str(fc["source"]))
    if info is None:
        raise RecfunnelError(f"{at}: source={fc['source']!r} is not valid; choose one of: {', '.join(sorted(SOURCES))}, "
                             "or user.<column> / item.<column> / context.<column> for a column of the users / items / "
                             "interactions table")
    side, kinds = info
    _choice(at, f"kind (for source {fc['source']})", fc["kind"], kinds)
    if (side == "item") != (fc["tower"] == "item"):
        towers = "item" if side == "item" else " or ".join(QUERY_TOWERS)
        raise RecfunnelError(f"{at}: source {fc['source']} describes the {'item' if side == 'item' else 'query'}; "
                             f"put it in the {towers} tower (it is in tower {fc['tower']})")
    _choice(at, "pooling", fc.get("pooling", "mean"), POOLINGS)
    _choice(at, "transform", fc.get("transform", "none"), TRANSFORMS)
    if "buckets" in fc:
        fc["buckets"] = tuple(float(b) for b in fc["buckets"])
        if list(fc["buckets"]) != sorted(fc["buckets"]):
            raise RecfunnelError(f"{at}: buckets must be increasing, got {list(fc['buckets'])}")
    if "within" in fc and (fc["source"] not in POPULARITY_SOURCES or not isinstance(fc["within"], str)):
        raise RecfunnelError(f"{at}: within={fc['within']!r} needs source {' or '.join(POPULARITY_SOURCES)} and the "
                             "name of an items column (e.g. within: geohash5: the item's share of its cell's events)")
    for key in ("dim", "max_len", "hash_size", "prefix"):
        if key in fc and (not isinstance(fc[key], int) or fc[key] <= 0):
            raise RecfunnelError(f"{at}: {key} must be a positive integer, got {fc[key]!r}")
    return FeatureSpec(name=name, **fc)


def _check_tables(schema: FeatureSchema, where: str) -> None:
    for f in schema.features:
        if f.kind == "text" and f.table is not None:
            raise RecfunnelError(f"{where}: feature '{f.name}' is kind text: it cannot share a table; drop 'table'")
        if f.table is None:
            continue
        try:
            owner = schema[f.table]
        except KeyError:
            raise RecfunnelError(f"{where}: feature '{f.name}' shares table '{f.table}', which is not a feature; "
                                 f"choose one of: {', '.join(x.name for x in schema.features if x.is_sparse)}") from None
        if not owner.owns_table:
            raise RecfunnelError(f"{where}: feature '{f.name}' must share the table of a sparse feature that owns one")
        if owner.pooling != f.pooling:
            raise RecfunnelError(f"{where}: features '{owner.name}' and '{f.name}' share a table but pool "
                                 f"differently ({owner.pooling} vs {f.pooling}); set the same pooling on both")
