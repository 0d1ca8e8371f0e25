"""Named slices of the evaluation (``recfunnel.eval.slices``): which targets are cold, which have a search
query, their masked means, and the ``{valid,test}/<slice>/...`` keys of every run's ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from recfunnel import compare
from recfunnel.data.dataset import TEST, VALID, SplitData
from recfunnel.data.loaders import RankBlockBatches
from recfunnel.data.tables import Tables
from recfunnel.eval.funnel import stage_metrics
from recfunnel.eval.protocol import EvalSet, evaluate
from recfunnel.eval.slices import (
    COLD_MAX_TRAIN_EVENTS,
    SLICES,
    cold_targets,
    metric_means,
    query_targets,
    slice_means,
    slice_metrics,
    slice_sums,
    target_slices,
)
from recfunnel.models.popularity import Popularity
from recfunnel.runs import evaluate as evaluate_job
from recfunnel.serving.rerank import Slate
from recfunnel.tasks.ranking import RankingTask
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, ROOT, wandb_runs

# user → items in time order; the last is test, the one before valid, the rest train. Train events per
# item: 1 → 6, 2 → 5 (warm: exactly the threshold), 3 → 4 (cold: one under it), 4 and 5 → 0
TIMELINES = {1: [1, 2, 3, 4, 2], 2: [1, 2, 3, 1, 3], 3: [1, 2, 3, 2, 4], 4: [1, 2, 3, 5, 1], 5: [1, 2, 3, 5],
             6: [1, 3, 1]}
COLD_VALID = [True, False, False, True, True, True]  # targets 4, 1, 2, 5, 3, 3
COLD_TEST = [False, True, True, False, True, False]  # targets 2, 3, 4, 1, 5, 1
METRICS = ("recall@10", "ndcg@10")


# The search query of some events, by (user, position in TIMELINES): the rest have none. The valid event
# of user 1 has one but not its test event: a target's own event counts, not its user's other events.
QUERIES = {(1, 3): "cozy film", (3, 4): "spicy noodles", (4, 4): "Ночь кино", (6, 2): "a"}
MISSING = {(1, 4): None, (2, 3): "", (2, 4): "", (5, 2): "  ", (5, 3): "\t", (6, 1): float("nan")}
QUERY_VALID = [True, False, False, False, False, False]
QUERY_TEST = [False, False, True, True, False, True]  # users 3, 4, 6


def tiny_data(queries: dict | None = None, dtype: str = "object") -> SplitData:
    rows = [(u, i, 100 * t) for u, items in TIMELINES.items() for t, i in enumerate(items)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(rating=1.0)
    if queries is not None:  # a query column: these values, None elsewhere
        inter["query"] = pd.Series([queries.get((u, t)) for u, items in TIMELINES.items() for t in range(len(items))],
                                   dtype=dtype)
    tables = Tables(inter, pd.DataFrame({"user_id": list(TIMELINES)}), pd.DataFrame({"item_id": [1, 2, 3, 4, 5]}))
    return SplitData.from_tables(tables)


@pytest.fixture(scope="module")
def tiny() -> SplitData:
    return tiny_data()


@pytest.fixture(scope="module")
def tiny_query() -> SplitData:
    return tiny_data({**QUERIES, **MISSING})


def test_cold_targets_by_hand(tiny):
    assert COLD_MAX_TRAIN_EVENTS == 5
    assert tiny.item_counts().tolist() == [6, 5, 4, 0, 0]
    for name, code, want in (("valid", VALID, COLD_VALID), ("test", TEST, COLD_TEST)):
        assert cold_targets(tiny, tiny.rows(code)).tolist() == want
        assert EvalSet.build(tiny, name).slices["cold"].tolist() == want  # one target per user, in user order here


@pytest.mark.parametrize("dtype", ["object", "str", "string"])  # missing as None/NaN, NaN, pd.NA
def test_query_targets_by_hand(tiny_query, dtype):
    data = tiny_query if dtype == "object" else tiny_data({**QUERIES, **MISSING}, dtype)
    assert list(SLICES) == ["cold", "query"]
    for name, code, want, cold in (("valid", VALID, QUERY_VALID, COLD_VALID), ("test", TEST, QUERY_TEST, COLD_TEST)):
        assert query_targets(data, data.rows(code)).tolist() == want
        slices = EvalSet.build(data, name).slices
        assert list(slices) == ["cold", "query"]
        assert slices["query"].tolist() == want and slices["cold"].tolist() == cold


def test_without_a_query_column_there_is_no_query_slice(tiny, caplog):
    assert query_targets(tiny, tiny.rows(TEST)) is None
    assert list(target_slices(tiny, tiny.rows(TEST))) == ["cold"]
    test = EvalSet.build(tiny, "test")
    with caplog.at_level(logging.INFO, logger="recfunnel.eval.slices"):
        m = evaluate(Popularity().fit(tiny).scorer(test), test, tiny.num_items)
    assert not [k for k in m if k.startswith("query/")] and m["cold/targets"] == 3
    assert not [r for r in caplog.records if r.name == "recfunnel.eval.slices"]  # no line about a slice that does not apply


def test_slice_means_mask_the_per_target_values():
    per_target = {"recall@10": torch.tensor([1.0, 0.0, 1.0, 0.0]), "ndcg@10": torch.tensor([0.5, 0.25, 1.0, 0.0])}
    cold, query = np.array([True, True, False, True]), np.array([False, False, True, True])
    assert slice_metrics(per_target, {"cold": cold, "query": query}) == {
        "cold/recall@10": 1 / 3, "cold/ndcg@10": 0.75 / 3, "cold/targets": 3.0,
        "query/recall@10": 0.5, "query/ndcg@10": 0.5, "query/targets": 2.0}
    # sums of chunks add up: two chunks give the means of the whole
    a = slice_sums({k: v[:2] for k, v in per_target.items()}, cold[:2], "cold")
    b = slice_sums({k: v[2:] for k, v in per_target.items()}, cold[2:], "cold")
    assert slice_means({k: a[k] + b[k] for k in a}, "cold") == slice_metrics(per_target, {"cold": cold})
    # what the tasks and the protocol do with added-up sums: overall means over all targets, each
    # slice's over its own; a slice without targets keeps its count only
    sums = {"recall@10": 2.0, **{k: a[k] + b[k] for k in a}, **slice_sums(per_target, np.zeros(4, bool), "query")}
    assert metric_means(sums, 4) == {"recall@10": 0.5, "cold/recall@10": 1 / 3, "cold/ndcg@10": 0.75 / 3,
                                     "cold/targets": 3.0, "query/targets": 0.0}


def test_a_slice_without_targets_gives_the_count_only_and_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="recfunnel.eval.slices"):
        got = slice_metrics({"ndcg@10": torch.tensor([0.5, 1.0])}, {"cold": np.array([False, False]),
                                                                    "query": np.array([False, False])}, where="test")
    assert got == {"cold/targets": 0.0, "query/targets": 0.0}
    assert [r.getMessage().split(";")[0] for r in caplog.records] == ["test: no cold targets", "test: no query targets"]


def test_a_bad_mask_is_one_clear_error():
    with pytest.raises(RecfunnelError, match="one flag per target"):
        slice_sums({"ndcg@10": torch.zeros(3)}, np.array([True, False]), "cold")
    with pytest.raises(RecfunnelError, match="the query mask must be a 1-d bool"):
        slice_sums({"ndcg@10": torch.zeros(2)}, np.array([1, 0]), "query")


def test_protocol_evaluation_reports_the_cold_slice_by_hand(tiny):
    """Most popular (scores 6, 5, 4, 0, 0) on test, train + valid items excluded. The cold targets:
    user 2's item 3 (candidates 3, 4, 5: rank 1), user 3's item 4 and user 5's item 5 (candidates
    4, 5, tied at 0: rank 1 or 2)."""
    test = EvalSet.build(tiny, "test")
    m = evaluate(Popularity().fit(tiny).scorer(test), test, tiny.num_items)
    assert m["cold/targets"] == 3
    assert m["cold/recall@10"] == pytest.approx(1.0)
    assert m["cold/ndcg@10"] == pytest.approx((1 + 2 * TIED_NDCG) / 3)
    assert m["cold/mrr"] == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert not [k for k in m if k.startswith("query/")]


TIED_NDCG = (1 + 1 / math.log2(3)) / 2  # a target tied with one other item at the top: rank 1 or 2


def test_protocol_evaluation_reports_the_query_slice_by_hand(tiny_query, caplog):
    """Most popular on test, as above. The targets with a query: user 3's item 4 (tied with 5 at 0:
    rank 1 or 2), user 4's item 1 (candidates 1, 4: rank 1), user 6's item 1 (candidates 1, 2, 4, 5:
    rank 1)."""
    test = EvalSet.build(tiny_query, "test")
    m = evaluate(Popularity().fit(tiny_query).scorer(test), test, tiny_query.num_items)
    assert m["query/targets"] == 3
    assert m["query/recall@10"] == pytest.approx(1.0)
    assert m["query/ndcg@10"] == pytest.approx((TIED_NDCG + 2) / 3)
    assert m["query/mrr"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert m["mrr"] == pytest.approx((4 + 2 * 0.75) / 6) and m["cold/targets"] == 3  # the rest unchanged
    # a query column but no target with a query: the count only, and one line
    none = tiny_data({(1, 3): "cozy film"})
    test = EvalSet.build(none, "test")
    with caplog.at_level(logging.INFO, logger="recfunnel.eval.slices"):
        m = evaluate(Popularity().fit(none).scorer(test), test, none.num_items)
    assert m["query/targets"] == 0 and not [k for k in m if k.startswith("query/") and k != "query/targets"]
    assert [r.getMessage() for r in caplog.records if r.name == "recfunnel.eval.slices"] == [
        "test: no query targets; the query/ metrics are left out"]
    valid = EvalSet.build(none, "valid")
    assert evaluate(Popularity().fit(none).scorer(valid), valid, none.num_items)["query/targets"] == 1


def test_funnel_stages_report_each_slice_by_hand():
    """Three users' lists of 10 (of 12 items), target item 0 at rank 1, at rank 2, and not in the list."""
    items = np.array([[0, *range(1, 10)], [1, 0, *range(2, 10)], list(range(1, 11))])
    slate, targets, genres = Slate(items, np.zeros(items.shape)), np.zeros(3, np.int64), np.eye(12, dtype=np.float32)
    slices = {"cold": np.array([True, False, True]), "query": np.array([False, True, True])}
    m = stage_metrics({"final": slate}, targets, 10, 12, genres, slices)
    assert m["final/mrr"] == pytest.approx(0.5) and m["final/recall@10"] == pytest.approx(2 / 3)
    assert m["final/cold/mrr"] == pytest.approx(0.5) and m["final/cold/ndcg@10"] == pytest.approx(0.5)
    assert m["final/query/mrr"] == pytest.approx(0.25) and m["final/query/recall@10"] == pytest.approx(0.5)
    assert m["final/query/ndcg@10"] == pytest.approx(1 / math.log2(3) / 2)
    assert not [k for k in m if k.endswith("/targets")]  # the counts are evaluate_funnel's, once per split
    assert not [k for k in stage_metrics({"final": slate}, targets, 10, 12, genres) if "/cold/" in k or "/query/" in k]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranker_batches_find_their_slices_on_every_rank(tiny_query, monkeypatch, world):
    """The ranker's evaluation batches carry their targets' positions (``eval_pos``): each rank's
    block of the evaluation loader finds its targets' slices, in any order."""
    rows = EvalSet.build(tiny_query, "test").rows
    dm = SimpleNamespace(eval_rows={"test": rows}, data=tiny_query, pipeline=tiny_query)
    got = {name: [] for name in SLICES}
    for rank in range(world):
        monkeypatch.setattr("recfunnel.data.loaders.rank_world", lambda r=rank: (r, world))
        task = SimpleNamespace(trainer=SimpleNamespace(datamodule=dm))  # the evaluation hooks' view of a task
        RankingTask.eval_start(task, "test")
        for positions in RankBlockBatches(len(rows), 2):
            batch = {"eval_pos": torch.as_tensor(np.asarray(positions))}
            for name, mask in RankingTask.eval_slices(task, batch, "test").items():
                got[name] += mask.tolist()
    assert got == {"cold": COLD_TEST, "query": QUERY_TEST}
    reversed_batch = {"eval_pos": torch.tensor([3, 0])}
    assert {k: v.tolist() for k, v in RankingTask.eval_slices(task, reversed_batch, "test").items()} == \
        {"cold": [COLD_TEST[3], COLD_TEST[0]], "query": [QUERY_TEST[3], QUERY_TEST[0]]}


