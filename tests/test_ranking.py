"""The ranking stage's data on the real ML-100K: list metrics, request-time features
(``FeaturePipeline.for_request`` / ``history_events``), the retriever's filtered search, the pair
features, and the ranker's training pairs and evaluation lists built from a trained retriever."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from recfunnel.data.dataset import TEST, TRAIN, VALID, SplitData
from recfunnel.data.ranking import PAIR_FEATURES, PairFeatures, RankingDataModule, TrainPairs, genre_matrix
from recfunnel.data.tables import Tables
from recfunnel.eval.metrics import NDCG_KS, RECALL_KS, list_metrics, ranking_metrics
from recfunnel.eval.protocol import EvalSet
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema
from recfunnel.serving.index import ItemIndex
from recfunnel.serving.retriever import Retriever

from helpers import DATA_DIR, ROOT, run

# --------------------------------------------------------------------------------------------------
# helpers: slow, obviously-correct versions of what the code computes


def timeline(data: SplitData, user: int) -> list[int]:
    """The user's event rows in protocol order (ts, then source position)."""
    rows = np.flatnonzero(data.user_idx == user)
    return sorted(rows.tolist(), key=lambda r: (int(data.ts[r]), r))


def earlier_events(data: SplitData, row: int) -> list[int]:
    line = timeline(data, int(data.user_idx[row]))
    return line[:line.index(row)]


def tower_as_python(ti) -> dict:
    """{key: (values list, lengths list)} and the dense matrix, for exact comparisons."""
    out = {k: (jt.values().tolist(), jt.lengths().tolist()) for k, jt in ti.sparse.to_dict().items()}
    out["__keys__"] = list(ti.sparse.keys())
    out["__dense__"] = ti.dense.tolist()
    return out


@pytest.fixture(scope="module")
def full_schema():
    return FeatureSchema.from_yaml(ROOT / "configs/features/ml100k.yaml")


@pytest.fixture(scope="module")
def full_pipe(full_schema, ml100k_data):
    return FeaturePipeline(full_schema, ml100k_data)


# --------------------------------------------------------------------------------------------------
# list_metrics


def test_list_metrics_by_hand():
    lists = torch.tensor([
        [5, 1, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14],    # target 5 at position 1
        [1, 2, 7, 3, 4, 6, 8, 10, 11, 12, 13, 14],    # target 7 at position 3
        [1, 2, 3, 4, 6, 8, 10, 11, 12, 13, 9, 14],    # target 9 at position 11
        [1, 2, 3, 5, 6, -1, -1, -1, -1, -1, -1, -1],  # target 4 missing, list padded with -1
    ])
    targets = torch.tensor([5, 7, 9, 4])
    m = list_metrics(lists, targets, recall_ks=(1, 3, 10, 12, 20), ndcg_ks=(3, 10, 20))
    assert set(m) == {"recall@1", "recall@3", "recall@10", "recall@12", "ndcg@3", "ndcg@10", "ndcg@20", "mrr"}
    want = {
        "recall@1": [1, 0, 0, 0], "recall@3": [1, 1, 0, 0], "recall@10": [1, 1, 0, 0], "recall@12": [1, 1, 1, 0],
        "ndcg@3": [1, 0.5, 0, 0], "ndcg@10": [1, 0.5, 0, 0], "ndcg@20": [1, 0.5, 1 / math.log2(12), 0],
        "mrr": [1, 1 / 3, 1 / 11, 0],
    }
    for k, v in want.items():
        assert m[k].dtype == torch.float64
        torch.testing.assert_close(m[k], torch.tensor(v, dtype=torch.float64), msg=k)
    # the defaults: recall@K only for K <= N = 12
    assert set(list_metrics(lists, targets)) == {"recall@10", "ndcg@10", "ndcg@20", "mrr"}


