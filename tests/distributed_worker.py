"""Multi-process cases for tests/test_distributed.py, run by ``torchrun --nproc-per-node 2`` (gloo):

    torchrun --nproc-per-node 2 tests/distributed_worker.py CASE OUT_DIR [ARGS]

Every case trains the real two-tower network (``features=ml100k``: 12 embedding tables, dense
features, MLP towers) under a real Lightning ``Trainer`` with ``ShardedStrategy``; rank 0 writes
what the test asserts on to ``OUT_DIR/result.json``.

* ``equality TYPES [TABLE=TYPE,...]``: the same initial weights and the same global batches, trained (a) sharded by 2
  processes, each on its half of every global batch, with SGD (fused SGD for the tables), and (b) by
  one process on whole batches with plain SGD; writes the largest weight difference.
* ``untouched``: fused row-wise Adagrad (a learning rate of its own); writes it as the fused
  optimizer holds it, and how many item-table rows no batch touched and how
  many of them changed, and how many touched rows changed.
* ``roundtrip``: trains with fused Adagrad, saves a sharded checkpoint, restores it into a fresh
  model through ``trainer.fit(ckpt_path=...)``, and writes the largest difference of the weights'
  and of the fused optimizer state's local shards.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from recfunnel.data.datamodule import EventBatches
from recfunnel.tasks.build import build_datamodule, build_task
from recfunnel.tasks.checkpoints import load_checkpoint
from recfunnel.tasks.sharding import ShardedStrategy

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, STEPS, LR = 256, 6, 0.05
FUSED_LR = 0.07  # the untouched case's fused learning rate: not the task's, so a dropped setting shows
RANK = int(os.environ.get("RANK", "0"))  # torchrun's; the process group starts with the Trainer


class PointwiseTask(pl.LightningModule):
    """The two-tower network with a loss that is a mean over examples (the logistic loss of each
    event's user·item score), so the mean of two halves' losses is the whole batch's loss and
    sharded training must equal single-process training exactly (with SGD)."""

    def __init__(self, net: torch.nn.Module, lr: float):
        super().__init__()
        self.net, self.lr = net, lr

    def loss(self, batch: dict) -> torch.Tensor:
        user, item = self.net.user_vectors(batch), self.net.item_vectors(batch["item"])
        return F.softplus(-(user * item).sum(1) / 0.1).mean()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Batches(torch.utils.data.Dataset):
    """This rank's half of each fixed global batch (all of it without a process group)."""

    def __init__(self, batches: list[dict], halves: list[dict] | None):
        self.batches, self.halves = batches, halves

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.halves[i] if self.halves is not None else self.batches[i]


def setup(seed: int = 0):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["features=ml100k", "model.net.backend=torchrec", "model.net.dropout=0.0",
                                          f"paths.data_dir={ROOT / 'data'}"])
    dm = build_datamodule(cfg)
    torch.manual_seed(seed)
    net = build_task(cfg.model, dm).net
    events = EventBatches(dm.store, dm.train_rows, with_items=True)
    g = torch.Generator().manual_seed(1)
    rows = [dm.train_rows[torch.randperm(len(dm.train_rows), generator=g)[:GLOBAL_BATCH].numpy()] for _ in range(STEPS)]
    return net, events, rows


def sharded_trainer(out: Path, optimizer: str, types: list[str], steps: int = STEPS,
                    tables: dict[str, str] | None = None, lr: float = LR) -> pl.Trainer:
    strategy = ShardedStrategy(types=types, tables=tables, optimizer=optimizer, lr=lr, min_partition=8, run_dir=out)
    return pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                      enable_model_summary=False)


def loader(events: EventBatches, rows: list, rank: int | None) -> torch.utils.data.DataLoader:
    whole = [events.batch_for_rows(r) for r in rows]
    halves = None if rank is None else [events.batch_for_rows(r[rank::2]) for r in rows]
    return torch.utils.data.DataLoader(Batches(whole, halves), batch_size=None, shuffle=False)


