"""Reproducible and resumable runs: same seed → same metrics; SIGKILL or SIGTERM mid-epoch → same final metrics.

Each case compares with one reference run trained from scratch (``reference``): a run killed mid-epoch
and resumed started from scratch with the same seed too, so ending at the reference's metrics shows
both that the seed fixes the run and that the resume continues it exactly."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import DATA_DIR, ROOT

ARGS = ["logger=csv", f"paths.data_dir={DATA_DIR}", "data.batch_size=256", "trainer.max_epochs=2",
        "+trainer.limit_train_batches=12", "trainer.enable_progress_bar=false", "callbacks.last.every_n_train_steps=4",
        "model.loss.num_uniform_negatives=32", "model.net.dropout=0.2", "trainer.log_every_n_steps=1"]


def train(run_dir, *extra, wait=True):
    cmd = [sys.executable, "-m", "recfunnel.train", *ARGS, f"hydra.run.dir={run_dir}", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return out + err
    return proc


def metrics(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k.startswith(("valid/", "test/"))}


def csv_steps(run_dir):
    """The training steps of the rows of the run's CSV log that hold a training loss."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A run of ``ARGS`` trained from scratch, never stopped."""
    a = tmp_path_factory.mktemp("reference") / "a"
    train(a)
    return a


def test_same_seed_same_metrics_and_sigkill_resume(reference, tmp_path):
    ref = metrics(reference)
    got = killed_mid_epoch_and_resumed(tmp_path / "c")
    assert ref and all(abs(ref[k] - got[k]) <= 1e-6 for k in ref), {k: (ref[k], got[k]) for k in ref}


def killed_mid_epoch_and_resumed(run_dir, *extra):
    """Metrics of a run SIGKILLed after its first mid-epoch checkpoint, then run again (resumed)."""
    proc = train(run_dir, *extra, wait=False)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert last.exists() and not (run_dir / "metrics.json").exists()
    time.sleep(0.5)
    step = torch.load(last, weights_only=True)["global_step"]
    assert step % 12 != 0, f"the kill was not mid-epoch (step {step})"

    output = train(run_dir, *extra)  # same command, same directory: resumes from last.ckpt
    assert "resuming from" in output
    return metrics(run_dir)


def test_weight_averaging_is_what_is_scored_and_resumes_exactly(reference, tmp_path):
    # callbacks=ema: validation, best.ckpt and the scores use the averaged weights; last.ckpt also
    # keeps the raw ones, so a killed run resumes into the same average
    ema = ["callbacks=ema", "callbacks.ema.decay=0.9"]
    plain, a, c = reference, tmp_path / "a", tmp_path / "c"
    train(a, *ema)
    ref = metrics(a)
    assert any(abs(ref[k] - v) > 1e-4 for k, v in metrics(plain).items()), "the average was not scored"
    best = torch.load(a / "checkpoints" / "best.ckpt", weights_only=True)
    raw, averaged = best["current_model_state"], best["state_dict"]
    assert raw.keys() == averaged.keys()
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())

    got = killed_mid_epoch_and_resumed(c, *ema)
    assert all(abs(ref[k] - got[k]) <= 1e-6 for k in ref), {k: (ref[k], got[k]) for k in ref}


def test_sigterm_saves_the_state_says_where_exits_143_and_resumes_exactly(reference, tmp_path):
    a, c = reference, tmp_path / "c"
    ref = metrics(a)

    proc = train(c, wait=False)
    log = c / "csv" / "metrics.csv"
    deadline = time.time() + 300
    while not (log.exists() and len(log.read_text().splitlines()) > 4) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)  # what kill, SLURM pre-emption and container stops send
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, (proc.returncode, err[-3000:])
    said = [line for line in err.splitlines() if line.startswith("stopped: SIGTERM at step ")]
    assert len(said) == 1 and "run the same command again to resume" in said[0], err[-3000:]
    step = torch.load(c / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"SIGTERM at step {step} " in said[0] and not (c / "metrics.json").exists()
    assert step % 12 != 0, f"the stop was not mid-epoch (step {step})"
    before = csv_steps(c)

    output = train(c)  # resumes where SIGTERM stopped it
    assert f"resuming from {c / 'checkpoints' / 'last.ckpt'} (step {step})" in output
    got = metrics(c)
    assert all(abs(ref[k] - got[k]) <= 1e-6 for k in ref), {k: (ref[k], got[k]) for k in ref}
    # the learning curve before the stop survives the resume; nothing is logged twice
    steps = csv_steps(c)
    assert steps[:len([s for s in before if s < step])] == [s for s in before if s < step]
    assert steps == sorted(set(steps)) == csv_steps(a)