# -- every path that writes metrics.json ---------------------------------------------------------------
def direct_cold_count(data: SplitData, split: str, scored: float) -> int:
    """Cold targets among the first ``scored`` targets of ``split`` (those a run evaluated), counted
    from the data: items with under 5 train events, by a plain bincount."""
    counts = np.bincount(data.item_idx[data.split == 0], minlength=data.num_items)
    rows = data.rows(VALID if split == "valid" else TEST)[:int(scored)]
    return int((counts[data.item_idx[rows]] < 5).sum())


def assert_cold_slice(m: dict, data: SplitData, scored: dict[str, float]) -> None:
    for split in ("valid", "test"):
        assert m[f"{split}/cold/targets"] == direct_cold_count(data, split, scored[split]) > 0
        for k in METRICS:
            assert 0.0 <= m[f"{split}/cold/{k}"] <= 1.0, (split, k)
    assert not [k for k in m if "query" in k.split("/")]  # ML-100K has no query column: no query slice


def test_evaluate_job_writes_the_cold_slice(tmp_path, ml100k_data):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"paths.output_dir={tmp_path}", f"paths.data_dir={DATA_DIR}"])
    evaluate_job(cfg)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert_cold_slice(m, ml100k_data, {"valid": 943, "test": 943})
    assert m["test/cold/recall@10"] == 0.0  # an item seen under 5 times is never among the 10 most popular


