"""The fused first stage on the real ML-100K: exact top-k, co-occurrence read through a feature
pipeline, cross-fitted scores for train events (no leakage into the ranker), and reciprocal-rank
fusion against a slow, obviously-correct version."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recfunnel.data.dataset import TRAIN
from recfunnel.data.ranking import PAIR_FEATURES, PairFeatures, genre_matrix
from recfunnel.eval.protocol import EvalSet
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.models.cooccurrence import Cooccurrence
from recfunnel.serving.fusion import CrossFitted, RankFusion, top_k_rows
from recfunnel.serving.index import ItemIndex
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError

FOLDS = 3


@pytest.fixture(scope="module")
def pipe(ml100k_schema, ml100k_data):
    return FeaturePipeline(ml100k_schema, ml100k_data)


@pytest.fixture(scope="module")
def cross(ml100k_data):
    return CrossFitted(Cooccurrence, ml100k_data, folds=FOLDS, seed=0)


def test_top_k_rows_is_exact_with_ties_and_missing_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 30)).astype(np.float64)  # many ties
    scores[rng.random(scores.shape) < 0.5] = -np.inf
    for k in (1, 7, 30, 40):
        items, got = top_k_rows(scores, k)
        for b in range(len(scores)):
            want = sorted(range(scores.shape[1]), key=lambda j: (-scores[b, j], j))[:min(k, 30)]
            want_items = [j if np.isfinite(scores[b, j]) else -1 for j in want]
            assert items[b].tolist() == want_items
            np.testing.assert_array_equal(got[b], scores[b, want])


def test_valid_and_test_events_read_the_full_model_through_the_pipeline(cross, pipe, ml100k_data):
    for split in ("valid", "test"):
        rows = EvalSet.build(ml100k_data, split).rows
        np.testing.assert_array_equal(cross.scores(pipe, rows), cross.full.score_rows(rows))


def test_train_events_read_a_model_fitted_without_their_users(cross, pipe, ml100k_data):
    d = ml100k_data
    rows = np.random.default_rng(1).choice(np.flatnonzero(d.split == TRAIN), 300, replace=False)
    got = cross.scores(pipe, rows, in_sample=True)
    folds = cross.fold_of_user[d.user_idx[rows]]
    assert len(np.unique(folds)) == FOLDS
    for fold in range(FOLDS):
        alone = Cooccurrence().fit(d, users=cross.fold_of_user != fold)
        sel = folds == fold
        np.testing.assert_array_equal(got[sel], alone.score_rows(rows[sel]))
    # a mask: only the in-sample rows read their fold's model
    mixed = cross.scores(pipe, rows, in_sample=np.arange(len(rows)) % 2 == 0)
    np.testing.assert_array_equal(mixed[::2], got[::2])
    np.testing.assert_array_equal(mixed[1::2], cross.full.score_rows(rows[1::2]))
    assert not np.array_equal(got, cross.full.score_rows(rows))


def test_no_leakage_from_a_users_own_train_events(cross, ml100k_data):
    """Every train event of fold 0's users moved to another item: fold 0's model does not change
    (it is what scores those users' train events); the full model does."""
    d = ml100k_data
    moved = np.flatnonzero((d.split == TRAIN) & (cross.fold_of_user[d.user_idx] == 0))
    items = d.item_idx.copy()
    items[moved] = (items[moved] + 1 + np.random.default_rng(0).integers(d.num_items - 1, size=len(moved))) % d.num_items
    other = CrossFitted(Cooccurrence, dataclasses.replace(d, item_idx=items), folds=FOLDS, seed=0)
    assert (cross.model(0).matrix != other.model(0).matrix).nnz == 0
    np.testing.assert_array_equal(cross.model(0).counts, other.model(0).counts)
    assert (cross.full.matrix != other.full.matrix).nnz > 0


def fused_by_hand(tt: np.ndarray, co: np.ndarray, seen: set, k: int, depth: int, w: float, k0: float,
                  second: np.ndarray | None = None, s: float = 0.0) -> list[int]:
    """Reciprocal-rank fusion of full score rows (two-tower, co-occurrence, and a second retriever's at
    weight ``s``), each cut to its top ``depth`` unseen items."""
    def ranking(scores):
        return [j for j in sorted(range(len(scores)), key=lambda j: (-scores[j], j)) if j not in seen][:depth]
    fused: dict[int, float] = {}
    sources = [(ranking(tt), (1 - s) * w), (ranking(co), (1 - s) * (1 - w))]
    if second is not None:
        sources.append((ranking(second), s))
    for order, weight in sources:
        for r, j in enumerate(order):
            fused[j] = fused.get(j, 0.0) + weight / (k0 + r + 1)
    return sorted(fused, key=lambda j: (-fused[j], j))[:k]


def test_fuse_sums_an_items_terms_in_source_order_and_breaks_ties_to_the_lower_item():
    """``RankFusion.fuse`` over the lists' union: the same scores, to the bit, as a sum over the whole
    catalogue; ties to the lower item; −1 / −inf past the items the lists hold."""
    fusion = RankFusion.__new__(RankFusion)
    fusion.k0 = 10.0
    a = np.array([[5, 3, 9, -1], [2, 7, -1, -1]])
    b = np.array([[3, 5, 1, 0], [7, -1, -1, -1]])
    c = np.array([[9, 3, -1, -1], [4, 2, -1, -1]])
    sources = [(a, 0.56), (b, 0.24), (c, 0.2)]
    items, scores = fusion.fuse(sources, k=6)
    for row in range(2):
        dense = np.zeros(10)  # the catalogue-wide sum, source after source
        member = np.zeros(10, bool)
        for lst, w in sources:
            for rank, item in enumerate(lst[row]):
                if item >= 0:
                    dense[item] += w / (fusion.k0 + rank + 1)
                    member[item] = True
        want = sorted(np.flatnonzero(member), key=lambda j: (-dense[j], j))
        n = len(want)
        assert items[row, :n].tolist() == want and (items[row, n:] == -1).all()
        assert scores[row, :n].tolist() == dense[want].tolist() and np.isneginf(scores[row, n:]).all()
    # two items with the same terms tie: the lower one first
    items, _ = fusion.fuse([(np.array([[4, 8]]), 0.5), (np.array([[8, 4]]), 0.5)], k=2)
    assert items.tolist() == [[4, 8]]


def fake_retriever(vectors: np.ndarray) -> Retriever:
    retriever = Retriever.__new__(Retriever)  # ``search`` reads only the index
    retriever.index = ItemIndex.build(vectors, kind="flat")
    return retriever


def assert_fused(fusion: RankFusion, pipe, rows: np.ndarray, queries: np.ndarray, by_hand) -> None:
    """``fusion``'s top 25 for ``rows`` are ``by_hand(b, seen items of row b)``, scores descending."""
    seen = Retriever.seen_before(pipe, rows)
    items, scores = fusion.search(pipe, rows, queries, seen, k=25)
    for b in range(len(rows)):
        assert items[b].tolist() == by_hand(b, set(seen[1][seen[0][b]:seen[0][b + 1]].tolist()))
    assert (np.diff(scores, axis=1) <= 0).all()


def test_fused_lists_are_reciprocal_rank_fusion_of_both_sources(cross, pipe, ml100k_data):
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(ml100k_data.num_items, 8)).astype(np.float32)
    fusion = RankFusion(fake_retriever(vectors), cross, weight=0.3, k0=60, depth=40)
    rows = rng.choice(EvalSet.build(ml100k_data, "test").rows, 40, replace=False)
    queries = rng.normal(size=(len(rows), 8)).astype(np.float32)
    co = cross.scores(pipe, rows)
    assert_fused(fusion, pipe, rows, queries,
                 lambda b, seen: fused_by_hand(vectors @ queries[b], co[b], seen, 25, 40, 0.3, 60.0))
    # second_weight without a second retriever changes nothing, the fused scores included
    seen = Retriever.seen_before(pipe, rows)
    alone = RankFusion(fake_retriever(vectors), cross, weight=0.3, k0=60, depth=40, second_weight=0.2)
    for got, want in zip(alone.search(pipe, rows, queries, seen, k=25), fusion.search(pipe, rows, queries, seen, k=25)):
        np.testing.assert_array_equal(got, want)


