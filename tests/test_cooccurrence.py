"""Item-to-item co-occurrence: hand-computed scores, no leakage from valid/test, and its ML-100K recall."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.dataset import TEST, TRAIN, VALID, SplitData
from recfunnel.data.tables import Tables
from recfunnel.eval.protocol import EvalSet, evaluate
from recfunnel.models.cooccurrence import Cooccurrence, top_n_per_row
from recfunnel.models.popularity import Popularity

# user → items in time order (item ids 1..5 are item_idx 0..4); the last is test, the one before valid
TIMELINES = {1: [1, 2, 3, 4, 5], 2: [2, 3, 1, 5, 4], 3: [1, 4, 5], 4: [5, 1, 2]}
# train item_idx sequences: user 1: 0 1 2 | user 2: 1 2 0 | user 3: 0 | user 4: 4
COUNTS = np.array([3.0, 2.0, 2.0, 0.0, 1.0])  # train events per item


@pytest.fixture(scope="module")
def tiny() -> SplitData:
    rows = [(u, i, 100 * t) for u, items in TIMELINES.items() for t, i in enumerate(items)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(rating=1.0)
    inter = inter.sample(frac=1.0, random_state=0).reset_index(drop=True)  # source order must not matter
    tables = Tables(inter, pd.DataFrame({"user_id": [1, 2, 3, 4]}), pd.DataFrame({"item_id": [1, 2, 3, 4, 5]}))
    return SplitData.from_tables(tables)


# the tests below spell out distance_power=1.0 (weight 1/d), whatever the default

def scores_for(model: Cooccurrence, data: SplitData, split: str, user: int) -> np.ndarray:
    evalset = EvalSet.build(data, split)
    pos = int(np.flatnonzero(evalset.users == user)[0])
    return model.scorer(evalset)(np.array([pos]))[0].numpy()


def with_tie_break(co: np.ndarray, tie_break: float = 1e-3) -> np.ndarray:
    positive = co[co > 0]
    eps = tie_break * (positive.min() if len(positive) else 1.0)
    return co + eps * COUNTS / COUNTS.max()


def test_split_of_tiny_data(tiny):
    u, i = tiny.user_idx[tiny.order], tiny.item_idx[tiny.order]
    assert u[tiny.split[tiny.order] == TRAIN].tolist() == [0, 0, 0, 1, 1, 1, 2, 3]
    assert i[tiny.split[tiny.order] == TRAIN].tolist() == [0, 1, 2, 1, 2, 0, 0, 4]
    assert i[tiny.split[tiny.order] == VALID].tolist() == [3, 4, 3, 0]
    assert i[tiny.split[tiny.order] == TEST].tolist() == [4, 3, 4, 1]


def test_matrix_window_distance_and_direction(tiny):
    # window 2, weight 1/d, symmetric: user 1 gives (0,1) 1, (1,2) 1, (0,2) 1/2; user 2 (1,2) 1, (2,0) 1, (1,0) 1/2
    m = Cooccurrence(distance_power=1.0, window=2, normalize="none", neighbours=None).fit(tiny).matrix.toarray()
    want = np.zeros((5, 5))
    want[0, 1] = want[1, 0] = 1.5
    want[1, 2] = want[2, 1] = 2.0
    want[0, 2] = want[2, 0] = 1.5
    np.testing.assert_allclose(m, want)
    # window 1: the distance-2 pairs are gone
    m1 = Cooccurrence(distance_power=1.0, window=1, normalize="none", neighbours=None).fit(tiny).matrix.toarray()
    want1 = np.zeros((5, 5))
    want1[0, 1] = want1[1, 0] = 1.0
    want1[1, 2] = want1[2, 1] = 2.0
    want1[0, 2] = want1[2, 0] = 1.0
    np.testing.assert_allclose(m1, want1)
    # backward=0: only earlier → later; distance_power=0: flat weight within the window
    md = Cooccurrence(window=2, backward=0.0, distance_power=0.0, normalize="none", neighbours=None).fit(tiny).matrix.toarray()
    want_d = np.zeros((5, 5))
    want_d[0, 1], want_d[1, 2], want_d[0, 2] = 1.0, 1.0 + 1.0, 1.0  # user 1, and user 2's (1,2)
    want_d[2, 0], want_d[1, 0] = 1.0, 1.0  # user 2's (2,0) and (1,0)
    np.testing.assert_allclose(md, want_d)
    # window None: every pair once per user, weight 1, symmetric
    ma = Cooccurrence(distance_power=1.0, window=None, normalize="none", neighbours=None).fit(tiny).matrix.toarray()
    want_a = np.zeros((5, 5))
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        want_a[a, b] = want_a[b, a] = 2.0
    np.testing.assert_allclose(ma, want_a)


def test_fit_on_some_users_counts_only_their_train_events(tiny):
    # users 1 and 3 only (user_idx 0, 2): pairs of user 1's 0 1 2 (window 2, 1/d), nothing from user 3's single event
    users = np.array([True, False, True, False])
    model = Cooccurrence(distance_power=1.0, window=2, normalize="none").fit(tiny, users=users)
    want = np.zeros((5, 5))
    want[0, 1] = want[1, 0] = want[1, 2] = want[2, 1] = 1.0
    want[0, 2] = want[2, 0] = 0.5
    np.testing.assert_allclose(model.matrix.toarray(), want)
    np.testing.assert_array_equal(model.counts, [2.0, 1.0, 1.0, 0.0, 0.0])


def test_scores_from_histories_equal_scores_from_rows(tiny):
    model = Cooccurrence(distance_power=1.0, window=2, history=2, decay=0.5).fit(tiny)
    rows = EvalSet.build(tiny, "test").rows
    # user 1's test target (item 4) follows 0 1 2 3 (train + valid): its last two, 2 then 3
    items, lengths = np.array([0, 1, 2, 3, 0]), np.array([4, 1])
    got = model.score_histories(items, lengths)
    np.testing.assert_allclose(got[0], model.score_queries(model.query_matrix(np.array([2, 3]), np.array([2])))[0])
    np.testing.assert_allclose(model.query_matrix(items, lengths).toarray()[0], [0, 0, 0.5, 1.0, 0])
    np.testing.assert_allclose(model.score_rows(rows[:1]), got[:1])


def test_pairs_added_in_batches_give_the_same_matrix(tiny):
    whole = Cooccurrence(window=3, backward=0.5).fit(tiny).matrix
    batched = Cooccurrence(window=3, backward=0.5)
    batched.PAIRS_PER_BATCH = 1  # flush after every distance
    assert abs(whole - batched.fit(tiny).matrix).max() < 1e-12


def test_normalisation_and_neighbours(tiny):
    cos = Cooccurrence(distance_power=1.0, window=2, normalize="cosine", neighbours=None).fit(tiny).matrix.toarray()
    assert cos[0, 1] == pytest.approx(1.5 / np.sqrt(3 * 2))
    assert cos[1, 2] == pytest.approx(2.0 / np.sqrt(2 * 2))
    cond = Cooccurrence(distance_power=1.0, window=2, normalize="conditional", neighbours=None).fit(tiny).matrix.toarray()
    assert cond[0, 1] == pytest.approx(1.5 / 3) and cond[1, 0] == pytest.approx(1.5 / 2)
    top1 = Cooccurrence(distance_power=1.0, window=2, normalize="none", neighbours=1).fit(tiny).matrix.toarray()
    want = np.zeros((5, 5))
    want[0, 1] = 1.5  # row 0: a tie between items 1 and 2 (1.5 each) keeps the lower index
    want[1, 2] = want[2, 1] = 2.0
    np.testing.assert_allclose(top1, want)


def test_top_n_per_row_against_loop():
    rng = np.random.default_rng(0)
    dense = rng.integers(0, 4, size=(30, 40)).astype(float) * (rng.random((30, 40)) < 0.5)
    import scipy.sparse as sp

    got = top_n_per_row(sp.csr_matrix(dense), 3).toarray()
    for r in range(30):
        cols = sorted(np.flatnonzero(dense[r]), key=lambda c: (-dense[r, c], c))[:3]
        want = np.zeros(40)
        want[cols] = dense[r, cols]
        np.testing.assert_array_equal(got[r], want)


def test_scores_with_history_and_decay(tiny):
    model = Cooccurrence(distance_power=1.0, window=2, normalize="none", neighbours=None, history=2, decay=0.5).fit(tiny)
    # user 0's valid target: history = their last 2 train items, newest (2) weight 1, then (1) weight 0.5
    co = np.array([1.5, 2.0, 0, 0, 0]) + 0.5 * np.array([1.5, 0, 2.0, 0, 0])
    np.testing.assert_allclose(scores_for(model, tiny, "valid", 0), with_tie_break(co), rtol=1e-6)
    # user 0's test target: history = [2 (train), 3 (valid)]: 3 has no co-occurrence, 2 weighs 0.5
    co = 0.5 * np.array([1.5, 2.0, 0, 0, 0])
    np.testing.assert_allclose(scores_for(model, tiny, "test", 0), with_tie_break(co), rtol=1e-6)
    # history=1: only the newest item
    one = Cooccurrence(distance_power=1.0, window=2, normalize="none", neighbours=None, history=1).fit(tiny)
    np.testing.assert_allclose(scores_for(one, tiny, "valid", 0), with_tie_break(np.array([1.5, 2.0, 0, 0, 0])), rtol=1e-6)
    # user 3 (train item 4 only, which co-occurs with nothing): popularity order, like Popularity
    s = scores_for(model, tiny, "valid", 3)
    np.testing.assert_allclose(s, 1e-3 * COUNTS / COUNTS.max(), rtol=1e-6)
    assert np.array_equal(np.argsort(-s, kind="stable"), np.argsort(-COUNTS, kind="stable"))


def test_tie_break_keeps_every_cooccurring_item_above_the_rest(tiny):
    model = Cooccurrence(distance_power=1.0, window=2, normalize="cosine", neighbours=None, history=None, decay=0.9).fit(tiny)
    s = scores_for(model, tiny, "valid", 1)  # user 1: train 1 2 0, all co-occurring
    co = (model.history_matrix(EvalSet.build(tiny, "valid").rows[[1]]) @ model.matrix).toarray()[0]
    assert s[co > 0].min() > s[co == 0].max()
    assert np.array_equal(np.argsort(-s[co > 0], kind="stable"), np.argsort(-co[co > 0], kind="stable"))


def test_no_leakage_from_valid_and_test_events(ml100k_data):
    d = ml100k_data
    model = Cooccurrence().fit(d)
    valid = EvalSet.build(d, "valid")
    user = int(valid.users[0])
    rng = np.random.default_rng(0)
    changed = d.item_idx.copy()
    for code in (VALID, TEST):  # every valid and test event gets another item
        rows = np.flatnonzero(d.split == code)
        changed[rows] = (changed[rows] + rng.integers(1, d.num_items, len(rows))) % d.num_items
    other = dataclasses.replace(d, item_idx=changed)
    refit = Cooccurrence().fit(other)
    assert (model.matrix != refit.matrix).nnz == 0
    np.testing.assert_array_equal(model.counts, refit.counts)
    # the valid targets' scores read the users' train events only (every valid user)
    everyone = np.arange(len(valid))
    np.testing.assert_array_equal(model.scorer(valid)(everyone).numpy(),
                                  refit.scorer(EvalSet.build(other, "valid"))(everyone).numpy())
    # the test target's scores do read the valid event (it is before the target)
    assert not np.array_equal(scores_for(model, d, "test", user), scores_for(refit, other, "test", user))


def test_beats_most_popular_on_ml100k(ml100k_data):
    d = ml100k_data
    test = EvalSet.build(d, "test")
    pop = evaluate(Popularity().fit(d).scorer(test), test, d.num_items)
    m = evaluate(Cooccurrence().fit(d).scorer(test), test, d.num_items)
    assert pop["recall@100"] == pytest.approx(0.3173, abs=1e-4)
    # measured with the defaults: test Recall@100 0.6511 (valid 0.7052); most popular 0.3173
    assert m["recall@100"] > 0.55
    assert m["recall@10"] > pop["recall@10"] + 0.05  # 0.2174 vs 0.0848


def test_the_dense_product_scores_as_the_sparse_one_to_the_bit(ml100k_data):
    """A fitted model multiplies by a dense copy of S when S is small and full (ML-100K's is 42% full)
    and by the sparse S otherwise (a few neighbours per item on a larger catalogue); both give the
    same scores to the bit."""
    d = ml100k_data
    model = Cooccurrence().fit(d)
    assert model.dense_matrix is not None and np.array_equal(model.dense_matrix, model.matrix.toarray())
    rows = np.flatnonzero(d.split == TRAIN)[::97]
    dense = model.score_rows(rows)
    model.dense_matrix = None
    assert np.array_equal(model.score_rows(rows), dense)
    assert Cooccurrence(neighbours=20).fit(d).dense_matrix is None  # 20 of 1682 per row: the sparse product


def test_a_bad_option_is_one_line_naming_the_key(tmp_path):
    from helpers import DATA_DIR, run
    proc = run("recfunnel.evaluate", "model=cooccurrence", "model.normalize=bm25", f"paths.data_dir={DATA_DIR}",
               f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.normalize='bm25' is not valid; choose one of: none, cosine, conditional" in proc.stderr
