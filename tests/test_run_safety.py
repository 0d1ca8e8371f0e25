"""A finished run is never damaged: bad overrides, concurrent runs, damaged checkpoints, bad config
values and SIGTERM each end in one clear line and leave the run directory as it was (or resumable)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from recfunnel.runs import run_lock
from recfunnel.serving.recommender import Recommender
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.config_checks import check_config
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, ROOT, TINY_FUNNEL, run

FAST = ["debug=fast", "logger=csv", f"paths.data_dir={DATA_DIR}", "data.batch_size=256"]


def snapshot(folder):
    """Every file of a run directory (but the appended job log) and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.suffix != ".log"}


def one_line(proc):
    """The process said what went wrong in one line (``error: ...``), with no traceback."""
    said = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "stopped:"))]
    return len(said) == 1 and "Traceback" not in proc.stderr


# -- a finished run survives a bad command into its directory --------------------------------------
def test_bad_override_into_a_finished_funnel_run_leaves_it_intact_and_servable(funnel_run, tmp_path):
    copy = tmp_path / "funnel"
    shutil.copytree(funnel_run, copy)
    before = snapshot(copy)
    proc = run("recfunnel.funnel", *TINY_FUNNEL, "retriever.run_dir=/nonexistent", "model=dcnv2",
               f"hydra.run.dir={copy}")
    assert proc.returncode == 2 and one_line(proc), proc.stderr[-2000:]
    assert "holds a run with another config: model.net.dcn.deep, model.net.dcn.rank, " in proc.stderr
    assert "model.net.interaction, " in proc.stderr and "retriever.run_dir differ" in proc.stderr
    assert snapshot(copy) == before
    assert Recommender.from_run(copy, data_dir=str(DATA_DIR)).recommend(196, k=3)["items"]


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory):
    """A finished ``FAST`` retriever run; tests work on copies of it."""
    out = tmp_path_factory.mktemp("fast") / "run"
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_a_run_records_its_overrides_and_a_refused_command_rewrites_no_record(fast_run, tmp_path):
    """The run's own record of its command line (``overrides.yaml``; Hydra's ``.hydra/`` is off) is
    written after the checks: a refused command, secret and all, leaves every byte as it was."""
    assert (fast_run / "overrides.yaml").read_text().splitlines() == [f"- {o}" for o in FAST]
    assert not (fast_run / ".hydra").exists()
    out = tmp_path / "run"
    shutil.copytree(fast_run, out)
    before = snapshot(out)
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "+logger.wandb.api_key=hunter2", "model.net.dim=7")
    assert proc.returncode == 2 and one_line(proc) and "holds a run with another config" in proc.stderr, proc.stderr
    assert snapshot(out) == before and not (out / ".hydra").exists()
    assert not [p for p in out.rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]


def test_resume_false_into_a_used_directory_is_refused(fast_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(fast_run, out)
    before = snapshot(out)
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "resume=false")
    assert proc.returncode == 2 and one_line(proc) and "already holds a run and resume=false" in proc.stderr
    assert snapshot(out) == before


# -- one run per directory at a time ---------------------------------------------------------------
def test_a_second_run_into_a_running_directory_is_refused_and_the_first_finishes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "recfunnel.train", *FAST, f"hydra.run.dir={out}"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not (out / ".lock").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert (out / ".lock").exists(), "the first run never took the lock"
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
        second = run("recfunnel.train", *FAST, f"hydra.run.dir={out}")
        assert second.returncode == 2 and one_line(second), second.stderr[-2000:]
        assert f"is in use by another run (pid {first.pid}" in second.stderr
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert (out / "metrics.json").exists() and not (out / ".lock").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "earlier"}))
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"its process {dead.pid} is gone" in proc.stdout + proc.stderr
    assert not (out / ".lock").exists()


def test_the_lock_appears_with_its_holder_and_leaves_nothing_behind(tmp_path):
    # the lock is linked into place whole: whoever sees it can read who holds it
    with run_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
        with pytest.raises(RecfunnelError, match=f"in use by another run \\(pid {os.getpid()} "):
            with run_lock(tmp_path):
                pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    assert list(tmp_path.iterdir()) == []


def test_the_lock_works_where_the_filesystem_refuses_hard_links(tmp_path, monkeypatch):
    # some network and FUSE filesystems answer link() with EPERM: the lock is then created exclusively
    def refuse(src, dst):
        raise PermissionError(1, "Operation not permitted", str(src), None, str(dst))

    monkeypatch.setattr(os, "link", refuse)
    with run_lock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RecfunnelError, match=f"in use by another run \\(pid {os.getpid()} "):
            with run_lock(tmp_path):
                pass
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]
    assert list(tmp_path.iterdir()) == []


