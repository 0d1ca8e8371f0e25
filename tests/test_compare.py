"""Sweeps through the real entry point, the sweep summary callback, and `python -m recfunnel.compare`."""

import csv
import json
import os

import pandas as pd
import pytest

from helpers import DATA_DIR, run, wandb_runs

FAST = ["debug=fast", "logger=csv", f"paths.data_dir={DATA_DIR}", "data.batch_size=256"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A real 2-job grid sweep (model.net.dim=16,32), logged to offline W&B; returns its sweep directory."""
    tmp = tmp_path_factory.mktemp("grid")
    proc = run("recfunnel.train", "-m", *FAST, "logger=wandb", f"paths.log_dir={tmp}", f"hydra.sweep.dir={tmp}/sweep",
               "model.net.dim=16,32", env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "sweep"


def test_sweep_summary_has_one_row_per_trial(grid_sweep):
    rows = read_rows(grid_sweep / "summary.csv")
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert [r["model.net.dim"] for r in rows] == ["16", "32"]
    assert all("model.net.dim=" in r["overrides"] and "debug=fast" in r["overrides"] for r in rows)
    assert all(0 <= float(r["valid/ndcg@10"]) <= 1 and r["test/recall@100"] for r in rows)
    summary = json.loads((grid_sweep / "summary.json").read_text())
    assert summary[1]["params"]["model.net.dim"] == "32" and "test/mrr" in summary[1]["metrics"]


def test_sweep_trials_are_wandb_runs_in_the_sweeps_group_named_by_trial(grid_sweep):
    runs = sorted(wandb_runs(grid_sweep), key=lambda r: r["name"])
    assert [r["name"] for r in runs] == ["trial-0-retriever", "trial-1-retriever"]
    assert {r["group"] for r in runs} == {"train-sweep-sweep"} and {r["job_type"] for r in runs} == {"retriever"}
    assert [r["config"]["model"]["net"]["dim"] for r in runs] == [16, 32]


def test_compare_sweep_prints_differing_keys_and_writes_plots(grid_sweep, tmp_path):
    out = tmp_path / "cmp"
    proc = run("recfunnel.compare", str(grid_sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "model.net.dim" in line)
    for col in ("valid/ndcg@10", "valid/recall@10", "test/ndcg@10", "test/recall@100", "test/mrr"):
        assert col in header
    assert "run_name" not in proc.stdout and "paths." not in proc.stdout and "dirpath" not in proc.stdout
    dims = [line.split("│")[2].strip() for line in proc.stdout.splitlines() if line.startswith("│")]
    assert sorted(dims) == ["16", "32"]

    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 2 and sorted(table["model.net.dim"]) == [16, 32]
    assert list(table["valid/ndcg@10"]) == sorted(table["valid/ndcg@10"], reverse=True)
    for name in ("metric_vs_model.net.dim.png", "learning_curves.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_bad_path_is_one_clear_error(tmp_path, case):
    path = tmp_path / "nowhere"
    if case == "empty":
        path.mkdir()
    proc = run("recfunnel.compare", str(path))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and str(path) in proc.stderr


def test_unknown_metric_is_one_clear_error(grid_sweep, tmp_path):
    proc = run("recfunnel.compare", str(grid_sweep), "--metric", "valid/ndcg@11", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "valid/ndcg@11" in proc.stderr and "valid/ndcg@10" in proc.stderr


def test_wandb_offline_is_one_clear_error():
    proc = run("recfunnel.compare", "--wandb-project", "p", "--wandb-group", "g",
               env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "W&B online" in proc.stderr and "run directories" in proc.stderr


def test_wandb_runs_build_the_same_table(monkeypatch, tmp_path):
    import wandb

    from recfunnel import compare
    from recfunnel.utils import wandb_mode

    class FakeRun:
        def __init__(self, name, dim, ndcg):
            self.name, self.config = name, {"model": {"net": {"dim": dim}}, "run_name": name}
            self.summary = {"valid/ndcg@10": 0.0, "final/valid/ndcg@10": ndcg, "final/test/ndcg@10": ndcg / 2}

        def history(self, pandas=True):
            return pd.DataFrame({"epoch": [0, 1], "valid/ndcg@10": [0.01, 0.02], "trainer/global_step": [5, 10],
                                 "train/loss": [6.0, 5.0]})

    class FakeApi:
        def runs(self, path, filters=None):
            assert path == "proj" and filters == {"group": "grp"}
            return [FakeRun("a", 16, 0.1), FakeRun("b", 32, 0.3)]

    monkeypatch.setattr(wandb_mode, "decide_wandb_mode", lambda requested: ("online", "test"))
    monkeypatch.setattr(wandb, "Api", FakeApi)
    assert compare.main(["--wandb-project", "proj", "--wandb-group", "grp", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["run"]) == ["b", "a"] and list(table["valid/ndcg@10"]) == [0.3, 0.1]
    assert (tmp_path / "metric_vs_model.net.dim.png").read_bytes().startswith(PNG_MAGIC)


def test_optuna_sweep_runs_two_trials(tmp_path):
    # the search space from configs/hparams_search/two_tower_optuna.yaml, with the slow choices
    # pinned on the command line (which also checks that command-line values replace the YAML's)
    proc = run("recfunnel.train", "-m", "hparams_search=two_tower_optuna", "hydra.sweeper.n_trials=2", *FAST,
               "model.net.history_encoder=none", "model.net.dim=16", f"paths.log_dir={tmp_path}",
               f"hydra.sweep.dir={tmp_path}/sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(tmp_path / "sweep" / "summary.csv")
    assert len(rows) == 2 and all(r["model.net.history_encoder"] == "none" for r in rows)
    assert len({r["model.lr"] for r in rows}) == 2  # sampled, not fixed
    assert "best_value" in (tmp_path / "sweep" / "optimization_results.yaml").read_text()
