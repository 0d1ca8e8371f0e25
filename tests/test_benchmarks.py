"""The benchmark scripts that report the funnel's figures, run on the tiny funnel of ``conftest.funnel_run``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, TINY_FUNNEL, run


def test_candidate_recall_gives_mean_and_spread_over_runs_and_refuses_a_folder_that_is_no_run(funnel_run, tmp_path):
    """``benchmarks/candidate_recall.py`` over one retriever given twice: each figure is the single
    run's, with a spread of 0; the deduplicated union holds at least what each source holds; the
    retriever's Recall@20 is the run's own; a folder that is no run is refused with one line."""
    script = [sys.executable, str(ROOT / "benchmarks" / "candidate_recall.py")]
    retriever = funnel_run / "retriever"
    once, twice = tmp_path / "once.json", tmp_path / "twice.json"
    for out, runs in ((once, [retriever]), (twice, [retriever, retriever])):
        proc = subprocess.run([*script, *map(str, runs), "--k", "20", "--json", str(out)], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    once, twice = json.loads(once.read_text()), json.loads(twice.read_text())
    for split in ("valid", "test"):
        single = once["runs"][0][split]
        assert {k: v["mean"] for k, v in twice[split].items()} == pytest.approx(single)
        assert all(v["std"] == 0 for v in twice[split].values())
        assert single["union <=2K"] >= max(single["retriever"], single["co-occurrence"]) > 0
        assert single["candidates/union <=2K"] > 20
        own = json.loads((retriever / "metrics.json").read_text())[f"{split}/recall@20"]
        assert single["retriever"] == pytest.approx(own, abs=2 / 943)  # the same up to ties
    proc = subprocess.run([*script, str(retriever), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"{tmp_path}: no config.yaml; give finished `recfunnel.train` runs of a retrieval model" in proc.stderr


def test_candidate_recall_adds_a_second_retriever_as_a_third_source(funnel_run, tmp_path):
    """``--second``: with the retriever itself as its second, the second source's row is the
    retriever's, the union of three is the two-source union, and the three-way fusion joins the grid."""
    retriever = funnel_run / "retriever"
    out = tmp_path / "three.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "candidate_recall.py"), str(retriever),
                           "--second", str(retriever), "--k", "20", "--fusion", "--k0", "10", "--weights", "0.7",
                           "--second-weights", "0.2", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| second retriever top 20 |" in proc.stdout and "| union of all three, deduplicated (<= 60) |" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    for split in ("valid", "test"):
        r = runs[0][split]
        assert r["second retriever"] == r["retriever"] > 0
        assert r["union of three"] == r["union <=2K"] and r["candidates/union of three"] == r["candidates/union <=2K"]
        fusion = runs[0]["fusion"][split]
        assert set(fusion) == {"two-tower", "co-occurrence", "second retriever", "fusion k0=10 w=0.7",
                               "fusion k0=10 w=0.7 s=0.2"}
        assert fusion["second retriever"] == fusion["two-tower"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "candidate_recall.py"), str(retriever),
                           "--second", str(retriever), str(retriever)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--second names 2 run(s) for 1 run_dir(s)" in proc.stderr


@pytest.mark.slow  # a second funnel and two runs of the script (~80 s on 2 cores); it backs a row of docs/ml100k-tried.md
def test_ranker_average_rebuilds_each_rankers_figures_and_scores_their_mean(funnel_run, tmp_path):
    """``benchmarks/ranker_average.py``: each run's ranked and final valid NDCG@10, rebuilt from its
    checkpoint, equal the run's own; the mean of the logits gets figures of its own; runs over other
    first stages are refused with one line."""
    other = tmp_path / "seed1"
    proc = run("recfunnel.funnel", *TINY_FUNNEL, f"retriever.run_dir={funnel_run / 'retriever'}", "seed=1",
               f"hydra.run.dir={other}", env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = [sys.executable, str(ROOT / "benchmarks" / "ranker_average.py")]
    out = tmp_path / "average.json"
    proc = subprocess.run([*script, str(funnel_run), str(other), "--json", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    for run_dir in (funnel_run, other):
        own = json.loads((run_dir / "metrics.json").read_text())
        assert results[str(run_dir)] == pytest.approx({"ranked/ndcg@10": own["valid/ranked/ndcg@10"],
                                                        "final/ndcg@10": own["valid/final/ndcg@10"]}, abs=1e-9)
    mean = results["mean of the logits"]
    assert set(mean) == {"ranked/ndcg@10", "final/ndcg@10"} and all(0 < v < 1 for v in mean.values())
    lonely = tmp_path / "lonely"  # a copy of the run that names another retriever
    shutil.copytree(funnel_run, lonely, ignore=shutil.ignore_patterns("retriever", "wandb"))
    (lonely / "retriever_run.txt").write_text(f"{tmp_path}\n")
    proc = subprocess.run([*script, str(funnel_run), str(lonely)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"error: {lonely} ranks another retriever's candidates than {funnel_run}: give runs of one first stage"]


def test_bench_serving_prints_the_latency_table_beside_retrieval_alone(funnel_run):
    """``benchmarks/bench_serving.py``: one row per thread count and load, whole request against the
    retrieval stage alone, measured in the same run."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serving.py"), str(funnel_run),
                           "--requests", "20", "--warmup", "2", "--threads", "1", "--load-workers", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1 and rows[0][1].strip() == "idle"
    p50, p99, ret_p50, ratio = (float(rows[0][i]) for i in (3, 5, 7, 9))
    assert 0 < p50 <= p99 and 0 < ret_p50
    # the ratio is of the unrounded figures: within what rounding each to 2 decimals allows
    assert (p50 - 0.005) / (ret_p50 + 0.005) - 0.005 <= ratio <= (p50 + 0.005) / (ret_p50 - 0.005) + 0.005


@pytest.mark.skipif(subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode,
                    reason="needs this repository's git history")
def test_serving_ab_serves_the_same_requests_under_both_versions(funnel_run):
    """``benchmarks/serving_ab.py`` against HEAD: both workers answer every request; the lists agree
    request for request when the versions' serving code agrees (it does for HEAD in a clean checkout)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving_ab.py"), str(funnel_run),
                           "--against", "HEAD", "--requests", "20", "--warmup", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"this tree", "HEAD"} <= set(rows)
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("this tree / HEAD: median per-request ratio ")
    unchanged = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "src"]).returncode == 0
    if unchanged:
        assert summary.endswith("requests with different items: 0")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serving_ab.py"), str(funnel_run),
                           "--against", "no-such-revision"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "cannot read src/ of --against 'no-such-revision'" in proc.stderr