def test_a_second_retriever_is_a_third_source_read_from_its_block_of_the_queries(cross, pipe, ml100k_data):
    """Queries (B, d1 + d2): the two-tower ranks with the first d1 columns, the second retriever with
    the rest; the fused lists are three-way reciprocal-rank fusion."""
    rng = np.random.default_rng(5)
    first, second = (rng.normal(size=(ml100k_data.num_items, d)).astype(np.float32) for d in (8, 4))
    rows = rng.choice(EvalSet.build(ml100k_data, "valid").rows, 30, replace=False)
    queries = rng.normal(size=(len(rows), 12)).astype(np.float32)
    co = cross.scores(pipe, rows)
    three = RankFusion(fake_retriever(first), cross, weight=0.7, k0=10, depth=40, second=fake_retriever(second),
                       second_weight=0.2)
    assert_fused(three, pipe, rows, queries, lambda b, seen: fused_by_hand(
        first @ queries[b, :8], co[b], seen, 25, 40, 0.7, 10.0, second @ queries[b, 8:], 0.2))
    # without co-occurrence: the two retrievers alone, the first at weight 1 - second_weight
    two = RankFusion(fake_retriever(first), None, k0=10, depth=40, second=fake_retriever(second), second_weight=0.2)
    nothing = np.full(ml100k_data.num_items, -np.inf)
    assert_fused(two, pipe, rows, queries, lambda b, seen: fused_by_hand(
        first @ queries[b, :8], nothing, seen, 25, 40, 1.0, 10.0, second @ queries[b, 8:], 0.2))


