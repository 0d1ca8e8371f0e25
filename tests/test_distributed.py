"""Multi-process training on 2 CPU processes (gloo): ``trainer=sharded`` (TorchRec model parallelism
under Lightning, ``recfunnel.tasks.sharding``) and ``trainer=ddp``.

The unit-level cases run ``tests/distributed_worker.py`` under ``torchrun``; the others run the
real entry points, whose second process Lightning starts itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from recfunnel.tasks.checkpoints import load_checkpoint
from recfunnel.tasks.sharding import META
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, ROOT, TINY_FUNNEL, run

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
# model.net.backend stays auto (the torch collection on CPU): trainer=sharded moves the tables to TorchRec's
RETRIEVER = ["experiment=ml100k_two_tower", "logger=csv", f"paths.data_dir={DATA_DIR}"]


def worker(tmp_path, *args: str) -> dict:
    done = subprocess.run([*TORCHRUN, str(ROOT / "tests" / "distributed_worker.py"), args[0], str(tmp_path), *args[1:]],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


def test_sharded_training_equals_single_process_training(tmp_path, ml100k_data):
    """Same weights, same global batches, SGD: 2 processes (each on half of every batch, the tables
    sharded every way gloo offers) end where one process on whole batches ends."""
    result = worker(tmp_path, "equality", "data_parallel", "item_id=column_wise,user_id=table_column_wise,genres=table_wise")
    tables = result["plan"]["tables"]
    assert tables["item_id"] == {"type": "column_wise", "ranks": [0, 1, 0, 1], "module": "net.embedding.ebc"}
    assert tables["user_id"]["type"] == "table_column_wise" and sorted(set(tables["user_id"]["ranks"])) == [0, 1]
    assert tables["genres"]["type"] == "table_wise" and tables["age"]["type"] == "data_parallel"
    assert result["keys"] == 26 and result["max_update"] > 1e-2  # the weights did move
    assert result["max_diff"] < 1e-5, result


def test_fused_optimizer_leaves_rows_no_batch_touched_unchanged(tmp_path, ml100k_data):
    result = worker(tmp_path, "untouched")
    assert result["fused_lr"] == [pytest.approx(0.07)]  # trainer.sharding.lr reached the fused optimizer
    assert result["untouched"] > 0 and result["touched"] > 0
    assert result["untouched_changed"] == 0
    assert result["touched_changed"] == result["touched"]


def test_a_sharded_checkpoint_round_trips_weights_and_fused_optimizer_state(tmp_path, ml100k_data):
    result = worker(tmp_path, "roundtrip")
    assert result["files"] == [".metadata", "__0_0.distcp", "__1_0.distcp", META]  # a shard per rank
    for rank in result["ranks"]:
        assert rank["differed_before"] > 0  # the fresh model started elsewhere
        assert rank["weights"] == 0.0 and rank["fused"] == 0.0
        assert rank["fused_keys"] > 0 and rank["fused_nonzero"] == rank["fused_keys"]


@pytest.mark.slow  # two full ML-100K runs (~1 min on 2 cores); test_sharded_training_equals_single_process_training is the fast check
def test_sharded_ml100k_run_matches_the_single_process_run(tmp_path, ml100k_data):
    """2 epochs of the ML-100K retriever sharded on 2 processes and on one: validation NDCG@10 within
    noise; every target scored once; the plan recorded; best.ckpt a folder any loader reads."""
    metrics = {}
    for name, trainer in (("single", ["trainer=default"]), ("sharded", ["trainer=sharded"])):
        done = run("recfunnel.train", *RETRIEVER, *trainer, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / name}",
                   timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["sharded"]["valid/users"] == metrics["single"]["valid/users"] == 943
    assert metrics["sharded"]["test/users"] == 943
    assert abs(metrics["sharded"]["valid/ndcg@10"] - metrics["single"]["valid/ndcg@10"]) < 0.015, metrics
    info = json.loads((tmp_path / "sharded" / "run_info.json").read_text())
    assert info["sharding"]["world_size"] == 2 and info["sharding"]["tables"]["item_id"]["type"] in (
        "table_wise", "column_wise", "table_column_wise", "data_parallel")
    assert "item_id" in (tmp_path / "sharded" / "sharding_plan.txt").read_text()
    best = tmp_path / "sharded" / "checkpoints" / "best.ckpt"
    assert best.is_dir() and (best / META).is_file()
    state = load_checkpoint(best)["state_dict"]  # one process reads the shards back as whole tensors
    assert tuple(state["net.embedding.ebc.embedding_bags.item_id.weight"].shape) == (1682, 64)
    assert (tmp_path / "sharded" / "index").is_dir()


def test_a_sharded_run_resumes_and_refuses_another_world_size(tmp_path, ml100k_data):
    out = tmp_path / "run"
    short = ["trainer=sharded", "+trainer.limit_train_batches=5"]  # a few steps per epoch: what is checked is the resume
    first = run("recfunnel.train", *RETRIEVER, *short, "trainer.max_epochs=1", f"hydra.run.dir={out}", timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    # resume with more epochs: the sharded last.ckpt folder is restored, training continues at epoch 2
    again = run("recfunnel.train", *RETRIEVER, *short, "trainer.max_epochs=2", f"hydra.run.dir={out}", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout + again.stderr and json.loads((out / "metrics.json").read_text())["train/epochs"] == 2
    # 3 processes cannot take the 2 shards: one line, exit 2, and the run's checkpoints are left as they were
    before = sorted(p.name for p in (out / "checkpoints" / "last.ckpt").iterdir())
    wider = run("recfunnel.train", *RETRIEVER, *short, "trainer.devices=3", "trainer.max_epochs=3",
                f"hydra.run.dir={out}", timeout=600)
    assert wider.returncode == 2, wider.stderr[-3000:]
    assert "written by 2 processes and this run has 3" in wider.stderr
    assert sorted(p.name for p in (out / "checkpoints" / "last.ckpt").iterdir()) == before


def test_a_sharding_config_that_cannot_run_is_one_line_and_exit_2(tmp_path):
    done = run("recfunnel.train", *RETRIEVER, "trainer=sharded", "trainer.sharding.optimizer=adam", f"hydra.run.dir={tmp_path}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "trainer.sharding.optimizer=adam has no CPU kernel" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"world_size": 1}, "sharding needs at least 2"),
    ({"types": ["row_wise"]}, "trainer.sharding.types=row_wise needs CUDA"),
    ({"tables": {"item_id": "row_wise"}}, "trainer.sharding.tables.item_id=row_wise needs CUDA"),
    ({"optimizer": "adam"}, "no CPU kernel"),
    ({"types": ["diagonal"]}, "trainer.sharding.types='diagonal' is not a sharding type"),
    ({"types": []}, "trainer.sharding.types is empty"),
])
def test_each_sharding_config_that_cannot_run_is_named(kwargs, message):
    """What the run above checks before anything starts (``check_sharding``), case by case."""
    from recfunnel.tasks.sharding import check_sharding

    args = {"types": ["table_wise"], "tables": None, "optimizer": "rowwise_adagrad", "accelerator": "cpu", "world_size": 2}
    check_sharding(**args)  # the default config runs
    with pytest.raises(RecfunnelError, match=re.escape(message)):
        check_sharding(**{**args, **kwargs})
    if kwargs.get("types") == ["row_wise"] or "optimizer" in kwargs:
        check_sharding(**{**args, **kwargs, "accelerator": "cuda"})  # on CUDA it can


def test_a_plan_that_does_not_fit_memory_is_one_line_and_exit_2(tmp_path, ml100k_data):
    done = run("recfunnel.train", *RETRIEVER, "trainer=sharded", "trainer.sharding.types=[table_wise]",
               "trainer.sharding.memory_gb=0.00001", f"hydra.run.dir={tmp_path}", timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "planner found no plan" in done.stderr and "Traceback" not in done.stderr


def test_ddp_and_sharded_train_the_funnel_and_score_every_user_once(tmp_path, ml100k_data):
    """``trainer=ddp`` and ``trainer=sharded`` on 2 CPU processes: the retriever and the ranker train,
    and full-corpus evaluation counts every valid/test user exactly once."""
    for name in ("ddp", "sharded"):
        extra = ["trainer.accelerator=cpu", "trainer.devices=2"]
        done = run("recfunnel.funnel", *TINY_FUNNEL, "logger=csv", f"trainer={name}", *extra,
                   f"hydra.run.dir={tmp_path / name}", timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        retriever = json.loads((tmp_path / name / "retriever" / "metrics.json").read_text())
        funnel = json.loads((tmp_path / name / "metrics.json").read_text())
        assert retriever["valid/users"] == retriever["test/users"] == 943
        assert funnel["valid/ranker/users"] == funnel["test/ranker/users"] == 943
        assert 0 < funnel["test/ndcg@10"] < 1
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_slurm_launcher_config_runs_one_task_per_device():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "trainer=sharded", "trainer.accelerator=gpu",
                                          "trainer.devices=8", "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8 and launcher.nodes == 2


@pytest.mark.parametrize("env, main", [
    ({}, True),
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"RANK": "3", "LOCAL_RANK": "1"}, False),                       # torchrun, second node
    ({"LOCAL_RANK": "1"}, False),                                    # Lightning's launcher, second process
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),
    ({"SLURM_NTASKS": "16", "SLURM_PROCID": "0"}, True),
    ({"SLURM_NTASKS": "16", "SLURM_PROCID": "5", "LOCAL_RANK": "5"}, False),
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, True),              # an interactive srun of one task
])
def test_which_process_writes_the_run(monkeypatch, env, main):
    from recfunnel.utils.dist import is_main_process

    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_main_process() is main