def test_list_metrics_equal_ranking_metrics_on_the_full_ranking():
    gen = torch.Generator().manual_seed(0)
    B, I = 32, 300
    scores = torch.rand(B, I, generator=gen, dtype=torch.float64).float()
    targets = torch.randint(0, I, (B,), generator=gen)
    assert (scores == scores[torch.arange(B), targets][:, None]).sum(1).eq(1).all()  # no ties with the target
    full = ranking_metrics(scores, targets)
    got = list_metrics(scores.argsort(1, descending=True), targets)
    assert set(got) == set(full) == {f"recall@{k}" for k in RECALL_KS} | {f"ndcg@{k}" for k in NDCG_KS} | {"mrr"}
    for k in full:
        torch.testing.assert_close(got[k], full[k], msg=k)
    assert 0 < float(full["mrr"].mean()) < 1 and 0 < float(full["recall@50"].mean()) < 1  # not trivial

    # with excluded items: the list is the ranking without them, padded with -1 to the same width
    excl = torch.rand(B, I, generator=gen) < 0.3
    excl[torch.arange(B), targets] = False
    rows, cols = excl.nonzero(as_tuple=True)
    full = ranking_metrics(scores, targets, (rows, cols))
    masked = scores.masked_fill(excl, -math.inf)
    order = masked.argsort(1, descending=True)
    lists = torch.where(torch.gather(excl, 1, order), torch.full_like(order, -1), order)
    got = list_metrics(lists, targets)
    for k in full:
        torch.testing.assert_close(got[k], full[k], msg=k)

    # a top-100 list: recall@K<=100 and NDCG agree; MRR agrees where the target made the list, else 0
    got = list_metrics(scores.argsort(1, descending=True)[:, :100], targets)
    full = ranking_metrics(scores, targets)
    for k in ("recall@10", "recall@100", "ndcg@10", "ndcg@20"):
        torch.testing.assert_close(got[k], full[k], msg=k)
    inside = full["recall@100"] == 1
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(got["mrr"], torch.where(inside, full["mrr"], torch.zeros_like(full["mrr"])))


# --------------------------------------------------------------------------------------------------
# FeaturePipeline.history_events and for_request


def test_history_events_are_the_latest_earlier_events_in_protocol_order(full_pipe, ml100k_data):
    d = ml100k_data
    rng = np.random.default_rng(0)
    firsts = [timeline(d, u)[0] for u in (0, 1)]  # no earlier events
    rows = np.r_[rng.choice(len(d.ts), 25, replace=False), firsts, d.rows(TEST)[:3]]
    for max_len in (3, 50):
        events, lengths = full_pipe.history_events(rows, max_len)
        assert lengths.sum() == len(events)
        got = np.split(events, np.cumsum(lengths)[:-1])
        for r, ev in zip(rows, got):
            want = earlier_events(d, int(r))[-max_len:]
            assert ev.tolist() == want, f"row {r}, max_len {max_len}"
    assert lengths[25] == lengths[26] == 0
    assert (lengths[:25] == 50).any() and (lengths[:25] < 50).any()
    # session_only: the earlier events chained to this one by gaps <= session_gap_s
    events, lengths = full_pipe.history_events(rows, 50, session_only=True)
    gap = full_pipe.schema.session_gap_s
    for r, ev in zip(rows, np.split(events, np.cumsum(lengths)[:-1])):
        chain = earlier_events(d, int(r)) + [int(r)]
        start = len(chain) - 1
        while start > 0 and d.ts[chain[start]] - d.ts[chain[start - 1]] <= gap:
            start -= 1
        assert ev.tolist() == chain[start:-1][-50:]
    assert (lengths > 0).any()