def test_pair_features_read_the_retrievers_block_of_wider_queries(pipe, ml100k_data):
    """A first stage with a second retriever hands the ranker (B, d1 + d2) queries: the pair features
    are those of the retriever's d1 columns alone."""
    d = ml100k_data
    rng = np.random.default_rng(6)
    pairs = PairFeatures(rng.normal(size=(d.num_items, 8)).astype(np.float32), genre_matrix(d.tables.items))
    rows = EvalSet.build(d, "test").rows[:32]
    cands = rng.integers(-1, d.num_items, size=(32, 10))
    queries = rng.normal(size=(32, 12)).astype(np.float32)
    wide = pairs(pipe, rows, queries, cands, cands)
    np.testing.assert_array_equal(wide, pairs(pipe, rows, queries[:, :8], cands, cands))
    assert not np.array_equal(wide, pairs(pipe, rows, queries[:, 4:], cands, cands))


def test_pair_features_add_the_cooccurrence_score(cross, pipe, ml100k_data):
    d = ml100k_data
    vectors = np.random.default_rng(3).normal(size=(d.num_items, 8)).astype(np.float32)
    genres = genre_matrix(d.tables.items)
    plain, with_cooc = PairFeatures(vectors, genres), PairFeatures(vectors, genres, cooccurrence=cross)
    assert with_cooc.names == PAIR_FEATURES + ("cooc_score",)
    rows = np.flatnonzero(d.split == TRAIN)[:64]
    cands = np.random.default_rng(4).integers(-1, d.num_items, size=(64, 12))
    queries = np.zeros((64, 8), np.float32)
    for in_sample in (False, True):
        out = with_cooc(pipe, rows, queries, cands, cands, in_sample)
        np.testing.assert_array_equal(out[..., :-1], plain(pipe, rows, queries, cands, cands))
        want = np.take_along_axis(cross.scores(pipe, rows, in_sample), np.maximum(cands, 0), 1)
        np.testing.assert_array_equal(out[..., -1], np.where(cands >= 0, want, 0).astype(np.float32))


def test_bad_options_are_one_line_naming_the_key(ml100k_data):
    with pytest.raises(RecfunnelError, match="first_stage.folds"):
        CrossFitted(Cooccurrence, ml100k_data, folds=1)
    for key, kwargs in (("first_stage.weight", {"weight": 1.5}), ("first_stage.k0", {"k0": 0}),
                        ("first_stage.second_weight", {"second_weight": 1.0})):
        with pytest.raises(RecfunnelError, match=key):
            RankFusion(None, None, **kwargs)


def test_the_first_stage_config_reaches_the_fusion(ml100k_data):
    """``first_stage`` of the funnel config: every key reaches the objects; no co-occurrence, no fusion."""
    from types import SimpleNamespace

    retriever = SimpleNamespace(data=ml100k_data)
    cfg = {"cooccurrence": {"_target_": "recfunnel.models.cooccurrence.Cooccurrence", "history": 5},
           "weight": 0.5, "k0": 10, "depth": 50, "folds": 2}
    fusion = RankFusion.build(retriever, cfg, seed=1)
    assert (fusion.weight, fusion.k0, fusion.depth) == (0.5, 10.0, 50)
    assert fusion.cooccurrence.folds == 2 and fusion.cooccurrence.full.history == 5
    assert set(fusion.cooccurrence.fold_of_user.tolist()) == {0, 1}
    assert RankFusion.build(retriever, {**cfg, "cooccurrence": None}) is None
    assert RankFusion.build(retriever, None) is None
    # a second retriever is a source of its own: with or without co-occurrence, at second_weight
    second = SimpleNamespace(run_dir="second-run")
    for options in (cfg, {**cfg, "cooccurrence": None}):
        fusion = RankFusion.build(retriever, {**options, "second_weight": 0.25}, second=second)
        assert fusion.second is second and fusion.second_weight == 0.25
        assert (fusion.cooccurrence is None) == (options["cooccurrence"] is None)
