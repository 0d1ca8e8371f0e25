"""Turn a ``data`` config into canonical tables, cached as parquet under ``paths.data_dir``.

A config names its source with ``source._target_`` (``load_movielens``, ``generate_synthetic``);
the first call builds the tables, passes them through ``Tables.validated`` (exact duplicate events
dropped, bad tables an error) and only then saves them atomically, so a bad source leaves nothing
cached; later calls read the parquet files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import hydra

from recfunnel.data.dataset import SplitData
from recfunnel.data.tables import Tables

log = logging.getLogger(__name__)


def load_tables(data_cfg: Mapping[str, Any], data_dir: str | Path) -> Tables:
    """Canonical tables for ``data_cfg`` (cached in ``data_dir/<data.name>/tables``)."""
    cache = Path(data_dir) / str(data_cfg["name"]) / "tables"
    if (cache / "interactions.parquet").exists():
        return Tables.load(cache)
    tables = hydra.utils.instantiate(data_cfg["source"]).validated(str(data_cfg["name"]))
    tables.save(cache)
    log.info("saved canonical tables to %s", cache)
    return tables


def load_split(data_cfg: Mapping[str, Any], data_dir: str | Path) -> SplitData:
    """Tables plus dense indices and the protocol split."""
    return SplitData.from_tables(load_tables(data_cfg, data_dir), min_events=int(data_cfg.get("min_events", 3)))
