"""A retriever ensemble (``retriever.members``, or ``retriever.run_dir`` listing several runs): each
member trained with its own seed, summed into one retriever whose concatenated vectors one index
serves exactly, through the funnel and the Recommender built from its run."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from recfunnel.eval.protocol import EvalSet
from recfunnel.serving.recommender import Recommender
from recfunnel.serving.retriever import Retriever, read_retriever_runs
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, TINY_FUNNEL, run

ENV = {**os.environ, "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """A finished tiny funnel whose first stage is an ensemble of two retrievers trained inside it."""
    out = tmp_path_factory.mktemp("ensemble") / "run"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, "logger=csv", "seed=3", "retriever.members=2",
               f"hydra.run.dir={out}", env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_members_train_with_their_own_seeds_and_the_run_names_them(ensemble_run):
    runs = read_retriever_runs(ensemble_run)
    assert runs == [(ensemble_run / "retriever").resolve(), (ensemble_run / "retriever_1").resolve()]
    seeds = [yaml.safe_load((d / "config.yaml").read_text())["seed"] for d in runs]
    assert seeds == [3, 1003]
    m = json.loads((ensemble_run / "metrics.json").read_text())
    assert 0 < m["test/retrieval/recall@100"] <= 1 and 0 <= m["test/ndcg@10"] <= 1


def test_the_ensemble_scores_by_the_sum_of_its_members(ensemble_run):
    runs = read_retriever_runs(ensemble_run)
    both = Retriever.from_run(runs, data_dir=str(DATA_DIR))
    alone = [Retriever.from_run(d, data_dir=str(DATA_DIR)) for d in runs]
    rows = EvalSet.build(both.data, "test").rows[:64]
    queries = [r.query_vectors(r.pipeline, rows) for r in alone]
    # the two members differ (own seeds), so the sum is not either one's ranking scaled
    assert not np.allclose(queries[0], queries[1])
    q = both.query_vectors(both.pipeline, rows)
    np.testing.assert_allclose(q, np.concatenate(queries, 1), rtol=1e-6, atol=1e-6)
    assert both.item_vectors.shape == (both.data.num_items, sum(r.index.dim for r in alone))
    summed = sum(qm @ r.item_vectors.T for qm, r in zip(queries, alone))  # (B, I)
    seen = both.seen_before(both.pipeline, rows)
    items, scores = both.search(q, 20, seen=seen)
    ptr, seen_items = seen
    for b in range(len(rows)):
        s = summed[b].copy()
        s[seen_items[ptr[b]:ptr[b + 1]]] = -np.inf
        np.testing.assert_allclose(scores[b], np.sort(s)[::-1][:20], rtol=1e-5, atol=1e-5)  # the best 20 sums
        np.testing.assert_allclose(s[items[b]], scores[b], rtol=1e-5, atol=1e-5)  # of the items returned


def test_the_recommender_serves_the_ensemble_it_was_trained_with(ensemble_run):
    rec = Recommender.from_run(ensemble_run, data_dir=str(DATA_DIR))
    assert len(rec.funnel.retriever.nets) == 2
    out = rec.recommend(196, k=10)
    assert out["fallback"] is None and len(out["items"]) == 10 == len(set(out["items"]))


def test_runs_that_cannot_form_an_ensemble_are_refused_in_one_line(ensemble_run, tmp_path):
    first, second = read_retriever_runs(ensemble_run)
    other = tmp_path / "other"
    shutil.copytree(second, other, ignore=shutil.ignore_patterns("csv", "wandb"))
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["features"]["name"] = "another-schema"
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RecfunnelError, match=r"cannot join .* in one retriever ensemble: their features differ"):
        Retriever.from_run([first, other], data_dir=str(DATA_DIR))

    proc = run("recfunnel.funnel", *TINY_FUNNEL, "logger=none", f"retriever.run_dir=[{first}]", "retriever.members=2",
               f"hydra.run.dir={tmp_path / 'bad'}", env=ENV)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "retriever.members=2 but retriever.run_dir names 1 run(s)" in proc.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()