def _users_for_request(pipe: FeaturePipeline, data: SplitData) -> list[int]:
    """One user whose test event is deep in a session and whose history is longer than 50, and one
    whose test event starts a new session."""
    test = data.rows(TEST)
    users = data.user_idx[test]
    in_session = pipe.timeline_pos[test] - (pipe.session_start[test] - pipe.timeline_ptr[users])
    count = np.diff(pipe.timeline_ptr)[users]
    deep = users[(in_session > 3) & (count > 60)]
    fresh = users[(in_session == 0) & (count < 40)]
    assert len(deep) and len(fresh)
    return [int(deep[0]), int(fresh[0])]


def test_request_features_equal_the_logged_event_features(full_schema, full_pipe, ml100k_data):
    """Serving user u at the time of their last event, from data without that event, reads exactly the
    features training read for that event (user and context towers)."""
    d = ml100k_data
    sessions = []
    for u in _users_for_request(full_pipe, d):
        features = {}
        removed = timeline(d, u)[-1]
        assert d.split[removed] == TEST
        t = d.tables
        reduced_tables = Tables(t.interactions.drop(index=removed).reset_index(drop=True), t.users.copy(),
                                t.items.copy(), None)
        reduced_data = SplitData.from_tables(reduced_tables)
        assert len(reduced_data.ts) == len(d.ts) - 1 and reduced_data.num_users == d.num_users
        reduced = FeaturePipeline(full_schema, reduced_data)
        view, row = reduced.for_request(u, [], [], now=int(d.ts[removed]))
        assert row == len(timeline(d, u)) - 1
        for tower in ("user", "context"):
            got = tower_as_python(view.query(np.array([row]), tower))
            want = tower_as_python(full_pipe.query(np.array([removed]), tower))
            assert got == want, f"user {u}, tower {tower}"
            features[tower] = want
        # the features compared are not trivial: up to 50 history items, the session as chosen
        assert features["user"]["hist_items"][1] == [min(50, row)]
        sessions.append(features["user"]["session_items"][1][0])
    assert sessions[0] > 3 and sessions[1] == 0
    # the request view left the pipeline it came from untouched
    assert len(reduced.item_idx) == len(d.ts) - 1 and len(reduced.order) == len(d.ts) - 1


