"""The funnel end to end on ML-100K with tiny settings (a retriever trained inside, a ranker, re-ranking),
the Recommender built from its run, the batch CLI, and the bad inputs the funnel refuses."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from recfunnel.serving.index import ItemIndex
from recfunnel.serving.recommender import Recommender
from recfunnel.tasks.checkpoints import load_checkpoint
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, TINY_FUNNEL, run, wandb_runs


def test_every_training_stage_prints_one_line_per_epoch(funnel_run):
    stdout = (funnel_run.parent / "stdout.txt").read_text()
    for stage in ("retriever", "ranker"):
        line = next(x for x in stdout.splitlines() if x.startswith(f"[{stage}] epoch 1/1  "))
        assert "train/loss " in line and "valid/ndcg@10 " in line and line.endswith(" s")


def test_each_stage_is_its_own_wandb_run_in_the_runs_group(funnel_run):
    runs = {r["job_type"]: r for r in wandb_runs(funnel_run)}
    assert sorted(runs) == ["funnel", "ranker", "retriever"] and len({r["id"] for r in runs.values()}) == 3
    group = yaml.safe_load((funnel_run / "config.yaml").read_text())["run_name"]
    assert {r["group"] for r in runs.values()} == {group}
    assert {r["name"] for r in runs.values()} == {f"{group}-{s}" for s in runs}
    retriever, ranker, funnel = runs["retriever"], runs["ranker"], runs["funnel"]
    # each history holds its own model's keys only
    assert {"train/loss", "train/temperature", "valid/ndcg@10"} <= retriever["history_keys"]
    assert {"train/loss", "valid/ndcg@10", "valid/auc"} <= ranker["history_keys"]
    assert "valid/auc" not in retriever["history_keys"] and "train/temperature" not in ranker["history_keys"]
    assert funnel["history_keys"] == set()
    # each config is the stage's own
    assert retriever["config"]["model"]["_target_"].endswith("RetrievalTask")
    assert ranker["config"]["model"]["_target_"].endswith("RankingTask") and "rerank" not in ranker["config"]
    assert "rerank" in funnel["config"]
    # each summary holds the stage's final metrics
    own = json.loads((funnel_run / "retriever" / "metrics.json").read_text())
    assert retriever["summary"]["test/ndcg@10"] == pytest.approx(own["test/ndcg@10"])
    ends = json.loads((funnel_run / "metrics.json").read_text())
    assert funnel["summary"]["test/ndcg@10"] == pytest.approx(ends["test/ndcg@10"])
    assert ranker["summary"]["test/auc"] == pytest.approx(ends["test/ranker/auc"])
    # artifacts carry the stage in their name
    for stage, wandb_run in runs.items():
        names = wandb_run["artifacts"]
        assert names and all(a.startswith(f"{stage}-") for a in names), names


def test_wandb_copies_no_checkpoint_or_index_outside_the_run_directory(funnel_run):
    checkpoint = (funnel_run / "checkpoints" / "best.ckpt").stat().st_size
    for folder in ("wandb-data", "wandb-cache"):
        copied = sum(f.stat().st_size for f in (funnel_run.parent / folder).rglob("*") if f.is_file())
        assert copied < checkpoint / 2, f"{folder} holds {copied} bytes"


def test_funnel_writes_stage_metrics_report_and_plot(funnel_run):
    m = json.loads((funnel_run / "metrics.json").read_text())
    for split in ("valid", "test"):
        for stage in ("retrieval", "ranked", "final"):
            assert 0.0 <= m[f"{split}/{stage}/ndcg@10"] <= m[f"{split}/{stage}/recall@10"] <= 1.0
            assert 0.0 < m[f"{split}/{stage}/coverage@10"] <= 1.0
        # the end of the funnel under the usual keys; the ranker re-orders the same K candidates
        assert m[f"{split}/ndcg@10"] == m[f"{split}/final/ndcg@10"]
        assert m[f"{split}/retrieval/recall@100"] == m[f"{split}/ranked/recall@100"]
        assert 0.0 <= m[f"{split}/ranker/auc"] <= 1.0 and m[f"{split}/ranker/logloss"] > 0
        assert 0 < m[f"{split}/ms_per_user_mean"] <= m[f"{split}/ms_per_user_p99"]
        for stage in ("exclude_seen", "freshness", "mmr", "genre_cap"):
            assert f"{split}/rerank_without_{stage}/ndcg@10" in m
        # objectives=ml100k: engagement predicted (one head), satisfaction reported only
        assert m[f"{split}/objective/engagement/auc"] == m[f"{split}/ranker/auc"]
        assert f"{split}/objective/satisfaction/auc" not in m
        assert 0 < m[f"{split}/satisfaction@10"] < m[f"{split}/engagement@10"] == m[f"{split}/recall@10"]
    assert (funnel_run / "retriever" / "metrics.json").exists()  # trained inside, in its own run dir
    # the command line is the funnel's: recorded in its directory, not in the retriever's it trained
    assert "pairs.max_events_per_user=2" in (funnel_run / "overrides.yaml").read_text()
    assert not (funnel_run / "retriever" / "overrides.yaml").exists()
    report = (funnel_run / "funnel.md").read_text()
    assert "| retrieval only |" in report and "| + re-ranking |" in report
    assert (funnel_run / "funnel.png").stat().st_size > 1000


def test_the_fused_first_stage_retrieves_more_than_the_retriever_and_feeds_the_ranker_its_score(funnel_run):
    """TINY_FUNNEL fuses the retriever with co-occurrence: the candidates hold more of the targets
    than the retriever's own top 100 (its full-corpus test Recall@100), and the ranker reads the
    co-occurrence score as a sixth pair feature."""
    m = json.loads((funnel_run / "metrics.json").read_text())
    alone = json.loads((funnel_run / "retriever" / "metrics.json").read_text())
    assert m["test/retrieval/recall@100"] > alone["test/recall@100"] + 0.05, (m["test/retrieval/recall@100"], alone)
    state = load_checkpoint(funnel_run / "checkpoints" / "best.ckpt")["state_dict"]
    assert tuple(state["net.pair_mean"].shape) == (6,)


def test_a_funnel_over_a_trained_retriever_equals_the_one_that_trained_it(funnel_run, tmp_path):
    """The ranker starts from the seed whether the retriever was trained in the same process or is
    loaded (``retriever.run_dir``, as when a funnel resumes after its retriever finished): the same
    metrics, to the bit."""
    out = tmp_path / "again"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, f"retriever.run_dir={funnel_run / 'retriever'}",
               f"hydra.run.dir={out}", env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again = (json.loads((d / "metrics.json").read_text()) for d in (funnel_run, out))
    quality = [k for k in first if k.split("/")[-1].split("@")[0] in ("ndcg", "recall", "mrr", "auc", "logloss")]
    assert len(quality) > 20
    assert {k: again[k] for k in quality} == {k: first[k] for k in quality}


def test_recommender_serves_known_unknown_and_recent(funnel_run):
    rec = Recommender.from_run(funnel_run, data_dir=str(DATA_DIR))
    out = rec.recommend(196, k=10)
    assert out["fallback"] is None and len(out["items"]) == 10 == len(set(out["items"]))
    assert out["scores"] == sorted(out["scores"], reverse=True)  # stages keep scores per position
    data = rec.funnel.retriever.dm.data
    known = set(rec.item_ids[data.item_idx[data.user_idx == rec._user_index["196"]]].tolist())
    assert not known & set(out["items"]), "a user's earlier items are never recommended"
    fresh = rec.recommend(196, k=10, recent_items=out["items"][:2])
    assert not set(out["items"][:2]) & set(fresh["items"]), "recent items count as seen"
    unknown = rec.recommend("no-such-user", k=5)
    assert unknown["fallback"] and "unknown user" in unknown["fallback"] and len(unknown["items"]) == 5
    ranked = rec.recommend(196, k=3, candidates=[1, 2, 3, 4, 5])
    assert set(ranked["items"]) <= {1, 2, 3, 4, 5} and len(ranked["items"]) == 3


def test_recommender_bad_inputs_give_one_clear_error(funnel_run, tmp_path):
    rec = Recommender.from_run(funnel_run, data_dir=str(DATA_DIR))
    with pytest.raises(RecfunnelError, match=r"candidates reference unknown item id\(s\) \[99999\]"):
        rec.recommend(196, candidates=[1, 99999])
    with pytest.raises(RecfunnelError, match="recent_items reference unknown item"):
        rec.recommend(196, recent_items=["nope"])

    # an index built from other item vectors, dropped into the retriever's run
    other = tmp_path / "other"
    shutil.copytree(funnel_run, other, ignore=shutil.ignore_patterns("csv", "wandb"))
    (other / "retriever_run.txt").write_text(str(other / "retriever") + "\n")
    ItemIndex.build(np.random.default_rng(0).normal(size=(1682, 64)).astype("float32"),
                    fingerprint="another-run:best.ckpt").save(other / "retriever" / "index")
    with pytest.raises(RecfunnelError, match="index is from other item vectors"):
        Recommender.from_run(other, data_dir=str(DATA_DIR))

    # a ranker trained on another feature schema
    other2 = tmp_path / "other2"
    shutil.copytree(funnel_run, other2, ignore=shutil.ignore_patterns("csv", "wandb", "retriever"))
    cfg = yaml.safe_load((other2 / "config.yaml").read_text())
    del cfg["features"]["features"]["genres"]
    (other2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RecfunnelError, match="ranker checkpoint does not fit features"):
        Recommender.from_run(other2, data_dir=str(DATA_DIR))


def test_batch_cli_writes_one_line_per_user(funnel_run, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# ids\n196\n186\n\nunknown-user\n")
    out = tmp_path / "recs.jsonl"
    proc = run("recfunnel.recommend", f"run_dir={funnel_run}", f"users={users}", f"out={out}", "k=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["user_id"] for d in lines] == ["196", "186", "unknown-user"]
    assert all(len(d["items"]) == 4 for d in lines) and lines[2]["fallback"] and lines[0]["fallback"] is None
    bad = run("recfunnel.recommend", f"run_dir={funnel_run}", f"users={tmp_path / 'missing.txt'}", f"out={out}")
    assert bad.returncode == 2 and "no such file" in bad.stderr and bad.stderr.count("\n") == 1


def test_the_saved_index_holds_the_item_towers_vectors_without_dropout(funnel_run):
    """The index is built after scoring, when Lightning has put the model back in training mode: it
    must still hold the eval-mode vectors of the selected checkpoint (this tiny retriever's item tower
    has a hidden layer with dropout 0.1)."""
    import torch

    from recfunnel.serving.retriever import Retriever

    r = Retriever.from_run(funnel_run / "retriever", data_dir=str(DATA_DIR))
    assert any(isinstance(m, torch.nn.Module) and type(m).__name__ == "Dropout" and m.p > 0
               for m in r.net.item_mlp.modules()) and not r.net.training
    with torch.no_grad():
        expected = r.net.item_vectors(r.dm.catalogue()).numpy()
    np.testing.assert_allclose(r.item_vectors, expected, rtol=1e-5, atol=1e-6)
