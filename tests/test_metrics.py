"""Metric core against a plain per-user loop, and the most-popular reference row."""

import math

import numpy as np
import pytest
import torch

from recfunnel.data.dataset import SplitData
from recfunnel.eval.metrics import count_where, ranking_metrics
from recfunnel.eval.protocol import EvalSet, evaluate
from recfunnel.models.popularity import Popularity


def loop_metrics(scores, target, excluded):
    """Expected metrics for one user, by enumerating the equally likely ranks."""
    s_t = scores[target]
    cand = [j for j in range(len(scores)) if j == target or j not in excluded]
    g = sum(scores[j] > s_t for j in cand)
    t = sum(scores[j] == s_t for j in cand) - 1
    ranks = range(g + 1, g + t + 2)
    out = {f"recall@{k}": sum(r <= k for r in ranks) / (t + 1) for k in (10, 20, 50, 100)}
    out.update({f"ndcg@{k}": sum(1 / math.log2(r + 1) for r in ranks if r <= k) / (t + 1) for k in (10, 20)})
    out["mrr"] = sum(1 / r for r in ranks) / (t + 1)
    return out


def test_vectorised_metrics_match_loop_with_many_ties():
    rng = np.random.default_rng(0)
    users, items = 60, 150
    scores = rng.integers(0, 6, size=(users, items)).astype(np.float32)  # heavy ties
    scores[:5] = 1.0  # all tied
    targets = rng.integers(0, items, size=users)
    exclude = rng.random((users, items)) < 0.3
    exclude[np.arange(users), targets] = True  # the target must never be excluded
    got = ranking_metrics(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(exclude))
    for u in range(users):
        want = loop_metrics(scores[u], targets[u], set(np.flatnonzero(exclude[u])))
        for k, v in want.items():
            assert got[k][u].item() == pytest.approx(v, abs=1e-12), (u, k)


def test_exclusion_pairs_equal_mask():
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.integers(0, 4, size=(20, 30)).astype(np.float32))
    targets = torch.from_numpy(rng.integers(0, 30, size=20))
    mask = torch.from_numpy(rng.random((20, 30)) < 0.4)
    pairs = mask.nonzero(as_tuple=True)
    a, b = ranking_metrics(scores, targets, mask), ranking_metrics(scores, targets, pairs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mrr"], ranking_metrics(scores, targets)["mrr"])  # exclusions matter here


def test_continuous_scores_give_usual_rank():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.1]])
    m = ranking_metrics(scores, torch.tensor([1]))  # target is 3rd
    assert m["mrr"].item() == pytest.approx(1 / 3)
    assert m["ndcg@10"].item() == pytest.approx(1 / math.log2(4))


def test_most_popular_reproduces_reference_row(ml100k_data: SplitData):
    model = Popularity().fit(ml100k_data)
    evalset = EvalSet.build(ml100k_data, "test")
    m = evaluate(model.scorer(evalset), evalset, ml100k_data.num_items, chunk_size=300)
    reference = {"recall@10": 0.0848, "recall@20": 0.1267, "recall@50": 0.1987, "ndcg@10": 0.0441, "ndcg@20": 0.0546}
    for k, v in reference.items():
        assert round(m[k], 4) == v, k


def test_exclusions_follow_protocol(ml100k_data: SplitData):
    d = ml100k_data
    valid, test = EvalSet.build(d, "valid"), EvalSet.build(d, "test")
    u = 0
    seen_train = set(d.item_idx[(d.user_idx == valid.users[u]) & (d.split == 0)])
    assert set(valid.exclude_items[valid.exclude_ptr[u]:valid.exclude_ptr[u + 1]]) == seen_train
    tu = int(np.flatnonzero(test.users == valid.users[u])[0])
    seen_test = set(d.item_idx[(d.user_idx == test.users[tu]) & (d.split <= 1)])
    assert set(test.exclude_items[test.exclude_ptr[tu]:test.exclude_ptr[tu + 1]]) == seen_test


def test_counts_through_a_reused_float_buffer_equal_bool_mask_sums():
    torch.manual_seed(0)
    scores = torch.randint(0, 50, (40, 3000)).float()  # many exact ties
    threshold = scores[:, 7:8]
    work = torch.full_like(scores, 123.0)  # stale contents from an earlier chunk must not matter
    for compare in (torch.gt, torch.eq):
        want = compare(scores, threshold).sum(1)
        assert torch.equal(count_where(compare, scores, threshold, work), want)
        assert torch.equal(count_where(compare, scores, threshold), want)
    targets = torch.full((40,), 7)
    assert torch.equal(ranking_metrics(scores, targets, work=work)["mrr"], ranking_metrics(scores, targets)["mrr"])