def test_request_extra_items_are_the_newest_history(full_schema, full_pipe, ml100k_data):
    d = ml100k_data
    u = 10
    line = timeline(d, u)
    n = len(line)
    seen = set(d.item_idx[line].tolist())
    a, b = [i for i in range(d.num_items) if i not in seen][:2]
    t_last = int(d.ts[line[-1]])
    t1, t2, t3 = t_last + 7200, t_last + 7260, t_last + 7380  # a new session: a, b, then the request
    before = tower_as_python(full_pipe.query(np.array(line[-1:]), "user"))

    view, row = full_pipe.for_request(u, [a, b], [t1, t2], now=t3)
    assert row == n + 2
    user = tower_as_python(view.query(np.array([row]), "user"))
    hist, lengths = user["hist_items"]
    assert lengths == [min(50, n + 2)] and hist[-2:] == [a, b]
    assert hist[:-2] == d.item_idx[line].tolist()[-48:]  # then the user's own latest items
    assert user["session_items"] == ([a, b], [2])  # > 30 minutes after their last event: a new session
    age_edges = np.array(full_schema["hist_age"].buckets)
    assert user["hist_age"][0][-2:] == (1 + np.digitize([t3 - t1, t3 - t2], age_edges)).tolist()
    activity = np.expm1(np.array(user["__dense__"])[0, 0])
    assert full_schema.tower("user", "dense")[0].name == "user_activity"
    plain, plain_row = full_pipe.for_request(u, [], [], now=t3)
    plain_activity = np.expm1(plain.query(np.array([plain_row]), "user").dense.numpy()[0, 0])
    assert plain_activity == pytest.approx(n, rel=1e-5) and activity == pytest.approx(n + 2, rel=1e-5)
    ctx = tower_as_python(view.query(np.array([row]), "context"))
    pos_edges = np.array(full_schema["session_pos"].buckets)
    assert ctx["session_pos"][0] == [1 + int(np.digitize(2, pos_edges))]  # third event of its session
    assert ctx["hour"][0] == [(t3 // 3600) % 24]
    # the pipeline itself did not change
    assert tower_as_python(full_pipe.query(np.array(line[-1:]), "user")) == before


# --------------------------------------------------------------------------------------------------
# Retriever.search / seen_before


def bare_retriever(vectors: np.ndarray) -> Retriever:
    """A Retriever over a flat index of ``vectors``: ``search`` reads only ``index``."""
    r = Retriever.__new__(Retriever)
    r.index = ItemIndex.build(vectors, kind="flat")
    r.item_vectors = r.index.index.reconstruct_n(0, r.index.num_items)
    return r


def test_search_returns_the_top_k_unseen_items_by_inner_product():
    rng = np.random.default_rng(0)
    I, dim, k = 40, 8, 10
    vectors = rng.normal(size=(I, dim)).astype(np.float32)
    queries = rng.normal(size=(5, dim)).astype(np.float32)
    r = bare_retriever(vectors)
    scores = queries @ vectors.T
    top = np.argsort(-scores, 1)
    seen_lists = [
        [],                                       # nothing seen
        top[1, :5].tolist() + [int(top[1, 30])],  # the 5 best, and one far down
        top[2, ::2].tolist(),                     # every other item: 20 left
        [i for i in range(I) if i not in top[3, :4]],  # all but 4: fewer than k remain
        list(range(I)),                           # everything seen
    ]
    ptr = np.r_[0, np.cumsum([len(s) for s in seen_lists])].astype(np.int64)
    seen = (ptr, np.array([i for s in seen_lists for i in s], np.int64))
    items, got_scores = r.search(queries, k, seen=seen)
    assert items.shape == got_scores.shape == (5, k) and items.dtype == np.int64
    for b, s in enumerate(seen_lists):
        allowed = np.setdiff1d(np.arange(I), s)
        want = allowed[np.argsort(-scores[b, allowed])][:k]
        n = len(want)
        assert items[b, :n].tolist() == want.tolist(), f"query {b}"
        np.testing.assert_allclose(got_scores[b, :n], scores[b, want], rtol=1e-5, atol=1e-5)
        assert (items[b, n:] == -1).all() and np.isneginf(got_scores[b, n:]).all()
        assert not set(items[b].tolist()) & set(s)
    assert (items[3] >= 0).sum() == 4 and (items[4] == -1).all()
    # no seen lists: plain top-k; k larger than the catalogue: padded
    items, _ = r.search(queries, k)
    assert (items == top[:, :k]).all()
    items, got_scores = r.search(queries[:1], I + 5)
    assert items[0, :I].tolist() == top[0].tolist() and (items[0, I:] == -1).all() and np.isneginf(got_scores[0, I:]).all()
    items, got_scores = r.search(queries[:0], k)
    assert items.shape == (0, k)


def test_seen_before_is_the_eval_protocol_exclusion(full_pipe, ml100k_data):
    """The items the retriever removes before a valid/test event are exactly the protocol's excluded ones."""
    for split in ("valid", "test"):
        es = EvalSet.build(ml100k_data, split)
        ptr, items = Retriever.seen_before(full_pipe, es.rows)
        assert len(ptr) == len(es) + 1
        for i in range(0, len(es), 37):
            got = sorted(items[ptr[i]:ptr[i + 1]].tolist())
            assert got == sorted(es.exclude_items[es.exclude_ptr[i]:es.exclude_ptr[i + 1]].tolist())
            assert got == sorted(ml100k_data.item_idx[earlier_events(ml100k_data, int(es.rows[i]))].tolist())


# --------------------------------------------------------------------------------------------------
# PairFeatures and genre_matrix


def test_genre_matrix_is_the_items_genre_multi_hot(ml100k_data):
    items = ml100k_data.tables.items
    g = genre_matrix(items)
    vocab = sorted({x for gs in items["genres"] for x in gs})
    assert g.shape == (ml100k_data.num_items, len(vocab)) and g.dtype == np.float32
    for i in (0, 1, 500, ml100k_data.num_items - 1):
        assert [vocab[j] for j in np.flatnonzero(g[i])] == sorted(items["genres"].iloc[i])
    assert set(np.unique(g)) == {0.0, 1.0}


def test_pair_features_by_hand(full_pipe, ml100k_data):
    d = ml100k_data
    rng = np.random.default_rng(1)
    dim, K, profile_len = 6, 8, 5
    vectors = rng.normal(size=(d.num_items, dim)).astype(np.float32)
    genres = genre_matrix(d.tables.items)
    pf = PairFeatures(vectors, genres, profile_len=profile_len)
    first_event = timeline(d, 3)[0]
    rows = np.r_[d.rows(TEST)[:3], first_event]
    queries = rng.normal(size=(len(rows), dim)).astype(np.float32)
    lists = rng.choice(d.num_items, size=(len(rows), K), replace=False)
    lists[1, 6:] = -1  # a short list
    def outside(b):  # an item not in row b's list
        return next(i for i in range(d.num_items) if i not in lists[b])
    cands = np.array([[lists[0, 2], lists[0, 0], outside(0), -1],
                      [lists[1, 5], outside(1), -1, lists[1, 0]],
                      [lists[2, 7], lists[2, 3], outside(2), lists[2, 1]],
                      [lists[3, 1], outside(3), lists[3, 0], -1]])
    out = pf(full_pipe, rows, queries, cands, lists)
    assert out.shape == (4, 4, 5) and out.dtype == np.float32
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for b in range(4):
        history = d.item_idx[earlier_events(d, int(rows[b]))[-profile_len:]]
        profile = sum((genres[i] / np.linalg.norm(genres[i]) for i in history), np.zeros(genres.shape[1]))
        for c in range(4):
            item = cands[b, c]
            if item < 0:
                assert (out[b, c] == 0).all()
                continue
            assert out[b, c, 0] == pytest.approx(float(queries[b] @ vectors[item]), rel=1e-5, abs=1e-5)
            pos = np.flatnonzero(lists[b] == item)
            assert out[b, c, 1] == pytest.approx(math.log(pos[0] + 1) if len(pos) else math.log(K + 1))  # rank = position + 1
            g = genres[item]
            cosine = profile @ g / (np.linalg.norm(profile) * np.linalg.norm(g)) if len(history) else 0.0
            assert out[b, c, 2] == pytest.approx(cosine, abs=1e-6)
            recent = d.item_idx[earlier_events(d, int(rows[b]))[-PairFeatures.RECENT:]]
            sims = [float(unit[item] @ unit[i]) for i in recent]
            assert out[b, c, 3] == pytest.approx(sims[-1] if sims else 0.0, abs=1e-5)  # the last item
            assert out[b, c, 4] == pytest.approx(max(sims) if sims else 0.0, abs=1e-5)  # the closest recent one
    assert out[0, 0, 1] == pytest.approx(math.log(3)) and out[0, 1, 1] == 0.0  # positions 3 and 1 of the list
    assert out[0, 2, 1] == pytest.approx(math.log(K + 1))
    assert (out[:3, :, 2] > 0).any() and (out[3, :, 2] == 0).all()  # row 3 has no history: no profile


# --------------------------------------------------------------------------------------------------
# RankingDataModule: training pairs and evaluation lists from a trained retriever

HARD, UNIFORM, CANDIDATES = 10, 1000, 10  # many uniform draws: some hit the positive; hard_pool >= K


@pytest.fixture(scope="module")
def ranking_dm(tmp_path_factory):
    out = tmp_path_factory.mktemp("retriever") / "run"
    proc = run("recfunnel.train", "debug=fast", "logger=csv", f"paths.data_dir={DATA_DIR}", "features=ml100k_seq",
               "model.net.history_encoder=attention", "data.train_windows=16", "data.batch_size=256",
               f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    retriever = Retriever.from_run(out)
    features = yaml.safe_load((ROOT / "configs/features/ml100k_rank.yaml").read_text())
    dm = RankingDataModule(retriever, features, candidates=CANDIDATES, hard_pool=HARD, hard_negatives=HARD,
                           uniform_negatives=UNIFORM, max_events_per_user=2, batch_size=64, eval_batch_size=64,
                           retrieved_positives_only=False)  # events whose positive is outside the pool too
    dm.setup()
    return dm


def test_train_rows_are_each_users_latest_train_events_with_their_retrieved_lists(ranking_dm):
    dm, d, r = ranking_dm, ranking_dm.data, ranking_dm.retriever
    latest = np.array(sorted(row for u in range(d.num_users)
                             for row in [x for x in timeline(d, u) if d.split[x] == TRAIN][-2:]))
    assert len(latest) == 2 * d.num_users
    queries = r.query_vectors(r.pipeline, latest)
    lists, _ = r.search(queries, CANDIDATES, seen=r.seen_before(r.pipeline, latest))
    if getattr(dm, "retrieved_positives_only", False):  # only events whose positive was retrieved
        latest = latest[(lists == d.item_idx[latest][:, None]).any(1)]
    assert len(dm.train_rows) > 0 and sorted(dm.train_rows.tolist()) == latest.tolist()
    assert (d.split[dm.train_rows] == TRAIN).all()
    # each row keeps its own query vector and list (earlier items removed)
    np.testing.assert_allclose(dm.train_queries, r.query_vectors(r.pipeline, dm.train_rows), rtol=1e-5, atol=1e-6)
    want, _ = r.search(dm.train_queries, max(HARD, CANDIDATES), seen=r.seen_before(r.pipeline, dm.train_rows))
    assert (dm.train_lists == want).all()


def _assert_same_batch(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert tower_as_python(a[k]) == tower_as_python(b[k]), k


def test_training_pairs(ranking_dm):
    dm, d = ranking_dm, ranking_dm.data
    pos_all = d.item_idx[dm.train_rows]
    in_pool = np.flatnonzero((dm.train_lists[:, :HARD] == pos_all[:, None]).any(1))[:40]
    assert len(in_pool) > 0, "no train event has its positive in the retriever's top hard_pool"
    assert (dm.train_lists >= 0).all()
    positions = np.r_[in_pool, np.setdiff1d(np.arange(min(len(pos_all), 60)), in_pool)]
    ds = TrainPairs(dm)
    key = (0, 3, 7, positions.tolist())
    batch = ds[key]
    rows = dm.train_rows[positions]
    B, C = len(rows), 1 + HARD + UNIFORM
    cand, label, mask = batch["cand_idx"].numpy(), batch["label"].numpy(), batch["mask"].numpy()
    assert cand.shape == mask.shape == (B, C) and label.shape == (B, C, 1) and batch["pair_dense"].shape == (B, C, len(PAIR_FEATURES))
    assert batch["cand"].batch_size == B * C and batch["user"].batch_size == B
    pos = d.item_idx[rows]
    assert (cand[:, 0] == pos).all() and (label[:, 0] == 1).all() and (label[:, 1:] == 0).all()
    hard, uniform = cand[:, 1:1 + HARD], cand[:, 1 + HARD:]
    for b in range(B):
        pool = dm.train_lists[positions[b], :HARD]
        h = hard[b][hard[b] >= 0]
        before = set(d.item_idx[earlier_events(d, int(rows[b]))].tolist())
        assert set(h.tolist()) <= set(pool.tolist()) and len(set(h.tolist())) == len(h)
        assert pos[b] not in h and not set(h.tolist()) & before
        # hard_negatives == hard_pool: every usable pool item is drawn
        assert sorted(h.tolist()) == sorted(i for i in pool.tolist() if i >= 0 and i != pos[b])
    # an empty hard slot exactly where the positive took a pool place
    assert ((hard < 0).sum(1) == np.isin(np.arange(B), np.arange(len(in_pool))).astype(int)).all()
    assert (uniform >= 0).all() and (uniform < d.num_items).all()
    want_mask = np.concatenate([np.ones((B, 1), bool), hard >= 0, uniform != pos[:, None]], 1)
    assert (mask == want_mask).all()
    assert (~mask[:, 1:1 + HARD]).any() and (~mask[:, 1 + HARD:]).any()  # both kinds of masked slot occur
    # the candidates' item tower and the pair features are those of these items
    item_ids = batch["cand"].sparse["item_id"].values().numpy()
    np.testing.assert_array_equal(item_ids, np.maximum(cand, 0).reshape(-1))
    score = np.einsum("bd,bcd->bc", dm.train_queries[positions], dm.retriever.item_vectors[np.maximum(cand, 0)])
    np.testing.assert_allclose(batch["pair_dense"][..., 0].numpy(), np.where(cand >= 0, score, 0), rtol=1e-4, atol=1e-5)
    # the same key gives the same batch; another batch index draws other negatives
    _assert_same_batch(batch, TrainPairs(dm)[key])
    other = ds[(0, 3, 8, positions.tolist())]
    assert torch.equal(other["cand_idx"][:, 0], batch["cand_idx"][:, 0])
    assert not torch.equal(other["cand_idx"][:, 1 + HARD:], batch["cand_idx"][:, 1 + HARD:])


def test_eval_lists_exclude_the_protocols_items_and_are_the_retrievers_top_k(ranking_dm):
    dm, d = ranking_dm, ranking_dm.data
    vectors = dm.retriever.item_vectors
    for split in ("valid", "test"):
        es = EvalSet.build(d, split)
        assert (dm.eval_rows[split] == es.rows).all()
        lists, scores = dm.eval_lists[split], dm.eval_scores[split]
        assert lists.shape == (len(es), CANDIDATES) and (lists >= 0).all()
        for i in range(len(es)):
            excluded = es.exclude_items[es.exclude_ptr[i]:es.exclude_ptr[i + 1]]
            assert not np.isin(lists[i], excluded).any(), f"{split} user {es.users[i]}"
            assert len(np.unique(lists[i])) == CANDIDATES
        for i in range(0, len(es), 97):  # the top-K by inner product among the allowed items
            full = vectors @ dm.eval_queries[split][i]
            full[es.exclude_items[es.exclude_ptr[i]:es.exclude_ptr[i + 1]]] = -np.inf
            kth = np.sort(full)[-CANDIDATES]
            assert (full[lists[i]] >= kth - 1e-4).all()
            np.testing.assert_allclose(scores[i], full[lists[i]], rtol=1e-4, atol=1e-4)
            assert (np.diff(scores[i]) <= 1e-6).all()
    # the evaluation batch carries the target, the list and its scores
    batch = next(iter(dm.val_dataloader()))
    n = batch["cand_idx"].shape[0]
    assert torch.equal(batch["cand_idx"], torch.from_numpy(dm.eval_lists["valid"][:n]))
    assert torch.equal(batch["target"], torch.from_numpy(d.item_idx[dm.eval_rows["valid"][:n]]))
    assert (d.split[dm.eval_rows["valid"][:n]] == VALID).all()
    torch.testing.assert_close(batch["pair_dense"][..., 0], batch["retrieval_score"], rtol=1e-4, atol=1e-4)
    ranks = batch["pair_dense"][..., 1]
    torch.testing.assert_close(ranks, torch.log(torch.arange(1, CANDIDATES + 1, dtype=torch.float32)).expand(n, -1))
