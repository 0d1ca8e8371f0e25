"""Several objectives: their labels (src/recfunnel/data/objectives.py), the multi-task heads and the
one score mixed from them (src/recfunnel/models/multitask.py), the ranker's per-objective losses, and
the per-objective metrics of the final lists (src/recfunnel/eval/funnel.py), each checked by hand."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from recfunnel.data.objectives import Objective, event_labels, parse_objectives
from recfunnel.eval.funnel import objective_metrics
from recfunnel.models.multitask import MultiTaskHeads, ObjectiveMix
from recfunnel.runs import check_objectives
from recfunnel.serving.rerank import Slate
from recfunnel.tasks.checkpoints import load_checkpoint
from recfunnel.utils.errors import RecfunnelError

from helpers import NUM_EMB, ROOT, SCHEMA, TINY_FUNNEL, P, make_model, random_raw, run, to_batch

ML = {"engagement": {"column": None}, "satisfaction": {"column": "rating", "at_least": 4}}
SHOP = {"click": {}, "purchase": {"column": "purchase"}, "revenue": {"column": "revenue", "loss": "mse"}}


def test_labels_per_objective():
    inter = pd.DataFrame({"rating": [5.0, 3.0, 4.0], "purchase": [1.0, 0.0, 0.0], "revenue": [9.5, 0.0, 0.0]})
    np.testing.assert_array_equal(event_labels(inter, parse_objectives(ML)), [[1, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(event_labels(inter, parse_objectives(SHOP)), [[1, 1, 9.5], [1, 0, 0], [1, 0, 0]])
    assert [o.name for o in parse_objectives(None)] == ["engagement"]  # the default: today's implicit label
    assert parse_objectives(SHOP)[2] == Objective("revenue", "revenue", None, "mse", 1.0)


@pytest.mark.parametrize("cfg, match", [
    ({"satisfaction": {"column": "stars", "at_least": 4}}, r"column='stars'.*no such column.*'rating'"),
    ({"revenue": {"column": "revenue"}}, r"revenue: a bce objective needs labels in \[0, 1\].*loss: mse"),
    ({"x": {"loss": "hinge"}}, "objectives.x.loss='hinge'"),
    ({"x": {"weight": 2}}, r"objectives.x: unknown key\(s\) \['weight'\]"),
    ({"x": {"at_least": 4}}, "at_least needs a column"),
    ({"x": {"loss_weight": -1}}, "loss_weight=-1"),
])
def test_bad_objectives_are_one_clear_error(cfg, match):
    inter = pd.DataFrame({"rating": [5.0, 3.0], "revenue": [9.5, 0.0]})
    with pytest.raises(RecfunnelError, match=match):
        event_labels(inter, parse_objectives(cfg))


def test_the_mix_by_hand():
    objectives = parse_objectives(SHOP)
    out = torch.tensor([[0.3, -1.0, 4.0], [-2.0, 0.5, 0.0]])
    p_click, p_buy = torch.sigmoid(out[:, 0]), torch.sigmoid(out[:, 1])
    mix = ObjectiveMix(objectives, {"click": 1.0, "revenue": 0.5})  # purchase left out: weight 0
    torch.testing.assert_close(mix(out), p_click + 0.5 * out[:, 2])
    mix = ObjectiveMix(objectives, {"click": 1.0, "purchase": 2.0}, combine="product")
    torch.testing.assert_close(mix(out), torch.log(p_click) + 2 * torch.log(p_buy))
    assert mix.describe() == "1·click · 2·purchase (product)"
    torch.testing.assert_close(ObjectiveMix(objectives)(out), p_click + p_buy + out[:, 2])  # None: all 1
    one = ObjectiveMix(parse_objectives(None), {"engagement": 3.0})
    torch.testing.assert_close(one(out[:, :1]), out[:, 0])  # one objective: its logit, as always


@pytest.mark.parametrize("weights, combine, match", [
    ({"satisfaction": 1.0}, "sum", r"names \['satisfaction'\], which the ranker does not predict"),
    ({"click": 1.0, "purchase": -1.0}, "product", "weights must be >= 0"),
    ({"click": 0.0}, "sum", "all 0"),
    ({"click": "high"}, "sum", "objective_weights.click='high' must be a number"),
    (None, "max", "objective_combine='max'"),
])
def test_bad_weights_are_one_clear_error(weights, combine, match):
    with pytest.raises(RecfunnelError, match=match):
        ObjectiveMix(parse_objectives(SHOP), weights, combine)


@pytest.mark.parametrize("kind", ["shared_bottom", "mmoe", "ple"])
def test_heads_shapes_and_gates(kind):
    torch.manual_seed(0)
    heads = MultiTaskHeads(12, 3, kind, experts=2, shared_experts=1, expert_hidden=[8], tower_hidden=[4]).eval()
    x = torch.randn(5, 12)
    out = heads(x)
    assert out.shape == (5, 3)
    if kind == "shared_bottom":
        return
    gates = heads.gate_weights(x)
    assert gates.shape == (5, 3, 2 if kind == "mmoe" else 3)
    torch.testing.assert_close(gates.sum(-1), torch.ones(5, 3))
    # task 0's output by hand: its gate mixes the outputs of the experts it sees, then its tower
    experts = torch.stack([heads.experts[e](x) for e in heads.gate_inputs(0)], 1)
    torch.testing.assert_close(out[:, 0], heads.towers[0]((gates[:, 0, :, None] * experts).sum(1))[:, 0])
    if kind == "ple":  # task 0 sees its own 2 experts and the 1 shared one, never task 1's
        assert heads.gate_inputs(0) == [0, 1, 6] and heads.gate_inputs(1) == [2, 3, 6]
        with torch.no_grad():
            heads.experts[2][0][-1].bias.add_(10.0)
        after = heads(x)
        torch.testing.assert_close(after[:, 0], out[:, 0])
        assert not torch.allclose(after[:, 1], out[:, 1])


def test_heads_count_must_match_the_objectives():
    with pytest.raises(RecfunnelError, match=r"predicts 2 objectives \['engagement', 'satisfaction'\] but has one head"):
        make_model(objectives=parse_objectives(ML))
    with pytest.raises(RecfunnelError, match="multitask is set but the ranker predicts one objective"):
        make_model(multitask={"kind": "mmoe"})
    with pytest.raises(RecfunnelError, match="multitask.kind='moe'"):
        make_model(objectives=parse_objectives(ML), multitask={"kind": "moe"})


def test_multitask_ranker_losses_by_hand():
    """Each head's own loss over the real pairs (bce for probabilities, mse for revenue), weighted by
    loss_weight; with uncertainty weighting, Σ exp(−s_t)·L_t + s_t."""
    from recfunnel.tasks.ranking import RankingTask

    objectives = [Objective("click"), Objective("purchase", "purchase", loss_weight=0.5),
                  Objective("revenue", "revenue", loss="mse", loss_weight=0.1)]
    B, C = 4, 5
    batch = to_batch(random_raw(B, C, seed=3))
    batch["cand_idx"] = torch.zeros(B, C, dtype=torch.long)
    mask = torch.ones(B, C, dtype=torch.bool)
    mask[1, 3:] = False
    label = torch.zeros(B, C, 3)
    label[:, 0] = torch.tensor([[1, 1, 20.0], [1, 0, 0], [1, 1, 5.0], [1, 0, 0]])
    batch.update(mask=mask, label=label)
    factory = lambda **kw: make_model(seed=0, objectives=kw["objectives"], multitask={"kind": "mmoe", "experts": 2,  # noqa: E731
                                                                                    "expert_hidden": [8]})
    task = RankingTask(factory, schema=SCHEMA, num_embeddings=NUM_EMB, num_pair_dense=P, objectives=objectives).eval()
    out = task.net.heads(batch).detach()
    assert out.shape == (B, C, 3)
    parts = [F.binary_cross_entropy_with_logits(out[..., 0][mask], label[..., 0][mask]),
             F.binary_cross_entropy_with_logits(out[..., 1][mask], label[..., 1][mask]),
             F.mse_loss(out[..., 2][mask], label[..., 2][mask])]
    torch.testing.assert_close(task.compute_loss(batch), parts[0] + 0.5 * parts[1] + 0.1 * parts[2])
    task = RankingTask(factory, schema=SCHEMA, num_embeddings=NUM_EMB, num_pair_dense=P, objectives=objectives,
                       uncertainty_weighting=True).eval()
    with torch.no_grad():
        task.log_vars.copy_(torch.tensor([0.0, 1.0, 3.0]))
    expected = sum(torch.exp(-s) * part + s for s, part in zip(torch.tensor([0.0, 1.0, 3.0]), parts))
    torch.testing.assert_close(task.compute_loss(batch), expected)
    with pytest.raises(RecfunnelError, match="model.loss='softmax' is for one objective"):
        RankingTask(factory, schema=SCHEMA, num_embeddings=NUM_EMB, num_pair_dense=P, objectives=objectives,
                    loss="softmax")


def test_objective_metrics_by_hand():
    items = np.array([[5, 1, 2], [3, 4, 0], [7, 8, 9], [1, 2, 3]])
    targets = np.array([1, 0, 6, 1])  # ranks 2, 3, missed, 1
    labels = np.array([[1, 1, 10.0], [1, 0, 0.0], [1, 1, 4.0], [1, 1, 2.0]])
    m = objective_metrics(Slate(items, np.zeros(items.shape)), targets, labels, ["click", "purchase", "revenue"], 3)
    ndcg = np.array([1 / np.log2(3), 1 / np.log2(4), 0.0, 1.0])
    assert m["objective/click/ndcg@3"] == pytest.approx(ndcg.mean())
    assert m["objective/purchase/ndcg@3"] == pytest.approx(ndcg[[0, 2, 3]].mean())  # users whose target was bought
    assert m["objective/revenue/ndcg@3"] == pytest.approx(ndcg[[0, 2, 3]].mean())
    assert m["click@3"] == pytest.approx(0.75)  # the hit rate
    assert m["revenue@3"] == pytest.approx((10 + 0 + 0 + 2) / 4)  # revenue of the targets the lists hold
    m = objective_metrics(Slate(items, np.zeros(items.shape)), targets, labels, ["click", "purchase", "revenue"], 1)
    assert m["revenue@1"] == pytest.approx(2 / 4) and m["objective/click/ndcg@1"] == pytest.approx(0.25)


# -- end to end: a tiny multi-task funnel on ML-100K, and its ranker evaluated again under other weights ---
MULTI = ["objectives=ml100k_satisfaction", "model=mmoe", "model.net.multitask.expert_hidden=[32]",
         "funnel.objective_weights={engagement: 1.0, satisfaction: 1.0}", "logger=csv"]


@pytest.fixture(scope="module")
def multitask_run(funnel_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("multitask") / "run"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, *MULTI, f"retriever.run_dir={funnel_run / 'retriever'}",
               f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_multitask_funnel_reports_every_objective(multitask_run):
    m = json.loads((multitask_run / "metrics.json").read_text())
    for split in ("valid", "test"):
        for name in ("engagement", "satisfaction"):
            assert 0 < m[f"{split}/objective/{name}/auc"] < 1
            assert 0 <= m[f"{split}/objective/{name}/ndcg@10"] <= 1
            assert 0 <= m[f"{split}/{name}@10"] <= 1
        # engagement's gain is 1 for every target: its NDCG and hit rate are the funnel's own
        assert m[f"{split}/objective/engagement/ndcg@10"] == pytest.approx(m[f"{split}/ndcg@10"])
        assert m[f"{split}/engagement@10"] == pytest.approx(m[f"{split}/recall@10"])
        assert m[f"{split}/satisfaction@10"] < m[f"{split}/engagement@10"]  # some targets were rated < 4
    state = load_checkpoint(multitask_run / "checkpoints" / "best.ckpt")["state_dict"]
    assert {k.split(".")[2] for k in state if k.startswith("net.heads_arch.")} == {"experts", "gates", "towers"}
    assert not any(k.startswith("net.over_arch.") for k in state)
    # served as trained: the same heads, mixed with the run's weights
    from recfunnel.serving.recommender import Recommender

    rec = Recommender.from_run(multitask_run, threads=None)
    assert rec.funnel.ranker.mix.describe() == "1·engagement + 1·satisfaction (sum)"
    assert len(rec.recommend(196, k=10)["items"]) == 10


def test_a_trained_ranker_is_evaluated_again_under_other_weights(multitask_run, tmp_path):
    """ranker.run_dir reuses the first stage and the ranker: with the same weights every metric is the
    same, with other weights the heads (their AUC) are the same and the lists are not."""
    before = json.loads((multitask_run / "metrics.json").read_text())
    same = tmp_path / "same"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, *MULTI, f"ranker.run_dir={multitask_run}", f"hydra.run.dir={same}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((same / "metrics.json").read_text())
    keys = [k for k in before if k.startswith(("test/", "valid/")) and "ms_per_user" not in k]
    assert {k: after[k] for k in keys} == pytest.approx({k: before[k] for k in keys})
    assert not (same / "checkpoints").exists()  # nothing trained
    # nor its training pairs built (the run that trained it logged them): the checkpoint holds their statistics
    assert "ranker pairs:" in (multitask_run / "funnel.log").read_text() and "ranker pairs:" not in proc.stdout + proc.stderr
    other = tmp_path / "other"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, *MULTI, f"ranker.run_dir={multitask_run}", f"hydra.run.dir={other}",
               "funnel.objective_weights.engagement=0", "funnel.objective_combine=product")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((other / "metrics.json").read_text())
    assert after["test/objective/satisfaction/auc"] == pytest.approx(before["test/objective/satisfaction/auc"])
    assert after["test/ranker/auc"] != pytest.approx(before["test/ranker/auc"])  # the score is satisfaction's alone
    assert "the ranker's score: 1·satisfaction (product)" in proc.stdout + proc.stderr


def test_a_bad_reuse_is_one_line_before_anything_runs(multitask_run, tmp_path):
    """The command line's side of the refusals below: exit 2, one line, no run directory written."""
    out = tmp_path / "bad"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, *MULTI, f"ranker.run_dir={multitask_run}", f"hydra.run.dir={out}",
               "model.lr=0.5")
    assert proc.returncode == 2 and re.search(r"ranker.run_dir=.* was trained with another config: model.lr differ",
                                              proc.stderr), proc.stderr[-2000:]
    assert [line.startswith("error: ") for line in proc.stderr.splitlines() if "Traceback" in line or "rror" in line] \
        == [True]  # one error line, no traceback
    assert not (out / "config.yaml").exists()  # refused before the run is written: the same folder can be used again


@pytest.mark.parametrize("override, match", [
    ("+funnel.objective_weights.revenue=1", r"names \['revenue'\], which the ranker does not predict"),
    ("model.net.multitask=null", r"predicts 2 objectives \['engagement', 'satisfaction'\] but has one head"),
])
def test_weights_and_heads_that_disagree_are_refused_before_anything_runs(override, match, tmp_path):
    """What ``recfunnel.funnel`` checks before its run directory is written (``check_objectives``)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        base = [*TINY_FUNNEL, *MULTI, f"paths.output_dir={tmp_path}"]
        check_objectives(compose("funnel", overrides=base))  # the run's own config passes
        cfg = compose("funnel", overrides=[*base, override])
    with pytest.raises(RecfunnelError, match=match):
        check_objectives(cfg)
