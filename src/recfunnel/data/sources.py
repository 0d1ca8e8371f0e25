"""Turn a ``data`` config into canonical tables, cached as parquet under ``paths.data_dir``.

A config names its source with ``source._target_`` (``load_movielens``, ``generate_synthetic``).
The tables are cached in ``data_dir/<data.name>/tables/`` (one parquet file per table) together with
``source.json``, the record of what they were built from. The cache is served only while that
record's **source key** equals the current one; otherwise the source is read again. The key is a
SHA-256 over:

- the source config, resolved, without the keys that do not change the tables (``IGNORED_KEYS``:
  ``cache_dir``, where a source keeps its downloads, and ``progress``);
- the size and ``mtime_ns`` of every file under each existing path the source config names (a string
  value that is a file or folder, e.g. ``local_dir``), except the cache location itself
  (``data_dir`` and the source's ``cache_dir``, pruned from the walk). Contents are not re-hashed:
  stat-ing the files is what keeps a cache hit fast. The walk is bounded: at most ``MAX_FILES``
  files in all (folders and files in sorted order); beyond that the rest are not watched and the
  log line says so;
- the text of the reader's module (the one defining ``_target_``), of the ``recfunnel.data``
  modules it imports from (one level) and of ``tables.py`` (``Tables.validated``), so a changed
  reader rebuilds the tables it would now read differently (the log line names the module).

Not watched: files a source downloads into its ``cache_dir`` (ML-100K fetched from the recbole wheel),
which only the source itself writes; delete ``data_dir/<name>/tables`` to force a rebuild.

A miss builds the tables, passes them through ``Tables.validated`` (exact duplicate events dropped,
bad tables an error) and only then publishes the folder (tables + ``source.json``) with atomic
renames, so a bad source leaves nothing cached and a reader never sees half a cache. Every load logs
one INFO line saying what it read: ``read ml100k from /data/other; cached its tables in ...
(the source config changed: local_dir ...)`` or ``ml100k: cached tables data/ml100k/tables (source
unchanged: ...)``. A cache written before source keys (no ``source.json``) is rebuilt once. There is
one cache per ``data.name``: alternating between two sources of one name reads each anew; give
them two names (``data.name=...``) to keep both cached.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import sys
import types
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from recfunnel.data import tables as tables_module
from recfunnel.data.dataset import SplitData
from recfunnel.data.fingerprint import tables_fingerprint
from recfunnel.data.tables import Tables
from recfunnel.utils.io import atomic_path, write_json
from recfunnel.utils.trees import flatten

log = logging.getLogger(__name__)

#: source config keys that do not change the tables: left out of the source key
IGNORED_KEYS = ("cache_dir", "progress")
#: at most this many files (all named paths together) are stat-ed for the source key
MAX_FILES = 10_000
SOURCE_JSON = "source.json"
KEY_VERSION = 1  # bump when what the key covers changes


@dataclasses.dataclass
class SourceKey:
    """What a source's canonical tables depend on (see the module docstring) and its hash ``key``."""

    source: dict[str, Any]  # the resolved source config without IGNORED_KEYS
    files: list[list[Any]]  # [absolute path, size, mtime_ns] of each watched file, in walk order
    unwatched: list[str]  # named paths holding files beyond MAX_FILES
    code: dict[str, str]  # module → sha256 (16 hex digits) of its text
    where: str  # what the source reads, for people

    @property
    def key(self) -> str:
        payload = {"version": KEY_VERSION, "source": self.source, "files": self.files, "unwatched": self.unwatched,
                   "code": self.code}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()

    def record(self, name: str, fingerprint: str) -> dict[str, Any]:
        """The ``source.json`` of tables built from this source."""
        return {"key": self.key, "name": name, "source": self.source, "files": self.files, "unwatched": self.unwatched,
                "code": self.code, "fingerprint": fingerprint,
                "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def changed_since(self, old: Mapping[str, Any]) -> str:
        """Why a cache recorded as ``old`` (its ``source.json``) is not this source's, in a few words."""
        if "key" not in old:
            return "the cache records no source: it predates source keys"
        before, now = flatten(old.get("source", {})), flatten(self.source)
        for k in sorted(before.keys() | now.keys()):
            if before.get(k, "<absent>") != now.get(k, "<absent>"):
                return f"the source config changed: {k} {before.get(k, '<absent>')} → {now.get(k, '<absent>')}"
        old_files = {f[0]: f[1:] for f in old.get("files", [])}
        new_files = {f[0]: f[1:] for f in self.files}
        for path in sorted(old_files.keys() | new_files.keys()):
            if path not in new_files:
                return f"a source file is gone: {path}"
            if path not in old_files:
                return f"a source file is new: {path}"
            if old_files[path] != new_files[path]:
                return f"a source file changed (size or mtime): {path}"
        for module in sorted(old.get("code", {}).keys() | self.code.keys()):
            if old.get("code", {}).get(module) != self.code.get(module):
                return f"the reader code changed: {module}"
        return "its source key differs"


def source_key(data_cfg: Mapping[str, Any], data_dir: str | Path) -> SourceKey:
    """The source key of ``data_cfg`` cached under ``data_dir`` (stats the watched files; reads nothing else)."""
    full = _plain(data_cfg["source"])
    source = _without(full, IGNORED_KEYS)
    cache_root = Path(data_dir).resolve()
    excluded = {cache_root} | {Path(v).resolve() for k, v in flatten(full).items()
                               if k.split(".")[-1] in IGNORED_KEYS and isinstance(v, str) and v}
    own_cache = cache_root / str(data_cfg["name"])
    named = []
    for k, v in flatten(source).items():
        if k.split(".")[-1] == "_target_" or not isinstance(v, str) or not v.strip():
            continue
        path = Path(v).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if path in excluded or path == own_cache or own_cache in path.parents or path in named:
            continue
        named.append(path)
    files, unwatched = _stat_files(sorted(named), excluded | {own_cache})
    target = str(source.get("_target_", ""))
    args = ", ".join(f"{k}={v}" for k, v in full.items() if k != "_target_")
    where = ", ".join(map(str, sorted(named))) or f"{target.rsplit('.', 1)[-1]}({args})"
    return SourceKey(source, files, unwatched, _code(target), where)


def open_tables(data_cfg: Mapping[str, Any], data_dir: str | Path) -> tuple[Tables, str]:
    """Canonical tables for ``data_cfg`` (cached in ``data_dir/<data.name>/tables``, see the module
    docstring) and one line saying where they came from (what ``load_tables`` logs)."""
    name = str(data_cfg["name"])
    cache = Path(data_dir) / name / "tables"
    key = source_key(data_cfg, data_dir)
    note = f"; only the first {MAX_FILES:,} files under {', '.join(key.unwatched)} are watched" if key.unwatched else ""
    recorded = _read_record(cache)
    if recorded is None:
        reason = "no cache yet" if not cache.exists() else "the cache records no source: it predates source keys"
    elif recorded.get("key") != key.key:
        reason = key.changed_since(recorded)
    else:
        try:
            tables = Tables.load(cache)
            if (_read_record(cache) or {}).get("key") == key.key:  # not replaced while we read it
                return tables, f"{name}: cached tables {cache} (source unchanged: {key.where}{note})"
            reason = "the cache was replaced while it was read"
        except Exception as e:  # noqa: BLE001 - a cache that cannot be read is rebuilt, saying why
            reason = f"the cached tables could not be read: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    tables = hydra.utils.instantiate(data_cfg["source"]).validated(name)
    _publish(tables, cache, key.record(name, tables_fingerprint(tables)))
    return tables, f"read {name} from {key.where}; cached its tables in {cache} ({reason}{note})"


def load_tables(data_cfg: Mapping[str, Any], data_dir: str | Path) -> Tables:
    """Canonical tables for ``data_cfg`` (cached in ``data_dir/<data.name>/tables``); logs where they came from."""
    tables, origin = open_tables(data_cfg, data_dir)
    log.info("%s", origin)
    return tables


def load_split(data_cfg: Mapping[str, Any], data_dir: str | Path) -> SplitData:
    """Tables plus dense indices and the protocol split; ``cache_dir`` = ``data_dir/<name>``."""
    data = SplitData.from_tables(load_tables(data_cfg, data_dir), min_events=int(data_cfg.get("min_events", 3)))
    data.cache_dir = Path(data_dir) / str(data_cfg["name"])
    return data


# -- helpers ---------------------------------------------------------------------------------------
def _publish(tables: Tables, cache: Path, record: dict[str, Any]) -> None:
    """Write ``tables`` and ``source.json`` into ``cache`` at once (``atomic_path``: a reader sees the
    old cache or the new one, never half of one)."""
    with atomic_path(cache) as new:
        tables.save(new)
        write_json(new / SOURCE_JSON, record)


def _read_record(cache: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((cache / SOURCE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _stat_files(roots: list[Path], pruned: set[Path]) -> tuple[list[list[Any]], list[str]]:
    """[path, size, mtime_ns] of the files under ``roots`` (sorted walk, ``pruned`` folders skipped),
    at most ``MAX_FILES``; and the roots whose files did not all fit."""
    files: list[list[Any]] = []
    unwatched: list[str] = []
    for root in roots:
        if root.is_file():
            walk = [(str(root.parent), [], [root.name])]
        else:
            walk = os.walk(root)
        for folder, dirs, names in walk:
            dirs[:] = sorted(d for d in dirs if Path(folder, d) not in pruned)
            for n in sorted(names):
                if len(files) >= MAX_FILES:
                    unwatched.append(str(root))
                    break
                path = os.path.join(folder, n)
                try:
                    st = os.stat(path)
                except OSError:  # a broken link, or gone meanwhile
                    continue
                files.append([path, st.st_size, st.st_mtime_ns])
            if unwatched and unwatched[-1] == str(root):
                break
    return files, unwatched


def _code(target: str) -> dict[str, str]:
    """sha256 (16 hex digits) of the text of the module defining ``target``, of the ``recfunnel.data``
    modules it imports from (one level: the shared parsing helpers, ``tables.py``) and of ``tables.py``."""
    modules = {"recfunnel.data.tables": tables_module.__file__}
    try:
        reader = importlib.import_module(target.rpartition(".")[0])
    except Exception:  # noqa: BLE001 - an unknown target fails when instantiated, with Hydra's message
        reader = None
    if reader is not None:
        modules[reader.__name__] = reader.__file__
        for value in vars(reader).values():
            name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.startswith("recfunnel.data.") and name in sys.modules:
                modules[name] = sys.modules[name].__file__
    out = {}
    for module, file in sorted(modules.items()):
        try:
            out[module] = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
        except (OSError, TypeError):
            out[module] = "unreadable"
    return out


def _plain(node: Any) -> Any:
    """A config node as plain, JSON-able Python (resolved; paths as strings)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    if isinstance(node, os.PathLike):
        return os.fspath(node)
    return node


def _without(tree: Any, keys: tuple[str, ...]) -> Any:
    if isinstance(tree, dict):
        return {k: _without(v, keys) for k, v in tree.items() if k not in keys}
    if isinstance(tree, list):
        return [_without(v, keys) for v in tree]
    return tree
