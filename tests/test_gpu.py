"""The CUDA path: the embedding layer with both backends, one bf16 training step, and full-corpus
evaluation on the device. Marked ``gpu``: skipped without CUDA, deselected by default
(``make test-gpu`` runs them)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from recfunnel.features.batch import TowerInput, make_kjt
from recfunnel.features.embedding import FeatureEmbedding
from recfunnel.features.schema import FeatureSchema
from recfunnel.tasks.build import build_datamodule, build_task

from helpers import DATA_DIR, ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SCHEMA = FeatureSchema.from_config({"features": {
    "user_id": {"tower": "user", "kind": "categorical", "source": "user_id", "dim": 8},
    "hist_items": {"tower": "user", "kind": "sequence", "source": "history.item_id", "table": "item_id"},
    "item_id": {"tower": "item", "kind": "categorical", "source": "item_id", "dim": 8},
    "genres": {"tower": "item", "kind": "multi_hot", "source": "item.genres", "dim": 4, "pooling": "sum"},
    "item_pop": {"tower": "item", "kind": "dense", "source": "item.pop_count"},
}})
SIZES = {"user_id": 50, "item_id": 100, "genres": 7}


def tower(bags: dict[str, list[list[int]]], dense: list[list[float]], device: str) -> TowerInput:
    keys = list(bags)
    kjt = make_kjt(keys, [torch.tensor([i for b in bags[k] for i in b], dtype=torch.int64) for k in keys],
                   [torch.tensor([len(b) for b in bags[k]], dtype=torch.int32) for k in keys])
    return TowerInput(sparse=kjt, dense=torch.tensor(dense, dtype=torch.float32)).to(device)


def inputs(device: str) -> dict[str, TowerInput]:
    return {"user": tower({"user_id": [[3], [49], [0]], "hist_items": [[1, 2, 99], [], [5]]}, [[], [], []], device),
            "item": tower({"item_id": [[7], [0]], "genres": [[0, 6], []]}, [[3.0], [0.5]], device),
            "context": tower({}, [[], [], []], device)}


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_embedding_layer_on_cuda_matches_the_cpu_layer(backend):
    torch.manual_seed(0)
    cpu = FeatureEmbedding(SCHEMA, SIZES, backend="torch")
    gpu = FeatureEmbedding(SCHEMA, SIZES, backend=backend)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    want, got = cpu(inputs("cpu")), gpu(inputs("cuda"))
    for t in ("user", "item"):
        assert got[t].is_cuda
        torch.testing.assert_close(got[t].cpu(), want[t], atol=1e-5, rtol=1e-5)
    sum(v.sum() for v in got.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in gpu.parameters())


def compose_cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", "debug=fast", "logger=csv",
                                           f"paths.data_dir={DATA_DIR}", "data.batch_size=256", *overrides])


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_one_bf16_training_step_on_cuda(tmp_path, ml100k_data, backend):
    cfg = compose_cfg(tmp_path, f"model.net.backend={backend}", "model.net.history_encoder=attention",
                      "features=ml100k_seq")
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    before = {k: v.detach().clone() for k, v in task.net.state_dict().items()}
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="bf16-mixed", max_steps=1, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(task, datamodule=dm)
    after = task.net.state_dict()
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before), "one step changed no weight"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_full_corpus_evaluation_on_cuda_matches_cpu(tmp_path, ml100k_data):
    cfg = compose_cfg(tmp_path, "model.net.backend=torch")
    dm = build_datamodule(cfg)
    task = build_task(cfg.model, dm)
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    on_cpu = pl.Trainer(accelerator="cpu", **quiet).validate(task, datamodule=dm, verbose=False)[0]
    on_gpu = pl.Trainer(accelerator="gpu", devices=1, **quiet).validate(task, datamodule=dm, verbose=False)[0]
    assert on_cpu.keys() == on_gpu.keys() and "valid/ndcg@10" in on_gpu
    for k in on_cpu:
        assert on_gpu[k] == pytest.approx(on_cpu[k], abs=2e-3), k  # TF32 matmuls may reorder near-ties
