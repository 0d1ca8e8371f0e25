"""A second retriever in the funnel's first stage (``second_retriever``): trained inside the funnel with
its own overrides, fused by rank with the retriever and co-occurrence, recorded in the run and loaded
again by the Recommender and by a reused ranker; a run over other features is refused in one line
and leaves no run behind."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from recfunnel.eval.protocol import EvalSet
from recfunnel.serving.fusion import read_second_retriever_run
from recfunnel.serving.recommender import Recommender
from recfunnel.serving.retriever import Retriever, read_retriever_runs
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, TINY_FUNNEL, run

ENV = {**os.environ, "WANDB_MODE": "offline"}
# the second retriever: the causal transformer over the retriever's features (TINY_FUNNEL's ml100k_seq)
SECOND = "second_retriever.overrides=['features=ml100k_seq','model.net.user_hidden=[]','data.batch_size=256'," \
         "'model.net.history_encoder=attention']"


@pytest.fixture(scope="module")
def second_run(tmp_path_factory):
    """A finished tiny funnel whose first stage fuses the retriever, co-occurrence and a second
    retriever (the transformer), both retrievers trained inside it."""
    out = tmp_path_factory.mktemp("second") / "run"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, "logger=csv", "seed=4", SECOND, f"hydra.run.dir={out}", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_the_second_retriever_trains_inside_the_funnel_with_its_overrides(second_run):
    second = read_second_retriever_run(second_run)
    assert second == (second_run / "second_retriever").resolve()
    cfg = yaml.safe_load((second / "config.yaml").read_text())
    assert cfg["model"]["net"]["history_encoder"] == "attention" and cfg["seed"] == 4
    assert cfg["run_name"].endswith("-second")
    first = yaml.safe_load((read_retriever_runs(second_run)[0] / "config.yaml").read_text())
    assert first["model"]["net"]["history_encoder"] != "attention"
    m = json.loads((second_run / "metrics.json").read_text())
    assert 0 < m["test/retrieval/recall@100"] <= 1 and 0 <= m["test/ndcg@10"] <= 1


def test_the_recommender_loads_both_retrievers(second_run):
    rec = Recommender.from_run(second_run, data_dir=str(DATA_DIR))
    fusion = rec.funnel.fusion
    assert fusion.second is not None and fusion.second.run_dir == read_second_retriever_run(second_run)
    assert fusion.second.dm is fusion.retriever.dm  # one DataModule: the same rows and request views
    # the queries are both retrievers' vectors side by side
    r = fusion.retriever
    rows = EvalSet.build(r.data, "test").rows[:16]
    q = fusion.query_vectors(r.pipeline, rows)
    d1 = r.index.dim
    np.testing.assert_allclose(q[:, :d1], r.query_vectors(r.pipeline, rows), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q[:, d1:], fusion.second.query_vectors(r.pipeline, rows), rtol=1e-6, atol=1e-6)
    out = rec.recommend(196, k=10)
    assert out["fallback"] is None and len(out["items"]) == 10 == len(set(out["items"]))
    ranked = rec.recommend(196, k=3, candidates=[1, 2, 3, 4, 5])
    assert set(ranked["items"]) <= {1, 2, 3, 4, 5} and len(ranked["items"]) == 3


def test_a_reused_ranker_reads_the_runs_second_retriever(second_run, tmp_path):
    """``ranker.run_dir``: the run's first stage, second retriever included, scores the same lists."""
    out = tmp_path / "reuse"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, "logger=csv", "seed=4", SECOND, f"ranker.run_dir={second_run}",
               f"hydra.run.dir={out}", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_second_retriever_run(out) == read_second_retriever_run(second_run)
    assert not (out / "second_retriever").exists()
    first, again = (json.loads((d / "metrics.json").read_text()) for d in (second_run, out))
    for key in ("test/retrieval/recall@100", "test/ranked/ndcg@10", "valid/ndcg@10"):
        assert again[key] == first[key], key


def test_a_second_retriever_over_other_features_is_refused_in_one_line(second_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(read_second_retriever_run(second_run), other, ignore=shutil.ignore_patterns("csv", "wandb"))
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["features"]["name"] = "another-schema"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    first = Retriever.from_run(read_retriever_runs(second_run), data_dir=str(DATA_DIR))
    with pytest.raises(RecfunnelError, match=r"cannot join .* in one first stage \(second_retriever\): their features"):
        Retriever.beside(other, first)
    with pytest.raises(RecfunnelError, match=r"config.yaml is missing: second_retriever.run_dir must be a finished"):
        Retriever.beside(tmp_path / "no-run", first)

    bad = tmp_path / "bad"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, "logger=none", f"retriever.run_dir={read_retriever_runs(second_run)[0]}",
               f"second_retriever.run_dir={other}", f"hydra.run.dir={bad}", env=ENV)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "their features differ" in errors[0] and proc.stderr.strip().endswith(errors[0])
    assert sorted(p.name for p in bad.iterdir()) == ["funnel.log"]  # no config, overrides, checkpoint or run file
