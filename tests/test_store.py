"""Materialised features (FeatureStore): the same TowerInputs as the pipeline, no leakage, one
materialisation per (data, schema), memory-mapped, rebuilt when damaged."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from recfunnel.data.dataset import SplitData
from recfunnel.features.batch import TowerInput
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema
from recfunnel.features.store import FeatureStore, store_key
from test_features import SCHEMA, changed_after_T, random_tables


def assert_same(a: TowerInput, b: TowerInput) -> None:
    assert a.sparse.keys() == b.sparse.keys()
    assert torch.equal(a.sparse.lengths(), b.sparse.lengths())
    assert torch.equal(a.sparse.values(), b.sparse.values())
    assert a.dense.dtype == b.dense.dtype and torch.equal(a.dense, b.dense)


def assert_store_equals_pipeline(store: FeatureStore, pipe: FeaturePipeline, rows: np.ndarray) -> None:
    want, got = pipe.queries(rows), store.queries(rows)
    assert want.keys() == got.keys()
    for tower in want:
        assert_same(want[tower], got[tower])
    assert_same(pipe.items(pipe.item_idx[rows], pipe.ts[rows]), store.event_items(rows))


@pytest.fixture(scope="module")
def toy():
    data = SplitData.from_tables(random_tables(seed=3))
    return FeaturePipeline(FeatureSchema.from_config(SCHEMA), data)


def test_every_source_kind_matches_the_pipeline(toy, tmp_path):
    """The toy schema has every source: ids, attributes (vocab, hash, prefix, buckets), history,
    ages, sessions, friends, context, genres, popularity."""
    rng = np.random.default_rng(0)
    n = len(toy.ts)
    for store in (FeatureStore.build(toy), FeatureStore.open(toy, tmp_path, "k")):
        assert_store_equals_pipeline(store, toy, np.arange(n))
        for size in (1, 7, 64):
            assert_store_equals_pipeline(store, toy, rng.integers(0, n, size))  # repeats included
        assert_store_equals_pipeline(store, toy, np.zeros(0, np.int64))


def test_ml100k_full_schema_matches_the_pipeline(ml100k_data, ml100k_schema):
    pipe = FeaturePipeline(ml100k_schema, ml100k_data)
    store = FeatureStore.build(pipe)
    rows = np.random.default_rng(1).choice(len(pipe.ts), 4096, replace=False)
    assert_store_equals_pipeline(store, pipe, rows)


def test_no_feature_sees_the_future_through_the_store():
    """As test_features::test_no_feature_sees_the_future, for batches gathered from the store."""
    schema = FeatureSchema.from_config(SCHEMA)
    before, after, early, late_rows = changed_after_T()
    a, b = (FeatureStore.build(FeaturePipeline(schema, d)) for d in (before, after))
    for tower in ("user", "context"):
        assert_same(a.queries(early)[tower], b.queries(early)[tower])
    assert_same(a.event_items(early), b.event_items(early))
    # the check can fail: late events' own items did change
    assert not torch.equal(a.event_items(late_rows).sparse["item_id"].values(),
                           b.event_items(late_rows).sparse["item_id"].values())


def test_materialised_once_memory_mapped_and_rebuilt_when_damaged(toy, tmp_path, caplog):
    caplog.set_level("INFO", logger="recfunnel.features.store")
    first = FeatureStore.open(toy, tmp_path, "key1")
    assert sum("materialised" in r.getMessage() for r in caplog.records) == 1
    files = sorted((tmp_path / "key1").glob("*.npy"))
    assert {f.stem for f in files} >= {"bounds", "timeline_item", "timeline_ts", "code_user_id", "code_hour", "dense_item"}
    assert np.load(tmp_path / "key1" / "code_hour.npy").dtype == np.uint8  # the narrowest type its 24 ids fit
    stamps = [f.stat().st_mtime_ns for f in files]
    second = FeatureStore.open(toy, tmp_path, "key1")
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, not rewritten
    assert sum("materialised" in r.getMessage() for r in caplog.records) == 1
    assert isinstance(second.arrays["bounds"].base, np.memmap) or hasattr(second.arrays["bounds"].base, "filename")
    assert not second.arrays["bounds"].flags.writeable
    # a DataLoader worker started by "spawn" receives the file paths, not the arrays
    blob = pickle.dumps(second)
    clone = pickle.loads(blob)
    assert len(blob) < len(pickle.dumps(toy)) + 2000 < len(pickle.dumps(toy)) + sum(a.nbytes for a in first.arrays.values())
    assert_store_equals_pipeline(clone, toy, np.arange(50))
    # a damaged file (a crash mid-copy, a full disk) is noticed and the store materialised again
    bounds = tmp_path / "key1" / "bounds.npy"
    with open(bounds, "r+b") as f:
        f.truncate(os.path.getsize(bounds) // 2)
    caplog.clear()
    third = FeatureStore.open(toy, tmp_path, "key1")
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    assert_store_equals_pipeline(third, toy, np.arange(len(toy.ts)))
    assert not list(tmp_path.glob(".*tmp"))  # nothing half-written left beside it


def test_the_key_covers_the_data_the_schema_and_the_split(toy):
    key = store_key(toy, "fingerprint-a", 3)
    assert key == store_key(toy, "fingerprint-a", 3)
    assert key != store_key(toy, "fingerprint-b", 3)
    assert key != store_key(toy, "fingerprint-a", 4)
    other = dict(SCHEMA, features={**SCHEMA["features"], "hist": {**SCHEMA["features"]["hist"], "max_len": 5}})
    assert key != store_key(FeaturePipeline(FeatureSchema.from_config(other), toy_data := SplitData.from_tables(
        random_tables(seed=3))), "fingerprint-a", 3)
    assert toy_data.fingerprint == SplitData.from_tables(random_tables(seed=3)).fingerprint


def test_dense_stats_equal_the_pipeline_ones(toy):
    rows = np.flatnonzero(toy.split == 0)
    want, got = toy.tower_dense_stats(rows), FeatureStore.build(toy).dense_stats(rows)
    assert want.keys() == got.keys()
    for tower in want:
        for a, b in zip(want[tower], got[tower]):
            assert a.dtype == b.dtype and np.array_equal(a, b)