def case_equality(out: Path, types: str, tables: str = "") -> dict:
    net, events, rows = setup()
    reference = copy.deepcopy(net)  # same initial weights, trained below by one process
    initial = {k: v.clone() for k, v in PointwiseTask(reference, LR).state_dict().items()}
    task = PointwiseTask(net, LR)
    overrides = dict(pair.split("=") for pair in tables.split(",") if pair)
    trainer = sharded_trainer(out, "sgd", types.split(","), tables=overrides)
    trainer.fit(task, train_dataloaders=loader(events, rows, RANK))
    trainer.save_checkpoint(out / "final.ckpt")
    if trainer.global_rank != 0:
        return {}
    sharded = load_checkpoint(out / "final.ckpt")["state_dict"]
    single = PointwiseTask(reference, LR)
    opt = single.configure_optimizers()
    for batch in loader(events, rows, None):
        opt.zero_grad()
        single.loss(batch).backward()
        opt.step()
    want = single.state_dict()
    diffs = {k: float((sharded[k].float() - want[k].float()).abs().max()) for k in want if want[k].numel()}
    moved = {k: float((want[k].float() - v.float()).abs().max()) for k, v in initial.items() if v.numel()}
    return {"max_diff": max(diffs.values()), "worst": max(diffs, key=diffs.get), "keys": len(diffs),
            "max_update": max(moved.values()), "plan": json.loads((out / "run_info.json").read_text())["sharding"]}


def case_untouched(out: Path) -> dict:
    net, events, rows = setup()
    before = net.embedding.ebc.embedding_bags["item_id"].weight.detach().clone()
    trainer = sharded_trainer(out, "rowwise_adagrad", ["table_wise"], lr=FUSED_LR)
    task = PointwiseTask(net, LR)
    trainer.fit(task, train_dataloaders=loader(events, rows, RANK))
    trainer.save_checkpoint(out / "final.ckpt")
    groups = task.__dict__["_dmp"].fused_optimizer.param_groups
    if trainer.global_rank != 0:
        return {}
    after = load_checkpoint(out / "final.ckpt")["state_dict"]["net.embedding.ebc.embedding_bags.item_id.weight"]
    touched = torch.zeros(len(before), dtype=torch.bool)
    for r in rows:  # rows read by a batch: each event's item and its user's history items
        batch = events.batch_for_rows(r)
        touched[batch["item_idx"]] = True
        kjt = batch["user"].sparse
        for key in ("hist_items", "session_items"):
            if key in kjt.keys():
                touched[kjt[key].values().long()] = True
    changed = (after != before).any(1)
    return {"fused_lr": sorted({g["lr"] for g in groups}),
            "untouched": int((~touched).sum()), "untouched_changed": int((changed & ~touched).sum()),
            "touched": int(touched.sum()), "touched_changed": int((changed & touched).sum())}


def _local(sd: dict) -> dict:
    """{key: local shard tensor} of a state dict of ShardedTensors / tensors (nested optimizer state flattened)."""
    flat = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif hasattr(value, "local_shards"):
            for i, shard in enumerate(value.local_shards()):
                if shard.tensor.numel():
                    flat[f"{prefix}#{i}"] = shard.tensor.detach().clone()
        elif isinstance(value, torch.Tensor) and value.numel():
            flat[prefix] = value.detach().clone()

    walk("", sd)
    return flat


def case_roundtrip(out: Path) -> dict:
    net, events, rows = setup()
    task = PointwiseTask(net, LR)
    trainer = sharded_trainer(out, "adagrad", ["table_wise", "column_wise"])
    trainer.fit(task, train_dataloaders=loader(events, rows, RANK))
    trainer.save_checkpoint(out / "state.ckpt")
    dmp = task.__dict__["_dmp"]
    weights, fused = _local(task.state_dict()), _local(dmp.fused_optimizer.state_dict())
    fresh_net, _, _ = setup(seed=123)
    fresh = PointwiseTask(fresh_net, LR)
    differed = float((fresh_net.user_mlp[0].weight - net.user_mlp[0].weight).abs().max())  # before the restore
    again = sharded_trainer(out, "adagrad", ["table_wise", "column_wise"], steps=STEPS)
    again.fit(fresh, train_dataloaders=loader(events, rows, RANK), ckpt_path=out / "state.ckpt")
    got_w, got_f = _local(fresh.state_dict()), _local(fresh.__dict__["_dmp"].fused_optimizer.state_dict())
    local = {"weights": max(float((weights[k] - got_w[k]).abs().max()) for k in weights),
             "fused": max(float((fused[k] - got_f[k]).abs().max()) for k in fused) if fused else None,
             "differed_before": differed, "fused_keys": len(fused),
             "fused_nonzero": sum(bool(v.abs().sum() > 0) for v in fused.values())}
    gathered = [None, None]
    dist.all_gather_object(gathered, local)
    return {"ranks": gathered, "files": sorted(p.name for p in (out / "state.ckpt").iterdir())}


if __name__ == "__main__":
    case, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    result = {"equality": case_equality, "untouched": case_untouched, "roundtrip": case_roundtrip}[case](out, *sys.argv[3:])
    if not dist.is_initialized() or dist.get_rank() == 0:
        (out / "result.json").write_text(json.dumps(result))
