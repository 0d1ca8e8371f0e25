"""Re-ranking stages on hand-computed cases, their invariants on random slates, the stage chain and
its config, and the two beyond-accuracy metrics."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from recfunnel.eval.diversity import catalogue_coverage, intra_list_diversity
from recfunnel.serving.rerank import (
    MMR,
    ExcludeSeen,
    FreshnessBoost,
    GenreCap,
    ItemCatalogue,
    Reranker,
    Seen,
    Slate,
    Stage,
    build_reranker,
)
from recfunnel.utils.errors import RecfunnelError

ROOT = Path(__file__).resolve().parents[1]
NEG = -np.inf


def catalogue(genres, year=None, embeddings=None):
    genres = np.asarray(genres, dtype=bool)
    year = np.full(len(genres), np.nan) if year is None else np.asarray(year, dtype=float)
    return ItemCatalogue(genres, year, embeddings)


def slate(items, scores):
    return Slate(np.array(items, dtype=np.int64), np.array(scores, dtype=np.float32))


# ----------------------------------------------------------------------------- hand cases


def test_exclude_seen_moves_later_items_up_and_pads():
    cat = catalogue(np.zeros((8, 1)))
    s = slate([[5, 3, 7, 1], [2, 4, -1, -1], [6, 0, -1, -1]],
              [[4, 3, 2, 1], [2, 1, NEG, NEG], [9, 8, NEG, NEG]])
    seen = Seen.from_lists([[3, 1], [2], []])
    out = ExcludeSeen()(s, cat, seen)
    np.testing.assert_array_equal(out.items, [[5, 7, -1, -1], [4, -1, -1, -1], [6, 0, -1, -1]])
    np.testing.assert_array_equal(out.scores, [[4, 2, NEG, NEG], [1, NEG, NEG, NEG], [9, 8, NEG, NEG]])
    np.testing.assert_array_equal(s.items[0], [5, 3, 7, 1])   # input untouched


def test_exclude_seen_needs_seen():
    cat = catalogue(np.zeros((8, 1)))
    with pytest.raises(RecfunnelError, match="ExcludeSeen.*seen"):
        ExcludeSeen()(slate([[1]], [[1.0]]), cat, None)
    with pytest.raises(RecfunnelError, match="2 users, the slate 1"):
        ExcludeSeen()(slate([[1]], [[1.0]]), cat, Seen.from_lists([[1], []]))


def test_freshness_boost_reorders_as_computed_by_hand():
    # years 1990, 2000, 2010, unknown -> freshness 0, 0.5, 1, 0
    cat = catalogue(np.zeros((4, 1)), year=[1990, 2000, 2010, np.nan])
    s = slate([[0, 1, 2, 3, -1]], [[1.0, 0.9, 0.5, 0.45, NEG]])
    np.testing.assert_allclose(FreshnessBoost(1.0).freshness(cat), [0, 0.5, 1, 0])
    out = FreshnessBoost(weight=1.0)(s, cat, None)                # 1.0, 1.4, 1.5, 0.45
    np.testing.assert_array_equal(out.items, [[2, 1, 0, 3, -1]])
    np.testing.assert_allclose(out.scores, [[1.5, 1.4, 1.0, 0.45, NEG]], rtol=1e-6)
    out = FreshnessBoost(1.0, reference_year=2020)(s, cat, None)  # freshness 0, 1/3, 2/3, 0
    np.testing.assert_array_equal(out.items, [[1, 2, 0, 3, -1]])
    np.testing.assert_allclose(out.scores[0, :4], [0.9 + 1 / 3, 0.5 + 2 / 3, 1.0, 0.45], rtol=1e-6)
    out = FreshnessBoost(0.0)(s, cat, None)
    np.testing.assert_array_equal(out.items, s.items)
    np.testing.assert_array_equal(out.scores, s.scores)
    with pytest.raises(RecfunnelError, match="FreshnessBoost: reference_year"):
        FreshnessBoost(1.0, reference_year=1980)(s, cat, None)


# genres A, B, C: items 0 and 1 are A, 2 is B, 3 is C
GENRES_ABC = [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]


def test_mmr_lam_one_is_identity():
    cat = catalogue(GENRES_ABC)
    s = slate([[0, 1, 2, 3], [3, 1, -1, -1]], [[3, 2.9, 2.8, 2], [1, 1, NEG, NEG]])
    out = MMR(lam=1.0)(s, cat, None)
    np.testing.assert_array_equal(out.items, s.items)
    np.testing.assert_array_equal(out.scores, s.scores)


def test_mmr_picks_the_diverse_item_second():
    cat = catalogue(GENRES_ABC)
    s = slate([[0, 1, 2, -1]], [[3.0, 2.9, 2.0, NEG]])
    # rel = 1, 0.9, 0. Step 2: item 1 -> 0.5*0.9 - 0.5*1 = -0.05; item 2 -> 0.5*0 - 0.5*0 = 0.
    out = MMR(lam=0.5)(s, cat, None)
    np.testing.assert_array_equal(out.items, [[0, 2, 1, -1]])
    np.testing.assert_array_equal(out.scores, s.scores)          # scores stay with positions
    # lam 0.9: item 1 -> 0.81 - 0.1 = 0.71 beats item 2 -> 0: order kept.
    np.testing.assert_array_equal(MMR(lam=0.9)(s, cat, None).items, s.items)
    # Same with embeddings: 0 and 1 nearly parallel, 2 orthogonal.
    emb = np.array([[1, 0], [1, 0.01], [0, 1], [1, 1]], dtype=np.float32)
    cat_e = catalogue(GENRES_ABC, embeddings=emb)
    np.testing.assert_array_equal(MMR(0.5, similarity="embedding")(s, cat_e, None).items, [[0, 2, 1, -1]])
    with pytest.raises(RecfunnelError, match="embeddings"):
        MMR(0.5, similarity="embedding")(s, cat, None)


def test_mmr_n_reorders_only_the_head():
    cat = catalogue(GENRES_ABC)
    s = slate([[0, 1, 2, 3]], [[3.0, 2.9, 2.8, 2.0]])
    # All 4: rel 1, .9, .8, 0 -> picks 0, then 2 (.4), then 3 (0 > .45 - .5), then 1.
    np.testing.assert_array_equal(MMR(0.5)(s, cat, None).items, [[0, 2, 3, 1]])
    # Head of 3: rel 1, .5, 0 -> picks 0, then 2 (0 > .25 - .5), then 1; item 3 stays last.
    np.testing.assert_array_equal(MMR(0.5, n=3)(s, cat, None).items, [[0, 2, 1, 3]])


def test_genre_cap_by_hand():
    # genres A, B: 0 A, 1 A, 2 AB, 3 B, 4 none, 5 B
    cat = catalogue([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0], [0, 1]])
    s = slate([[0, 1, 2, 3, 4, 5], [1, 0, 4, -1, -1, -1]],
              [[6, 5, 4, 3, 2, 1], [3, 2, 1, NEG, NEG, NEG]])
    out = GenreCap(1)(s, cat, None)
    np.testing.assert_array_equal(out.items, [[0, 3, 4, 1, 2, 5], [1, 4, 0, -1, -1, -1]])
    np.testing.assert_array_equal(out.scores, s.scores)
    out = GenreCap(max_per_genre=2)(s, cat, None)
    np.testing.assert_array_equal(out.items, [[0, 1, 3, 4, 5, 2], [1, 0, 4, -1, -1, -1]])


# ----------------------------------------------------------------------------- references


def mmr_loop(items, scores, genres, lam):
    """Plain per-user MMR with cosine of genre vectors, straight from the definition."""
    real = [(i, s) for i, s in zip(items, scores) if i >= 0]
    if len(real) < 2 or lam == 1:
        return list(items)
    lo, hi = min(s for _, s in real), max(s for _, s in real)
    rel = {i: (s - lo) / (hi - lo) if hi > lo else 1.0 for i, s in real}

    def cos(a, b):
        na, nb = np.linalg.norm(genres[a]), np.linalg.norm(genres[b])
        return 0.0 if na == 0 or nb == 0 else float(genres[a] @ genres[b]) / (na * nb)

    left, out = [i for i, _ in real], []
    while left:
        obj = [rel[i] if not out else lam * rel[i] - (1 - lam) * max(cos(i, j) for j in out) for i in left]
        out.append(left.pop(int(np.argmax(obj))))
    return out + [-1] * (len(items) - len(out))


def cap_loop(items, genres, cap):
    counts, kept, skipped = np.zeros(genres.shape[1], int), [], []
    for i in items:
        if i < 0:
            continue
        if (counts[genres[i]] >= cap).any():
            skipped.append(i)
        else:
            kept.append(i)
            counts[genres[i]] += 1
    return kept + skipped + [-1] * (len(items) - len(kept) - len(skipped))


def random_case(seed, U=25, K=20, I=60, G=6):
    rng = np.random.default_rng(seed)
    genres = rng.random((I, G)) < 0.25
    year = rng.integers(1930, 2000, I).astype(float)
    year[rng.random(I) < 0.1] = np.nan
    emb = rng.normal(size=(I, 8)).astype(np.float32)
    cat = ItemCatalogue(genres, year, emb)
    items = np.full((U, K), -1, dtype=np.int64)
    scores = np.full((U, K), NEG, dtype=np.float32)
    for u in range(U):
        r = rng.integers(0, K + 1)
        items[u, :r] = rng.choice(I, r, replace=False)
        # coarse scores so ties happen
        scores[u, :r] = np.sort(rng.integers(0, 6, r).astype(np.float32) / 2)[::-1]
    seen = Seen.from_lists([rng.choice(I, rng.integers(0, 15), replace=False) for _ in range(U)])
    return Slate(items, scores), cat, seen


@pytest.mark.parametrize("seed,lam", [(0, 0.0), (1, 0.3), (2, 0.7), (3, 0.95)])
def test_mmr_matches_per_user_loop(seed, lam):
    s, cat, _ = random_case(seed)
    out = MMR(lam)(s, cat, None)
    for u in range(s.items.shape[0]):
        assert out.items[u].tolist() == mmr_loop(s.items[u], s.scores[u], cat.genres.astype(float), lam)


@pytest.mark.parametrize("seed,cap", [(0, 1), (1, 2), (2, 3)])
def test_genre_cap_matches_per_user_loop(seed, cap):
    s, cat, _ = random_case(seed)
    out = GenreCap(cap)(s, cat, None)
    for u in range(s.items.shape[0]):
        assert out.items[u].tolist() == cap_loop(s.items[u], cat.genres, cap)


# ----------------------------------------------------------------------------- invariants

STAGES = {
    "exclude": ExcludeSeen(),
    "fresh": FreshnessBoost(0.8),
    "stale": FreshnessBoost(-2.0, reference_year=1990),
    "mmr_genre": MMR(0.5),
    "mmr_emb_head": MMR(0.2, similarity="embedding", n=7),
    "mmr_zero": MMR(0.0),
    "cap": GenreCap(1),
}


def check_slate(out: Slate, before: Slate, removed=None):
    assert out.items.shape == before.items.shape and out.items.dtype == np.int64
    assert out.scores.dtype == np.float32
    real = out.items >= 0
    assert (np.diff(real.astype(int), axis=1) <= 0).all(), "-1 only at the end"
    assert np.isneginf(out.scores[~real]).all()
    step = out.scores[:, 1:] - np.where(real[:, 1:], out.scores[:, :-1], 0)
    assert (step[real[:, 1:]] <= 1e-6).all(), "scores non-increasing"
    for u in range(out.items.shape[0]):
        got = out.items[u][real[u]].tolist()
        assert len(got) == len(set(got)), "no duplicates"
        expect = {i for i in before.items[u].tolist() if i >= 0} - set(removed[u] if removed else ())
        assert set(got) == expect


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", list(STAGES))
def test_stage_invariants_on_random_slates(name, seed):
    s, cat, seen = random_case(seed)
    out = STAGES[name](s, cat, seen)
    removed = [seen.indices[seen.indptr[u]:seen.indptr[u + 1]].tolist() for u in range(seen.num_users)]
    check_slate(out, s, removed if name == "exclude" else None)


@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("U,K", [(0, 5), (3, 0), (0, 0)])
def test_stages_accept_empty_slates(name, U, K):
    _, cat, _ = random_case(0)
    s = Slate(np.full((U, K), -1, np.int64), np.full((U, K), NEG, np.float32))
    out = STAGES[name](s, cat, Seen.from_lists([[]] * U))
    assert out.items.shape == (U, K) and out.scores.shape == (U, K)
    assert Reranker(STAGES)(s, cat, Seen.from_lists([[]] * U), n=4).items.shape == (U, 4)


# ----------------------------------------------------------------------------- chain


def test_reranker_composes_in_order_and_returns_n_columns():
    s, cat, seen = random_case(4)
    a, b, c = ExcludeSeen(), MMR(0.4), GenreCap(1)
    out = Reranker({"a": a, "b": b, "c": c})(s, cat, seen, n=6)
    manual = c(b(a(s, cat, seen), cat, seen), cat, seen)
    np.testing.assert_array_equal(out.items, manual.items[:, :6])
    np.testing.assert_array_equal(out.scores, manual.scores[:, :6])
    # order matters: capping before MMR gives a different top 6 on this slate
    assert not np.array_equal(Reranker([a, c, b])(s, cat, seen, n=6).items, out.items)
    assert Reranker([a, c, b]).names == ["ExcludeSeen", "GenreCap", "MMR"]
    assert Reranker({"a": a, "b": b}).names == ["a", "b"]


def test_reranker_identity_and_padding():
    s = slate([[2, 0, -1], [1, 2, 0]], [[2, 1, NEG], [3, 2, 1]])
    cat = catalogue(np.zeros((3, 1)))
    for r in (Reranker(None), Reranker({}), Reranker([])):
        out = r(s, cat, n=2)
        np.testing.assert_array_equal(out.items, [[2, 0], [1, 2]])
        out = r(s, cat, n=5)
        np.testing.assert_array_equal(out.items, [[2, 0, -1, -1, -1], [1, 2, 0, -1, -1]])
        assert np.isneginf(out.scores[:, 3:]).all() and out.scores.dtype == np.float32
    with pytest.raises(RecfunnelError, match="catalogue has 2 items"):
        Reranker(None)(s, catalogue(np.zeros((2, 1))))


@pytest.mark.parametrize("make,match", [
    (lambda: MMR(lam=1.5), "MMR: lam"),
    (lambda: MMR(lam=-0.1), "MMR: lam"),
    (lambda: MMR(lam=0.5, similarity="jaccard"), r"MMR: similarity.*\['genre', 'embedding'\]"),
    (lambda: MMR(lam=0.5, n=0), "MMR: n"),
    (lambda: GenreCap(max_per_genre=0), "GenreCap: max_per_genre"),
    (lambda: GenreCap(max_per_genre=1.5), "GenreCap: max_per_genre"),
    (lambda: FreshnessBoost(weight=math.nan), "FreshnessBoost: weight"),
    (lambda: FreshnessBoost(weight="1"), "FreshnessBoost: weight"),
    (lambda: Reranker(None)(slate([[0]], [[1.0]]), catalogue([[1]]), n=-1), "Reranker: n"),
    (lambda: Reranker({"x": 3}), "stage 'x' is not a Stage"),
])
def test_bad_params_raise(make, match):
    with pytest.raises(RecfunnelError, match=match):
        make()


# ----------------------------------------------------------------------------- config


def test_default_config_builds_the_four_stages():
    r = build_reranker(OmegaConf.load(ROOT / "configs/rerank/default.yaml"))
    assert r.names == ["exclude_seen", "freshness", "mmr", "genre_cap"]
    assert [type(x) for x in r.stages] == [ExcludeSeen, FreshnessBoost, MMR, GenreCap]
    assert all(isinstance(x, Stage) for x in r.stages)
    assert r.stages[1].weight == 0.3 and 0 < r.stages[2].lam < 1 and r.stages[3].max_per_genre >= 1
    assert r.depth == 30
    s, cat, seen = random_case(5)
    check_slate(r(s, cat, seen, n=s.items.shape[1]), s,
                [seen.indices[seen.indptr[u]:seen.indptr[u + 1]].tolist() for u in range(seen.num_users)])
    assert build_reranker(OmegaConf.load(ROOT / "configs/rerank/none.yaml")).names == []
    assert build_reranker(None).names == []


def test_stages_removable_from_the_command_line(tmp_path):
    from hydra import compose, initialize_config_dir

    (tmp_path / "funnel.yaml").write_text(
        f"defaults:\n  - _self_\n  - rerank: default\nhydra:\n  searchpath:\n    - file://{ROOT / 'configs'}\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("funnel", overrides=["~rerank.stages.mmr", "rerank.stages.genre_cap.max_per_genre=2"])
        r = build_reranker(cfg.rerank)
        assert r.names == ["exclude_seen", "freshness", "genre_cap"] and r.stages[2].max_per_genre == 2
        assert build_reranker(compose("funnel", overrides=["rerank=none"]).rerank).names == []


# ----------------------------------------------------------------------------- diversity


def test_catalogue_coverage():
    assert catalogue_coverage(np.array([[0, 1, -1], [1, 2, -1]]), 10) == pytest.approx(0.3)
    assert catalogue_coverage(np.full((2, 3), -1), 4) == 0.0
    assert catalogue_coverage(np.zeros((0, 3), np.int64), 4) == 0.0
    with pytest.raises(RecfunnelError, match="catalogue_coverage"):
        catalogue_coverage(np.array([[5]]), 5)


def test_intra_list_diversity_by_hand():
    f = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 0], [2, 0]], dtype=float)
    assert intra_list_diversity(np.array([[0, 1]]), f) == pytest.approx(0.0, abs=1e-12)   # identical
    assert intra_list_diversity(np.array([[0, 5]]), f) == pytest.approx(0.0, abs=1e-12)   # parallel
    assert intra_list_diversity(np.array([[0, 2]]), f) == pytest.approx(1.0)             # orthogonal
    assert intra_list_diversity(np.array([[0, 1, 2]]), f) == pytest.approx(2 / 3)       # pairs 0, 1, 1
    assert intra_list_diversity(np.array([[3, 4]]), f) == pytest.approx(1.0)             # zero vectors
    # user 2 has one real item: skipped, not counted as 0 or 1
    assert intra_list_diversity(np.array([[0, 2, -1], [0, 1, -1], [2, -1, -1]]), f) == pytest.approx(0.5)
    assert math.isnan(intra_list_diversity(np.array([[0, -1]]), f))
    assert intra_list_diversity(np.array([[0, 2]]), f.astype(bool)) == pytest.approx(1.0)


def test_intra_list_diversity_matches_pairwise_loop():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 5))
    f[3] = 0
    items = np.array([rng.choice(30, 8, replace=False) for _ in range(12)])
    items[::3, 5:] = -1
    per_user = []
    for row in items:
        row = row[row >= 0]
        d = [1 - (f[a] @ f[b] / (np.linalg.norm(f[a]) * np.linalg.norm(f[b]))
                  if np.linalg.norm(f[a]) * np.linalg.norm(f[b]) > 0 else 0.0)
             for a, b in itertools.combinations(row, 2)]
        per_user.append(np.mean(d))
    assert intra_list_diversity(items, f) == pytest.approx(np.mean(per_user), rel=1e-10)


def test_depth_limits_the_stages_to_the_top_candidates():
    """With depth d, the stages see only the top max(d, n) candidates: a stage that reverses its
    input can then only pull items from the top d."""
    class Reverse(Stage):
        def __call__(self, slate, catalogue, seen):
            return Slate(slate.items[:, ::-1].copy(), slate.scores.copy())

    _, cat, _ = random_case(7)
    rng = np.random.default_rng(7)
    items = np.stack([rng.choice(cat.num_items, 10, replace=False) for _ in range(3)])
    s = Slate(items, np.sort(rng.random((3, 10)).astype(np.float32), axis=1)[:, ::-1].copy())
    deep = Reranker([Reverse()], depth=None)(s, cat, n=2)
    shallow = Reranker([Reverse()], depth=4)(s, cat, n=2)
    assert (deep.items == s.items[:, ::-1][:, :2]).all()
    assert (shallow.items == s.items[:, :4][:, ::-1][:, :2]).all()
    with pytest.raises(RecfunnelError, match="depth"):
        Reranker([], depth=0)