# -- damaged checkpoints ---------------------------------------------------------------------------
def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_damaged_checkpoints_are_one_clear_error(funnel_run, tmp_path):
    copy = tmp_path / "funnel"
    shutil.copytree(funnel_run, copy)
    (copy / "retriever_run.txt").write_text(str(copy / "retriever") + "\n")

    truncate(copy / "checkpoints" / "best.ckpt")  # the ranker's
    (tmp_path / "u.txt").write_text("196\n")
    proc = run("recfunnel.recommend", f"run_dir={copy}", f"users={tmp_path / 'u.txt'}", f"out={tmp_path / 'o'}")
    assert proc.returncode == 2 and one_line(proc), proc.stderr[-2000:]
    assert f"checkpoint {copy / 'checkpoints' / 'best.ckpt'} is damaged" in proc.stderr

    truncate(copy / "retriever" / "checkpoints" / "best.ckpt")
    with pytest.raises(RecfunnelError, match="best.ckpt is damaged or not a checkpoint"):
        Retriever.from_run(copy / "retriever", data_dir=str(DATA_DIR))
    proc = run("recfunnel.funnel", f"retriever.run_dir={copy / 'retriever'}", f"paths.data_dir={DATA_DIR}",
               "debug=fast", "logger=csv", f"hydra.run.dir={tmp_path / 'new'}")
    assert proc.returncode == 2 and one_line(proc) and "best.ckpt is damaged" in proc.stderr, proc.stderr[-2000:]


def test_a_damaged_last_checkpoint_stops_a_resume_with_one_line(fast_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(fast_run, out)
    last = out / "checkpoints" / "last.ckpt"
    truncate(last)
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}")
    assert proc.returncode == 2 and one_line(proc), proc.stderr[-2000:]
    assert f"checkpoint {last} is damaged or not a checkpoint" in proc.stderr


# -- config values ---------------------------------------------------------------------------------
BAD_VALUES = [
    ("model.lr=abc", "model.lr='abc' is not valid: use a number > 0"),
    ("data.batch_size=0", "data.batch_size=0 is not valid: use an integer ≥ 1"),
    ("model.net.dim=-4", "model.net.dim=-4 is not valid: use an integer ≥ 1"),
    ("model.loss.temperature=0", "model.loss.temperature=0 is not valid: use a number > 0"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 is not valid: use an integer ≥ 1 (or -1: until early stopping); "
                             "0 would score an untrained model"),
    ("model.net.dropout=1.5", "model.net.dropout=1.5 is not valid: use a number in [0, 1)"),
    ("+trainer.gradient_clip_algorithm=foo",
     "trainer.gradient_clip_algorithm='foo' is not valid: use null, norm or value"),
    ("+trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 is not valid: use null or a number > 0"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_config_value_names_the_key_and_its_range(override, message, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", *FAST, override])
    with pytest.raises(RecfunnelError) as e:
        check_config(cfg)
    assert str(e.value) == message


@pytest.mark.parametrize("overrides, message", [
    (["callbacks.ema.decay=1"], "callbacks.ema.decay=1 is not valid: use a number in (0, 1)"),
    (["trainer=sharded"], "callbacks=ema cannot average a sharded model (trainer.strategy=sharded): "
                          "use callbacks=default, or a strategy that keeps the model whole"),
])
def test_weight_averaging_settings_that_cannot_run_are_named(overrides, message, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", *FAST, "callbacks=ema", *overrides])
    with pytest.raises(RecfunnelError) as e:
        check_config(cfg)
    assert str(e.value) == message


def test_a_hard_negative_pool_smaller_than_the_candidates_is_refused_and_follows_them_by_default(tmp_path):
    """With hard_pool < K the ranker never trains on a negative ranked between them, while positives are
    ranked there, and learns to put those ranks first (K 200, pool 100: valid NDCG@10 0.03 vs 0.16)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        follows = compose("funnel", overrides=[f"paths.output_dir={tmp_path}", "pairs.candidates=200"])
        bad = compose("funnel", overrides=[f"paths.output_dir={tmp_path}", "pairs.candidates=200", "pairs.hard_pool=100"])
    assert follows.pairs.hard_pool == 200
    check_config(follows)
    with pytest.raises(RecfunnelError, match=r"pairs.hard_pool=100 is below pairs.candidates=200: the ranker would "
                                             r"re-order candidates ranked 101-200 without ever training on a negative"):
        check_config(bad)


def test_a_bad_config_value_exits_2_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "model.lr=abc", "data.batch_size=0")
    assert proc.returncode == 2 and one_line(proc), proc.stderr
    assert "model.lr='abc' is not valid" in proc.stderr and "data.batch_size=0 is not valid" in proc.stderr
    assert not (out / "config.yaml").exists() and not (out / "run_info.json").exists()


def test_a_new_run_refused_by_its_schema_leaves_the_directory_for_the_fixed_command(tmp_path):
    """Refused once the data is read (a retriever schema reading item popularity as of the event):
    one line, exit 2, and no config.yaml / run_info.json left that would refuse the corrected run."""
    out = tmp_path / "run"
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "features=ml100k_rank")
    assert proc.returncode == 2 and one_line(proc), proc.stderr
    assert "feature 'item_pop' (source item.pop_count) reads an item's popularity" in proc.stderr
    assert not (out / "config.yaml").exists() and not (out / "run_info.json").exists()


def test_the_default_configs_pass_the_checks(tmp_path):
    for name, extra in (("train", []), ("funnel", ["experiment=ml100k_funnel"]), ("evaluate", [])):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            check_config(compose(name, overrides=[f"paths.output_dir={tmp_path}", *extra]))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")))
def test_every_experiment_and_its_retriever_compose_and_pass_the_checks(experiment, tmp_path):
    funnel = "funnel" in OmegaConf.load(ROOT / "configs" / "experiment" / f"{experiment}.yaml").tags
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("funnel" if funnel else "train", overrides=[f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
        check_config(cfg)
        if funnel:  # the retriever it trains first
            check_config(compose("train", overrides=[*cfg.retriever.overrides, f"paths.output_dir={tmp_path}"]))
