"""The cold-start slice (``recfunnel.eval.cold``): which targets are cold, their masked means, and the
``{valid,test}/cold/...`` keys of every run's ``metrics.json``."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from recfunnel import compare
from recfunnel.data.dataset import TEST, VALID, SplitData
from recfunnel.data.tables import Tables
from recfunnel.eval.cold import COLD_MAX_TRAIN_EVENTS, cold_means, cold_metrics, cold_sums, cold_targets
from recfunnel.eval.protocol import EvalSet, evaluate
from recfunnel.models.popularity import Popularity
from recfunnel.runs import evaluate as evaluate_job
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, ROOT, wandb_runs

# user → items in time order; the last is test, the one before valid, the rest train. Train events per
# item: 1 → 6, 2 → 5 (warm: exactly the threshold), 3 → 4 (cold: one under it), 4 and 5 → 0
TIMELINES = {1: [1, 2, 3, 4, 2], 2: [1, 2, 3, 1, 3], 3: [1, 2, 3, 2, 4], 4: [1, 2, 3, 5, 1], 5: [1, 2, 3, 5],
             6: [1, 3, 1]}
COLD_VALID = [True, False, False, True, True, True]  # targets 4, 1, 2, 5, 3, 3
COLD_TEST = [False, True, True, False, True, False]  # targets 2, 3, 4, 1, 5, 1
METRICS = ("recall@10", "ndcg@10")


@pytest.fixture(scope="module")
def tiny() -> SplitData:
    rows = [(u, i, 100 * t) for u, items in TIMELINES.items() for t, i in enumerate(items)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"]).assign(rating=1.0)
    tables = Tables(inter, pd.DataFrame({"user_id": list(TIMELINES)}), pd.DataFrame({"item_id": [1, 2, 3, 4, 5]}))
    return SplitData.from_tables(tables)


def test_cold_targets_by_hand(tiny):
    assert COLD_MAX_TRAIN_EVENTS == 5
    assert tiny.item_counts().tolist() == [6, 5, 4, 0, 0]
    for name, code, want in (("valid", VALID, COLD_VALID), ("test", TEST, COLD_TEST)):
        assert cold_targets(tiny, tiny.rows(code)).tolist() == want
        assert EvalSet.build(tiny, name).cold.tolist() == want  # one target per user, in user order here


def test_cold_means_mask_the_per_target_values():
    per_target = {"recall@10": torch.tensor([1.0, 0.0, 1.0, 0.0]), "ndcg@10": torch.tensor([0.5, 0.25, 1.0, 0.0])}
    cold = np.array([True, True, False, True])
    assert cold_metrics(per_target, cold) == {"cold/recall@10": 1 / 3, "cold/ndcg@10": 0.75 / 3, "cold/targets": 3.0}
    # sums of chunks add up: two chunks give the means of the whole
    a = cold_sums({k: v[:2] for k, v in per_target.items()}, cold[:2])
    b = cold_sums({k: v[2:] for k, v in per_target.items()}, cold[2:])
    assert cold_means({k: a[k] + b[k] for k in a}) == cold_metrics(per_target, cold)


def test_no_cold_target_gives_the_count_only_and_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="recfunnel.eval.cold"):
        got = cold_metrics({"ndcg@10": torch.tensor([0.5, 1.0])}, np.array([False, False]), where="test")
    assert got == {"cold/targets": 0.0}
    assert len(caplog.records) == 1 and "test: no cold targets" in caplog.records[0].getMessage()


def test_a_bad_cold_mask_is_one_clear_error():
    with pytest.raises(RecfunnelError, match="one flag per target"):
        cold_sums({"ndcg@10": torch.zeros(3)}, np.array([True, False]))
    with pytest.raises(RecfunnelError, match="1-d bool"):
        cold_sums({"ndcg@10": torch.zeros(2)}, np.array([1, 0]))


def test_protocol_evaluation_reports_the_cold_slice_by_hand(tiny):
    """Most popular (scores 6, 5, 4, 0, 0) on test, train + valid items excluded. The cold targets:
    user 2's item 3 (candidates 3, 4, 5: rank 1), user 3's item 4 and user 5's item 5 (candidates
    4, 5, tied at 0: rank 1 or 2)."""
    test = EvalSet.build(tiny, "test")
    m = evaluate(Popularity().fit(tiny).scorer(test), test, tiny.num_items)
    tied_ndcg = (1 + 1 / math.log2(3)) / 2
    assert m["cold/targets"] == 3
    assert m["cold/recall@10"] == pytest.approx(1.0)
    assert m["cold/ndcg@10"] == pytest.approx((1 + 2 * tied_ndcg) / 3)
    assert m["cold/mrr"] == pytest.approx((1 + 0.75 + 0.75) / 3)


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
