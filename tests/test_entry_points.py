"""The real entry points, run as users run them."""

import json
import subprocess
import sys

from helpers import DATA_DIR, ROOT, run


def test_evaluate_popularity_writes_reference_metrics(tmp_path):
    out = tmp_path / "run"
    proc = run("recfunnel.evaluate", "model=popularity", f"hydra.run.dir={out}", f"paths.data_dir={DATA_DIR}")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert round(m["test/recall@10"], 4) == 0.0848 and round(m["test/ndcg@10"], 4) == 0.0441
    assert {"valid/recall@10", "test/recall@100", "test/mrr", "valid/ndcg@20"} <= m.keys()


def test_prepare_prints_stats(tmp_path):
    proc = run("recfunnel.data.prepare", "data=ml100k", f"paths.data_dir={DATA_DIR}")
    assert proc.returncode == 0, proc.stderr
    assert "98,114" in proc.stdout and "1,682" in proc.stdout


def test_missing_local_folder_is_one_clear_error(tmp_path):
    proc = run("recfunnel.data.prepare", "data=ml100k", f"paths.data_dir={tmp_path}",
               f"data.source.local_dir={tmp_path}/nowhere")
    assert proc.returncode == 2
    assert "error: data.source.local_dir=" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ml100k").exists()  # nothing half-written


def test_unknown_override_is_one_clear_error(tmp_path):
    proc = run("recfunnel.train", "model.net.colour=red", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "Could not override 'model.net.colour'" in proc.stderr and "Traceback" not in proc.stderr


def test_sweep_range_on_missing_key_is_one_clear_error(tmp_path):
    proc = run("recfunnel.train", "-m", "hparams_search=two_tower_optuna", "hydra.sweeper.n_trials=1",
               "model.net.colour=interval(0,1)", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode != 0
    assert "model.net.colour" in proc.stderr and "Traceback" not in proc.stderr


def test_a_config_error_is_answered_before_torch_loads(tmp_path):
    """A typo in an override or a bad value stops each entry point before torch, Lightning and
    TorchRec are imported (they take about 10 s on 2 cores): exit 2 or Hydra's 1, and torch unloaded."""
    probe = ("import runpy, sys\n"
             "sys.argv = sys.argv[1:]  # drop -c: argv[0] is the module\n"
             "try:\n"
             "    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
             "except SystemExit as e:\n"
             "    print('exit', e.code, 'torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n")
    for module, override, status in (("recfunnel.train", "model.lr=abc", 2), ("recfunnel.funnel", "model.lr=abc", 2),
                                     ("recfunnel.evaluate", "data.batch_size=0", 2), ("recfunnel.train", "nosuch=1", 1)):
        proc = subprocess.run([sys.executable, "-c", probe, module, override, f"hydra.run.dir={tmp_path / module}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.stdout.strip().splitlines()[-1] == f"exit {status} torch not loaded", (module, proc.stdout, proc.stderr)
