"""Sweeps through the real entry point, the sweep summary callback, and `python -m recfunnel.compare`."""

import csv
import json
import os

import numpy as np
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


# --- the Pareto view (--pareto X Y), on fake run directories -----------------------------------------

ENG, SAT = "test/objective/engagement/ndcg@10", "test/objective/satisfaction/ndcg@10"
WEIGHT = "funnel.objective_weights.satisfaction"
# (weight, seed) -> (engagement, satisfaction); weight 2 is dominated by weight 1 (mean .21/.17 < .27/.22)
POINTS = {(0, 0): (0.30, 0.10), (0, 1): (0.32, 0.12), (1, 0): (0.26, 0.20), (1, 1): (0.28, 0.24),
          (2, 0): (0.20, 0.16), (2, 1): (0.22, 0.18)}


def fake_sweep(root, drop=()):
    """A Hydra multirun directory of finished funnel runs, one per POINTS entry (``root/<i>/``, with
    metrics.json and the resolved config.yaml); ``drop`` holds (weight, seed, metric) to leave out."""
    import yaml

    for i, ((w, seed), (eng, sat)) in enumerate(POINTS.items()):
        d = root / str(i)
        d.mkdir(parents=True)
        metrics = {ENG: eng, SAT: sat, "test/ndcg@10": 0.1}
        for dw, ds, m in drop:
            if (dw, ds) == (w, seed):
                metrics.pop(m)
        (d / "metrics.json").write_text(json.dumps(metrics))
        config = {"seed": seed, "run_name": f"funnel-{i}", "paths": {"output_dir": str(d)},
                  "funnel": {"objective_weights": {"engagement": 1.0, "satisfaction": w}}}
        (d / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def make_run(name, config, metrics):
    from recfunnel.compare import Run

    return Run(name, config, metrics)


@pytest.mark.parametrize("points, front", [
    ([[1, 1], [2, 2], [0, 3]], [False, True, True]),                 # (1,1) dominated by (2,2)
    ([[1, 2], [1, 1], [2, 1]], [True, False, True]),                 # equal in one, worse in the other: dominated
    ([[1, 1], [1, 1], [0, 0]], [True, True, False]),                 # equal points both stay on the front
    ([[0.5, 0.5]], [True]),                                          # a single point
    ([[0, 3], [1, 2], [2, 1], [3, 0]], [True] * 4),                  # collinear, falling: all trade off
    ([[0, 0], [1, 1], [2, 2]], [False, False, True]),                # collinear, rising: only the best
    ([[3, 3], [float("nan"), 9], [1, 4]], [True, False, True]),      # NaN: never on it, dominates nothing
])
def test_pareto_mask(points, front):
    from recfunnel.compare import pareto_mask

    mask = pareto_mask(np.array(points, dtype=float))
    assert mask.dtype == bool and mask.tolist() == front


def test_pareto_mask_matches_the_definition_on_random_points():
    from recfunnel.compare import pareto_mask

    pts = np.random.default_rng(0).integers(0, 6, size=(60, 2)).astype(float)  # many ties
    dominated = [any((q >= p).all() and (q > p).any() for q in pts) for p in pts]
    assert pareto_mask(pts).tolist() == [not d for d in dominated]
    assert pareto_mask(np.empty((0, 2))).shape == (0,)


def test_pareto_table_without_repeated_seeds_has_one_row_per_run():
    from recfunnel.compare import pareto_table

    # the seed differs, but with one run per setting there is nothing to average: it stays a key
    runs = [make_run(f"{i}", {"w": w, "seed": i}, {"x": x, "y": y})
            for i, (w, x, y) in enumerate([(0, 0.3, 0.1), (1, 0.2, 0.2), (2, 0.1, 0.15)])]
    df = pareto_table(runs, "x", "y")
    assert list(df.columns) == ["run", "w", "seed", "x", "y", "pareto"]
    assert df["w"].tolist() == [0, 1, 2] and df["pareto"].tolist() == [True, True, False]


def test_compare_pareto_aggregates_seeds_per_setting(tmp_path):
    sweep, out = fake_sweep(tmp_path / "sweep"), tmp_path / "out"
    proc = run("recfunnel.compare", str(sweep), "--pareto", ENG, SAT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr
    assert "2 of 3 settings" in proc.stdout and "on the Pareto front" in proc.stdout
    table = pd.read_csv(out / "pareto.csv")
    assert list(table.columns) == [WEIGHT, ENG, f"{ENG} std", SAT, f"{SAT} std", "seeds", "pareto"]
    assert table[WEIGHT].tolist() == [0, 1, 2] and table["seeds"].tolist() == [2, 2, 2]
    assert table["pareto"].tolist() == [True, True, False]
    for w, row in zip((0, 1, 2), table.itertuples(index=False)):
        eng, sat = np.array([POINTS[w, 0], POINTS[w, 1]]).T
        assert row[1] == pytest.approx(eng.mean()) and row[2] == pytest.approx(eng.std(ddof=1))
        assert row[3] == pytest.approx(sat.mean()) and row[4] == pytest.approx(sat.std(ddof=1))
    data = (out / "pareto.png").read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    assert not (out / "comparison.csv").exists()  # --pareto replaces the default table


def test_compare_pareto_default_out_is_the_sweeps_compare_dir(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    proc = run("recfunnel.compare", str(sweep), "--pareto", ENG, SAT)
    assert proc.returncode == 0, proc.stderr
    assert (sweep / "compare" / "pareto.csv").is_file() and (sweep / "compare" / "pareto.png").is_file()


def test_compare_pareto_leaves_out_runs_lacking_a_metric_with_one_warning(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep", drop=[(2, 0, SAT), (2, 1, SAT), (0, 1, ENG)])
    proc = run("recfunnel.compare", str(sweep), "--pareto", ENG, SAT, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, proc.stderr
    assert "3 of 6 runs" in warnings[0] and f"1 lacks {ENG}" in warnings[0] and f"2 lack {SAT}" in warnings[0]
    table = pd.read_csv(tmp_path / "out" / "pareto.csv")
    assert table[WEIGHT].tolist() == [0, 1] and table["seeds"].tolist() == [1, 2]
    assert table[ENG].tolist() == pytest.approx([0.30, 0.27]) and table["pareto"].tolist() == [True, True]


def test_compare_pareto_with_no_run_holding_the_metrics_is_one_clear_error(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    proc = run("recfunnel.compare", str(sweep), "--pareto", ENG, "test/revenue@10", "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "6 lack test/revenue@10" in proc.stderr and SAT in proc.stderr  # names the metrics the runs have
    assert not (tmp_path / "out" / "pareto.csv").exists()