def test_train_funnel_and_ranker_runs_write_the_cold_slice(funnel_run, ml100k_data, tmp_path):
    retriever = json.loads((funnel_run / "retriever" / "metrics.json").read_text())
    assert_cold_slice(retriever, ml100k_data, {s: retriever[f"{s}/users"] for s in ("valid", "test")})
    funnel = json.loads((funnel_run / "metrics.json").read_text())
    assert_cold_slice(funnel, ml100k_data, {"valid": 943, "test": 943})  # the funnel scores every user
    for split in ("valid", "test"):
        for k in METRICS:  # the final lists under the usual keys, each stage beside them
            assert funnel[f"{split}/cold/{k}"] == funnel[f"{split}/final/cold/{k}"]
            assert 0.0 <= funnel[f"{split}/retrieval/cold/{k}"] <= 1.0
    ranker = next(r for r in wandb_runs(funnel_run) if r["job_type"] == "ranker")["summary"]
    assert_cold_slice(ranker, ml100k_data, {s: ranker[f"{s}/users"] for s in ("valid", "test")})
    # compare sorts and tabulates runs by a cold metric
    assert compare.main([str(funnel_run), str(funnel_run / "retriever"), "--metric", "test/cold/ndcg@10",
                         "--out", str(tmp_path / "cmp")]) == 0
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert "test/cold/ndcg@10" in table.columns and table["test/cold/ndcg@10"].notna().all()
