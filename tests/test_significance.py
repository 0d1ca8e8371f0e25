"""Paired comparisons: the statistics (recfunnel.eval.significance), per-target metrics recomputed
from finished runs (recfunnel.eval.per_target) against the runs' own metrics.json, and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from recfunnel.eval.per_target import per_target
from recfunnel.eval.significance import paired_comparison
from recfunnel.utils.errors import RecfunnelError

from helpers import run


def test_identical_systems_differ_by_nothing():
    a = np.random.default_rng(0).random(500)
    r = paired_comparison(a, a.copy())
    assert r.diff == 0 and r.low == 0 == r.high and r.p_value == 1.0 and r.a_wins == r.b_wins == 0


def test_the_interval_and_p_value_match_the_normal_theory_on_a_large_sample():
    rng = np.random.default_rng(1)
    b = rng.random(4000)
    a = b + rng.normal(0.01, 0.1, size=4000)  # A better by 0.01 on average, per-user noise 0.1
    r = paired_comparison(a, b, resamples=4000)
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert r.diff == pytest.approx(d.mean())
    assert r.low == pytest.approx(d.mean() - half, abs=0.2 * half) and r.high == pytest.approx(d.mean() + half, abs=0.2 * half)
    assert r.p_value < 0.01 and r.low > 0
    # the same difference on 40 users is not resolved; a seeded test gives the same figures again
    small = paired_comparison(a[:40], b[:40], resamples=4000)
    assert small.low < 0 < small.high and small.p_value > 0.05
    assert paired_comparison(a[:40], b[:40], resamples=4000) == small
    assert r.se_a == pytest.approx(a.std(ddof=1) / np.sqrt(4000))


def test_a_true_difference_of_the_detectable_size_is_found_about_80_percent_of_the_time():
    rng = np.random.default_rng(2)
    users, noise = 300, 0.1   # per-user differences of spread `noise`
    b = rng.random(users)
    a = b + rng.normal(0, noise, users)
    size = paired_comparison(a, b, resamples=100).detectable
    assert size == pytest.approx((1.95996 + 0.84162) * (a - b).std(ddof=1) / np.sqrt(users), rel=1e-4)
    found = 0
    for _ in range(200):   # repeated comparisons of systems whose true mean difference is `size`
        b = rng.random(users)
        found += paired_comparison(b + rng.normal(size, noise, users), b, resamples=500).p_value < 0.05
    assert 0.7 <= found / 200 <= 0.9


def test_bad_paired_values_give_one_clear_error():
    with pytest.raises(RecfunnelError, match="same targets"):
        paired_comparison(np.zeros(3), np.zeros(4))
    with pytest.raises(RecfunnelError, match="finite"):
        paired_comparison(np.array([0.1, np.nan]), np.zeros(2))


def test_per_target_metrics_average_to_the_runs_own_figures(funnel_run):
    own = json.loads((funnel_run / "metrics.json").read_text())
    for split, stage, key in (("valid", "final", "valid/ndcg@10"), ("test", "ranked", "test/ranked/ndcg@10"),
                              ("test", "retrieval", "test/retrieval/recall@100")):
        users, values = per_target(funnel_run, split, key.split("/")[-1], stage)
        assert len(users) == 943 == len(np.unique(users))
        assert values.mean() == pytest.approx(own[key], abs=1e-6)
    retriever = json.loads((funnel_run / "retriever" / "metrics.json").read_text())
    for split, metric in (("valid", "ndcg@10"), ("test", "recall@100"), ("test", "mrr")):
        _, values = per_target(funnel_run / "retriever", split, metric)
        assert values.mean() == pytest.approx(retriever[f"{split}/{metric}"], abs=1e-5)
    with pytest.raises(RecfunnelError, match="has no 'ranked' stage"):
        per_target(funnel_run / "retriever", "valid", "ndcg@10", stage="ranked")
    with pytest.raises(RecfunnelError, match="not computed per target"):
        per_target(funnel_run, "valid", "auc")


def test_the_cli_compares_two_sets_and_a_set_with_a_target(funnel_run, tmp_path):
    proc = run("recfunnel.significance", "--a", str(funnel_run), "--b", str(funnel_run / "retriever"), "--split", "test")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("test ndcg@10: A ") and "A − B" in line and "95% interval" in line and "943 users" in line
    assert re.search(r"resolve a true difference of ±0\.0\d{3} 80% of the time$", line)
    proc = run("recfunnel.significance", "--a", str(funnel_run), "--target", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0.5 is outside it" in proc.stdout and "a true distance of ±0.0" in proc.stdout
    bad = run("recfunnel.significance", "--a", str(tmp_path), "--target", "0.1")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "neither a finished funnel run" in bad.stderr
