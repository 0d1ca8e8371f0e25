"""ItemIndex: exact search equals the full score matrix, ANN recall, inner-product semantics, save/load."""

import json

import faiss
import numpy as np
import pytest
import torch

from recfunnel.serving.index import ItemIndex, ann_recall, default_nlist
from recfunnel.utils.errors import RecfunnelError


def _data(num_items=2000, num_queries=50, dim=32, seed=0):
    """Gaussian items/queries: continuous values, so the score matrix has no ties."""
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((num_items, dim)).astype(np.float32)
    queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
    return items, queries


def _exact_topk(items, queries, k):
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    top = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, top, 1), top


def test_flat_topk_equals_full_score_matrix():
    items, queries = _data()
    k = 20
    ref_scores, ref_idx = _exact_topk(items, queries, k)
    scores, idx = ItemIndex.build(items, kind="flat").search(queries, k)
    assert scores.shape == idx.shape == (len(queries), k)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    for row in range(len(queries)):
        assert set(idx[row]) == set(ref_idx[row])
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5, rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first


def test_torch_inputs_and_threads_give_same_results():
    items, queries = _data(num_items=300, num_queries=5)
    threads_before = faiss.omp_get_max_threads()
    a = ItemIndex.build(items).search(queries, 10)
    b = ItemIndex.build(torch.from_numpy(items), threads=1).search(torch.from_numpy(queries), 10, threads=1)
    np.testing.assert_array_equal(a[1], b[1])
    assert faiss.omp_get_max_threads() == threads_before  # the global setting is restored


@pytest.mark.parametrize("kind, search_kw", [("ivf", {"nprobe": 10_000}), ("hnsw", {"ef_search": 512})])
def test_ann_recall_near_exact(kind, search_kw):
    items, queries = _data()
    k = 20
    _, exact = ItemIndex.build(items, kind="flat").search(queries, k)
    index = ItemIndex.build(items, kind=kind, seed=1)
    _, approx = index.search(queries, k, **search_kw)
    assert ann_recall(exact, approx) >= 0.99


def test_ivf_defaults():
    assert [default_nlist(n) for n in (10, 1682, 1_000_000)] == [1, 43, 4000]  # 4·√I, ≤ I / 39
    items, _ = _data()
    assert ItemIndex.build(items, kind="ivf", nlist=40).index.nprobe == 16
    assert ItemIndex.build(items, kind="ivf", nlist=8).index.nprobe == 8


def test_ivf_few_probes_is_approximate_and_pads_with_minus_one():
    items, queries = _data()
    index = ItemIndex.build(items, kind="ivf", nlist=40)
    _, exact = ItemIndex.build(items).search(queries, 100)
    scores, approx = index.search(queries, 100, nprobe=1)
    assert ann_recall(exact, approx) < 0.9
    assert np.all(np.isneginf(scores[approx < 0]))


def test_inner_product_not_l2_or_cosine():
    # Item 0 points away from the query's direction but is long; item 1 is parallel but short.
    items = np.array([[10.0, 5.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    for kind in ("flat", "hnsw"):
        scores, idx = ItemIndex.build(items, kind=kind).search(query, 3)
        # IP: 10 > 1 > 0. L2 would rank item 1 first (distance 0); cosine would too (cos = 1).
        assert idx[0].tolist() == [0, 1, 2]
        np.testing.assert_allclose(scores[0], [10.0, 1.0, 0.0])


def test_ann_recall_counts_overlap():
    exact = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    approx = np.array([[3, 2, 9, -1], [7, 6, 5, 4]])
    assert ann_recall(exact, approx) == pytest.approx((2 / 4 + 4 / 4) / 2)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_roundtrip(tmp_path, kind):
    items, queries = _data(num_items=500)
    ids = np.array([f"item-{i}" for i in range(len(items))])
    index = ItemIndex.build(items, ids, kind=kind, fingerprint="run-42")
    folder = tmp_path / "idx"
    index.save(folder)
    index.save(folder)  # overwriting an existing index works
    loaded = ItemIndex.load(folder, expect_fingerprint="run-42")
    assert (loaded.kind, loaded.dim, loaded.num_items, loaded.fingerprint) == (kind, 32, 500, "run-42")
    assert loaded.params == index.params
    np.testing.assert_array_equal(loaded.item_ids, ids)
    for a, b in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    _, idx = loaded.search(queries[:1], 3)
    np.testing.assert_array_equal(loaded.item_ids_of(idx), ids[idx])
    assert json.loads((folder / "meta.json").read_text())["metric"] == "inner_product"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp folders left behind


def test_k_larger_than_catalogue_clamps_with_warning():
    items, queries = _data(num_items=7, num_queries=3)
    with pytest.warns(UserWarning, match="exceeds the 7 indexed items"):
        scores, idx = ItemIndex.build(items).search(queries, 50)
    assert idx.shape == (3, 7)
    assert sorted(idx[0]) == list(range(7))


def test_errors(tmp_path):
    items, queries = _data(num_items=100)
    with pytest.raises(RecfunnelError, match="unknown index kind 'annoy'; valid kinds: flat, ivf, hnsw"):
        ItemIndex.build(items, kind="annoy")
    index = ItemIndex.build(items, fingerprint="run-1")
    with pytest.raises(RecfunnelError, match="queries have dimension 16 but the index holds 32-dimensional"):
        index.search(queries[:, :16], 5)
    with pytest.raises(RecfunnelError, match="nprobe applies to kind='ivf' only"):
        index.search(queries, 5, nprobe=4)
    with pytest.raises(RecfunnelError, match="duplicates"):
        ItemIndex.build(items, np.zeros(100, dtype=np.int64))
    with pytest.raises(RecfunnelError, match="NaN"):
        ItemIndex.build(np.full((3, 2), np.nan, dtype=np.float32))
    with pytest.raises(RecfunnelError, match="empty search slot"):
        index.item_ids_of(np.array([-1, 2]))
    index.save(tmp_path / "idx")
    with pytest.raises(RecfunnelError, match="fingerprint 'run-1', expected 'run-2'"):
        ItemIndex.load(tmp_path / "idx", expect_fingerprint="run-2")
    (tmp_path / "other").mkdir()
    with pytest.raises(RecfunnelError, match="is not a saved ItemIndex"):
        ItemIndex.load(tmp_path / "other")
    (tmp_path / "other" / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(RecfunnelError, match="is not a saved ItemIndex"):
        ItemIndex.load(tmp_path / "other")
