"""Training-speed benchmark (not a test): our Lightning + TorchRec step vs a plain PyTorch loop over
the same model and the same batches, in the same process; and full-corpus evaluation time.

    .venv/bin/python benchmarks/bench_train.py [--steps 60] [--overrides model.net.history_encoder=attention]
    .venv/bin/python benchmarks/bench_train.py --eval-only --items 1000000 --users 10000

Batches are built once and replayed from memory by both loops, so the ratio measures the training
step (Lightning's loop, logging, hooks) and not the data pipeline. Goal: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recfunnel.eval.metrics import ranking_metrics  # noqa: E402
from recfunnel.tasks.build import build_datamodule, build_task  # noqa: E402


def _identity(batch):
    return batch


class ReplayBatches(pl.LightningDataModule):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.batches, batch_size=None, collate_fn=_identity)


def plain_loop(task, batches) -> float:
    """The same forward and loss as RetrievalTask.training_step (``compute_loss``), backward and
    optimiser step, with no framework around them."""
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    task.train()
    start = time.perf_counter()
    for b in batches:
        loss = task.compute_loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def lightning_loop(task, batches) -> float:
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         accelerator="cpu", devices=1)
    start = time.perf_counter()
    trainer.fit(task, datamodule=ReplayBatches(batches))
    return time.perf_counter() - start


def bench_training(args) -> list[dict]:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/bench_train", "logger=none",
                                          f"paths.data_dir={args.data_dir}", *args.overrides])
    dm = build_datamodule(cfg)
    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.steps)]
    n = sum(len(b["item_idx"]) for b in batches)
    pairs = []
    for rep in range(args.repeats):  # alternate which loop goes first, so machine noise hits both alike
        times = {}
        for which in (("plain", "lightning") if rep % 2 == 0 else ("lightning", "plain")):
            torch.manual_seed(0)
            task = build_task(cfg.model, dm)
            times[which] = plain_loop(task, batches) if which == "plain" else lightning_loop(task, batches)
        pairs.append((times["plain"], times["lightning"]))
    plain = float(np.median([p for p, _ in pairs]))
    ratio = float(np.median([light / p for p, light in pairs]))
    return [{"loop": "plain PyTorch", "samples/s": n / plain, "ratio (time vs plain)": 1.0},
            {"loop": "Lightning RetrievalTask", "samples/s": n / (plain * ratio),
             "ratio (time vs plain)": ratio}]


@torch.no_grad()
def bench_eval(users: int, items: int, dim: int, chunk: int, seen_per_user: int = 100) -> dict:
    """Scores + exclusions + metrics for `users` x `items`, as the task does, in user chunks."""
    g = torch.Generator().manual_seed(0)
    item_vecs = torch.nn.functional.normalize(torch.randn(items, dim, generator=g), dim=1)
    user_vecs = torch.nn.functional.normalize(torch.randn(users, dim, generator=g), dim=1)
    targets = torch.randint(items, (users,), generator=g)
    start = time.perf_counter()
    for lo in range(0, users, chunk):
        u = user_vecs[lo:lo + chunk]
        scores = u @ item_vecs.T
        seen = torch.randint(items, (len(u), seen_per_user), generator=g).sort(1).values
        unique = torch.ones_like(seen, dtype=torch.bool)
        unique[:, 1:] = seen[:, 1:] != seen[:, :-1]
        rows = torch.arange(len(u))[:, None].expand_as(seen)[unique]
        ranking_metrics(scores, targets[lo:lo + chunk], (rows, seen[unique]))
    return {"users x items": f"{users:,} x {items:,}", "dim": dim, "seconds": time.perf_counter() - start}


def show(title, rows):
    table = Table(title=title)
    for k in rows[0]:
        table.add_column(k, justify="right")
    for r in rows:
        table.add_row(*[f"{v:,.3g}" if isinstance(v, float) else str(v) for v in r.values()])
    Console(width=120).print(table)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR", str(ROOT / "data")))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--chunk", type=int, default=256)
    args = ap.parse_args()
    if not args.eval_only:
        show(f"training step, {args.steps} ML-100K batches, median over {args.repeats} alternating repeats",
             bench_training(args))
    show("full-corpus evaluation (scores, exclusions, metrics)", [
        bench_eval(943, 1682, 64, 1024), bench_eval(args.users, args.items, 64, args.chunk)])
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
