"""The training entry point end to end on ML-100K with tiny settings, and its failure modes."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from recfunnel.runs import save_index, score
from recfunnel.serving.index import ItemIndex
from recfunnel.tasks.base import NonFiniteLossError
from recfunnel.tasks.build import build_datamodule, build_task

from helpers import DATA_DIR, ROOT, run

FAST = ["debug=fast", "logger=csv", f"paths.data_dir={DATA_DIR}", "data.batch_size=256"]


def compose_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *FAST, *overrides])


def test_train_writes_metrics_config_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "model.net.history_encoder=attention",
               "model.loss.num_uniform_negatives=64", "model.logq_source=streaming")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        for k in ("recall@10", "recall@100", "ndcg@10", "ndcg@20", "mrr"):
            assert 0.0 <= m[f"{split}/{k}"] <= 1.0
    assert (out / "checkpoints" / "best.ckpt").exists() and (out / "checkpoints" / "last.ckpt").exists()
    cfg_text = (out / "config.yaml").read_text()
    assert "history_encoder: attention" in cfg_text and "num_uniform_negatives: 64" in cfg_text
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"]
    index = ItemIndex.load(out / "index")
    assert index.num_items == 1682 and index.item_ids_of(np.array([0]))[0] == 1


def test_exact_index_top_k_equals_score_matrix_top_k(tmp_path, ml100k_data):
    cfg = compose_cfg(tmp_path)
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(task, datamodule=dm)
    task.eval()
    save_index(task, dm, tmp_path, fingerprint="t")
    index = ItemIndex.load(tmp_path / "index", expect_fingerprint="t")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        users = task.net.user_vectors(batch)
        scores = users @ task.catalogue_vectors().T
    _, got = index.search(users.numpy(), 20)
    want = torch.topk(scores, 20).indices.numpy()
    assert (np.sort(got, 1) == np.sort(want, 1)).mean() > 0.999  # ties at float precision aside


def test_scoring_the_best_checkpoint_reuses_its_validation_which_equals_validating_again(tmp_path, ml100k_data):
    cfg = compose_cfg(tmp_path, "trainer.limit_val_batches=3", "trainer.limit_test_batches=3")
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="valid/ndcg@10", mode="max")
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=3, logger=False, callbacks=[best],
                         enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    metrics = score(cfg, task, dm, best.best_model_path)
    reused = task.checkpoint_valid_metrics
    assert reused and set(reused) == {k for k in metrics if k.startswith("valid/")} and reused["valid/users"] > 0
    validated = pl.Trainer(limit_val_batches=3, logger=False, enable_progress_bar=False).validate(
        task, datamodule=dm, ckpt_path=best.best_model_path, verbose=False, weights_only=True)[0]
    assert {k: metrics[k] for k in validated} == validated  # the same values, to the bit
    assert {"test/ndcg@10", "test/users"} <= set(metrics)
    # a checkpoint saved at another step than its validation (mid-epoch) is validated again
    ckpt = torch.load(best.best_model_path, weights_only=True)
    ckpt["global_step"] += 1
    torch.save(ckpt, tmp_path / "mid_epoch.ckpt")
    again = score(cfg, task, dm, str(tmp_path / "mid_epoch.ckpt"))
    assert task.checkpoint_valid_metrics is None and again == metrics


def test_nan_loss_names_step_and_lr_and_keeps_last_checkpoint(tmp_path, ml100k_data):
    cfg = compose_cfg(tmp_path)
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False,
                         callbacks=[ckpt], enable_progress_bar=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    good = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    with torch.no_grad():  # poison the weights: the next loss is NaN
        task.net.user_mlp[0].weight.fill_(math.nan)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, logger=False,
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1)],
                         enable_progress_bar=False, num_sanity_val_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step \d+ .*learning rate 0.001") as e:
        trainer.fit(task, datamodule=dm)
    assert f"the newest checkpoint, {tmp_path / 'last.ckpt'}, was saved before it" in str(e.value)
    kept = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())
    assert all(torch.equal(good[k], kept[k]) for k in good)
    # without checkpoints the message says so instead of promising one
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been saved yet. Try: lower model.lr"):
        trainer.fit(task, datamodule=dm)


def test_unknown_history_encoder_is_one_clear_error(tmp_path):
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={tmp_path}", "model.net.history_encoder=lstm")
    assert proc.returncode == 2
    assert "history_encoder='lstm' is not valid; choose one of: none, recency, attention" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_another_config_in_a_finished_run_is_refused_and_the_run_is_intact(tmp_path):
    out = tmp_path / "run"
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "model.net.dim=16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # the same run directory with another model size: refused before anything is written
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", "model.net.dim=32")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "holds a run with another config: model.net.dim differ (e.g. model.net.dim: 16 → 32)" in proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = [str(p.relative_to(out)) for p in before.keys() | after.keys()
               if before.get(p) != after.get(p) and not p.name.endswith(".log")]
    assert not changed, f"the refused run changed {changed}"

    # its checkpoints copied into a fresh directory with another model size: resuming fails clearly
    other = tmp_path / "other"
    shutil.copytree(out / "checkpoints", other / "checkpoints")
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={other}", "model.net.dim=32")
    assert proc.returncode == 2
    assert "the checkpoint was written by another model or config" in proc.stderr
    assert "checkpoint (16, " in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("encoder, cls", [("recency", "RecencyPooling"), ("attention", "AttentionEncoder"),
                                          ("recency+attention", "SummedEncoders"), ("none", None)])
def test_history_encoder_option_builds_that_encoder(tmp_path, ml100k_data, encoder, cls):
    cfg = compose_cfg(tmp_path, f"model.net.history_encoder={encoder}")
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    assert type(task.net.encoder).__name__ == cls if cls else task.net.encoder is None
    batch = next(iter(dm.train_dataloader()))
    assert torch.isfinite(task.compute_loss(batch))


def test_full_softmax_loss_is_cross_entropy_over_the_whole_catalogue(tmp_path, ml100k_data):
    cfg = compose_cfg(tmp_path, "model.full_softmax=true", "features=ml100k_seq", "model.loss.temperature=0.1")
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(task, datamodule=dm)  # attaches the datamodule the loss reads the catalogue from
    task.eval()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        got = task.compute_loss(batch)
        logits = task.net.user_vectors(batch) @ task.net.item_vectors(dm.catalogue()).T / 0.1
        want = torch.nn.functional.cross_entropy(logits, batch["item_idx"])
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert logits.shape[1] == dm.data.num_items


def test_gradient_clipping_works_with_sparse_embedding_gradients(tmp_path):
    """A 100k-item catalogue trains its item table with sparse gradients; trainer.gradient_clip_val
    clips them (torch's own clip_grad_norm_ refuses sparse tensors) and the run finishes."""
    out = tmp_path / "run"
    proc = run("recfunnel.train", *FAST, f"hydra.run.dir={out}", f"paths.data_dir={tmp_path / 'data'}",
               "data=synthetic", "features=synthetic", "data.source.num_interactions=20000",
               "data.source.num_users=500", "data.source.num_items=100000", "+trainer.gradient_clip_val=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert math.isfinite(json.loads((out / "metrics.json").read_text())["test/ndcg@10"])
