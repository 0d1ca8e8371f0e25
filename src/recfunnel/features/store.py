"""Materialised features: every event's as-of-time features computed once, batches are gathers.

``FeaturePipeline`` defines each feature; ``FeatureStore`` runs it once over all N events and keeps
the result as columnar arrays, so a training or evaluation batch is a handful of numpy gathers:

=====================  ==================  =========================================================
array                  shape, dtype        what
=====================  ==================  =========================================================
``code_<feature>``     (N,) uint8..int32   a categorical feature's id (the narrowest integer type its
                                           table fits), as of the event; item-tower features are
                                           those of the event's own item
``dense_<tower>``      (N, D_t) float32    the tower's dense features (transform applied, not yet
                                           normalised), as of the event
``bounds``             (N, 3) int32        where the event's user timeline starts, where its own
                                           history ends (exclusive) and where its session starts:
                                           positions in ``timeline_item`` (protocol order; int64
                                           from 2**31 events)
``timeline_item``      (N,) int32          every event's item, in protocol order (user, time)
``timeline_ts``        (N,) int32          their timestamps minus the first one (int64 when the data
                                           spans 2**31 s or more)
=====================  ==================  =========================================================

History and session features (``history.item_id``, ``history.age``, ``session.item_id``) are ragged
slices ``timeline[max(first, end - max_len) : end]`` of these arrays: O(N) memory for any
``max_len``. Every other feature (multi-hot attributes such as genres, friends' items) is still
built per batch by the pipeline, from arrays it already holds per user or item. The item tower of
arbitrary (item, time) pairs (negatives, the catalogue) is the pipeline's as well.

On disk the arrays live in ``<data_dir>/<dataset>/features/<key>/`` as ``.npy`` files, memory-mapped
when read: resident memory then holds the pages a run touches, not a copy per process (DataLoader
workers map the same files). ``key`` hashes the tables' fingerprint, the schema, the split's
``min_events`` and the text of this module, of the pipeline and of ``utils/arrays.py``: other data,
another schema or changed feature code give another folder; a folder is published whole
(``atomic_path``), never half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recfunnel.features import pipeline as pipeline_module
from recfunnel.features.batch import TowerInput, make_kjt
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import QUERY_TOWERS, TOWERS, FeatureSpec
from recfunnel.utils import arrays as arrays_module
from recfunnel.utils.arrays import concat_ranges
from recfunnel.utils.io import atomic_path, write_json
from recfunnel.utils.progress import progress_bar

log = logging.getLogger(__name__)

STORE_VERSION = 1
STORE_JSON = "store.json"
TIMELINE_SOURCES = ("history.item_id", "history.age", "session.item_id")
CHUNK = 1 << 16  # events materialised per step
_FIRST, _END, _SESSION = 0, 1, 2  # columns of ``bounds``


def store_key(pipeline: FeaturePipeline, fingerprint: str, min_events: int) -> str:
    """Hash of what the materialised arrays depend on (see the module docstring), 16 hex digits."""
    code = [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in (pipeline_module, arrays_module)]
    code.append(hashlib.sha256(Path(__file__).read_bytes()).hexdigest())
    payload = {"version": STORE_VERSION, "fingerprint": fingerprint, "min_events": min_events, "code": code,
               "schema": dataclasses.asdict(pipeline.schema)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """Batches of the towers' inputs for events, gathered from materialised arrays.

    Build with ``FeatureStore.build(pipeline)`` (in memory) or ``FeatureStore.open(pipeline, folder,
    key)`` (memory-mapped from ``folder/key``, materialised there first if absent). ``queries(rows)``
    and ``event_items(rows)`` return exactly what ``pipeline.queries(rows)`` and
    ``pipeline.items(item_idx[rows], ts[rows])`` return.
    """

    def __init__(self, pipeline: FeaturePipeline, arrays: dict[str, np.ndarray], path: Path | None = None):
        self.pipeline, self.arrays, self.path = pipeline, arrays, path

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def build(cls, pipeline: FeaturePipeline, progress: bool = False) -> FeatureStore:
        """Materialise every event's features in memory."""
        arrays = {name: np.empty(shape, dtype) for name, (shape, dtype) in _layout(pipeline).items()}
        _fill(pipeline, arrays, progress)
        return cls(pipeline, arrays)

    @classmethod
    def open(cls, pipeline: FeaturePipeline, folder: str | Path, key: str, progress: bool = True) -> FeatureStore:
        """The store under ``folder/key``, memory-mapped; materialised there first when absent or unreadable."""
        path = Path(folder) / key
        try:
            return cls(pipeline, _load(path, pipeline), path)
        except (OSError, ValueError, KeyError) as e:
            reason = "not materialised yet" if not path.exists() else f"unreadable ({type(e).__name__}: {e})"
        started = time.perf_counter()
        with atomic_path(path) as tmp:
            tmp.mkdir()
            arrays = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                      for name, (shape, dtype) in _layout(pipeline).items()}
            _fill(pipeline, arrays, progress)
            for a in arrays.values():
                a.flush()
            del arrays
            write_json(tmp / STORE_JSON, {"key": key, "events": len(pipeline.ts), "schema": pipeline.schema.name,
                                          "arrays": sorted(_layout(pipeline))})
        store = cls(pipeline, _load(path, pipeline), path)
        log.info("features: materialised %s events (%s) in %.1f s into %s (%s)", f"{len(pipeline.ts):,}",
                 pipeline.schema.name, time.perf_counter() - started, path, reason)
        return store

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers started by "spawn" get the paths, not a copy of the arrays
        state = dict(self.__dict__)
        if self.path is not None:
            state["arrays"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.arrays is None:
            self.arrays = _load(self.path, self.pipeline)

    # -- batches -----------------------------------------------------------------------------------
    def queries(self, rows: np.ndarray) -> dict[str, TowerInput]:
        """Inputs of every query tower for event ``rows`` (B,), as ``FeaturePipeline.queries``."""
        rows = np.asarray(rows, dtype=np.int64)
        bounds = self.arrays["bounds"][rows]
        return {t: self._tower(t, rows, bounds) for t in QUERY_TOWERS}

    def event_items(self, rows: np.ndarray) -> TowerInput:
        """Inputs of the item tower for each event's own item as of the event (B,)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self._tower("item", rows, None)

    def dense_stats(self, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per tower, (D_t,) float32 mean and std of its dense features over events ``rows``: the
        values of ``FeaturePipeline.tower_dense_stats(rows)``, without recomputing the features."""
        out = {}
        for tower in TOWERS:
            dense = self.arrays[f"dense_{tower}"][np.asarray(rows, dtype=np.int64)]
            out[tower] = (dense.mean(0), dense.std(0)) if dense.shape[1] else (np.zeros(0, np.float32),
                                                                               np.ones(0, np.float32))
        return out

    def _tower(self, tower: str, rows: np.ndarray, bounds: np.ndarray | None) -> TowerInput:
        keys, values, lengths = [], [], []
        ones = np.ones(len(rows), np.int64)
        slices: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for spec in self.pipeline.schema.tower(tower, "sparse"):
            if spec.kind == "categorical":
                v, n = self.arrays[f"code_{spec.name}"][rows], ones
            elif spec.source in TIMELINE_SOURCES:
                v, n = self._timeline(spec, rows, bounds, slices)
            else:
                v, n = self.pipeline._sparse(spec, rows, None, None)
            keys.append(spec.name)
            values.append(v)
            lengths.append(n)
        dense = self.arrays[f"dense_{tower}"][rows]
        return TowerInput(make_kjt(keys, values, lengths), torch.from_numpy(np.ascontiguousarray(dense)))

    def _timeline(self, spec: FeatureSpec, rows: np.ndarray, bounds: np.ndarray,
                  slices: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """(values, lengths) of a history or session feature: the newest ``max_len`` earlier events."""
        first = _SESSION if spec.source == "session.item_id" else _FIRST
        if (first, spec.max_len) not in slices:  # hist_items and hist_age share one slice
            end = bounds[:, _END].astype(np.int64)  # bounds may be uint8: end - max_len must not wrap
            start = np.maximum(bounds[:, first], end - spec.max_len)
            slices[first, spec.max_len] = (concat_ranges(start, end), end - start)
        positions, lengths = slices[first, spec.max_len]
        if spec.source == "history.age":
            since_t0 = self.pipeline.ts[rows] - self.pipeline.t0
            age = np.repeat(since_t0, lengths) - self.arrays["timeline_ts"][positions]
            return self.pipeline.encoders[spec.name].encode(age), lengths
        return self.arrays["timeline_item"][positions], lengths



def _layout(pipeline: FeaturePipeline) -> dict[str, tuple[tuple[int, ...], type]]:
    """Name → (shape, dtype) of every materialised array."""
    n = len(pipeline.ts)
    layout: dict[str, tuple[tuple[int, ...], type]] = {}
    for tower in TOWERS:
        for spec in pipeline.schema.tower(tower, "categorical"):
            layout[f"code_{spec.name}"] = ((n,), _narrowest(pipeline.encoders[spec.name].size))
        layout[f"dense_{tower}"] = ((n, len(pipeline.schema.tower(tower, "dense"))), np.float32)
    layout["bounds"] = ((n, 3), _narrowest(n + 1))
    layout["timeline_item"] = ((n,), _narrowest(pipeline.num_items))
    span = int(pipeline.ts.max() - pipeline.t0) + 1 if n else 1
    layout["timeline_ts"] = ((n,), _narrowest(span, signed=True))
    return layout


def _narrowest(size: int, signed: bool = False) -> type:
    """The narrowest integer type holding 0..size-1 (signed: int32 or int64 only)."""
    if not signed:
        for t in (np.uint8, np.int16):
            if size <= np.iinfo(t).max:
                return t
    return np.int32 if size <= np.iinfo(np.int32).max else np.int64


def _fill(p: FeaturePipeline, arrays: dict[str, np.ndarray], progress: bool) -> None:
    """Compute every array of ``_layout`` with the pipeline, ``CHUNK`` events at a time."""
    n = len(p.ts)
    arrays["timeline_item"][:] = p.item_idx[p.order]
    arrays["timeline_ts"][:] = p.ts[p.order] - p.t0
    specs = {t: p.schema.tower(t, "categorical") for t in TOWERS}
    for lo in progress_bar(range(0, n, CHUNK), desc="materialising features", unit="chunk", disable=not progress,
                           total=-(-n // CHUNK)):
        rows = np.arange(lo, min(lo + CHUNK, n), dtype=np.int64)
        first = p.timeline_ptr[p.user_idx[rows]]
        arrays["bounds"][lo:lo + len(rows)] = np.stack([first, first + p.timeline_pos[rows], p.session_start[rows]], 1)
        for tower in TOWERS:
            for spec in specs[tower]:
                arrays[f"code_{spec.name}"][lo:lo + len(rows)] = p._sparse(spec, rows, None, None)[0]
            arrays[f"dense_{tower}"][lo:lo + len(rows)] = p._dense(tower, rows, None, None)


def _load(path: Path, pipeline: FeaturePipeline) -> dict[str, np.ndarray]:
    """The arrays under ``path``, memory-mapped read-only, checked against the expected layout."""
    meta = json.loads((path / STORE_JSON).read_text())
    if meta.get("events") != len(pipeline.ts):
        raise ValueError(f"{path} holds {meta.get('events')} events, the data has {len(pipeline.ts)}")
    arrays = {}
    for name, (shape, dtype) in _layout(pipeline).items():
        a = np.load(path / f"{name}.npy", mmap_mode="r")
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{path / name}.npy has shape {a.shape} {a.dtype}, expected {shape} {np.dtype(dtype)}")
        arrays[name] = a.view(np.ndarray)  # plain arrays over the mapping: fancy indexing copies only the rows
    return arrays
