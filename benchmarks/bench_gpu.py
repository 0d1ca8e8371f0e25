"""Throughput sweep for one GPU (not a test): training samples/s of the two-tower retriever and of the
DLRM ranker at large batches, in bf16 autocast, and users/s of full-corpus evaluation.

    python benchmarks/bench_gpu.py                                   # CUDA: batches 8192 and 32768, bf16
    python benchmarks/bench_gpu.py --json out.json --steps 300 --warmup 30
    python benchmarks/bench_gpu.py --device cpu --steps 5            # smoke run on the CPU (batch 512, fp32)
    python benchmarks/bench_gpu.py --backend torchrec --steps 5      # the TorchRec embedding backend

What is timed is the model step alone: the same forward + loss as the tasks' ``training_step``
(``RetrievalTask.compute_loss``, ``RankingTask.compute_loss``) under ``torch.autocast`` (bf16 on
CUDA, as ``trainer=gpu``'s ``bf16-mixed``), backward and the task's own optimiser
(``configure_optimizers``: SparseAdamW), with no framework around it. Batches are built first, moved
to the device, and replayed in turn; each step gets fresh ``KeyedJaggedTensor`` objects over the
device tensors (what a batch is when the loader hands it over), so nothing a KJT caches on first use
(offsets, lengths per key) carries over from one step to the next. ``torch.cuda.synchronize()``
brackets the timed steps, after ``--warmup`` untimed ones.

* two-tower: ``experiment=ml100k_two_tower`` (last-50-items recency encoder, in-batch sampled
  softmax with logQ correction) on the ML-100K DataModule's own training batches at
  ``data.batch_size=B`` (its ~98k train events give B=32768 two distinct batches). A sample is an
  event (a positive pair; the other B-1 positives are its negatives).
* DLRM: ``configs/model/dcnv2.yaml`` (the funnel's ranker; ``--interactions dcn dot`` adds the dot
  interaction of ``dlrm.yaml``) on ``bench_ranker.criteo_like`` batches: 26 categorical features
  with Criteo cardinalities capped at ``--rows-cap`` (tables of >= 100k rows train with sparse
  gradients) and 13 dense ones. A sample is a (query, candidate) pair.
* evaluation: (a) the real ``RetrievalTask`` validated by a Lightning Trainer on ML-100K (943 users x
  1,682 items: user tower, scores, exclusions, metrics; the second of two runs is timed); (b) the
  scoring core of ``RetrievalTask.eval_step`` on random unit vectors for ``--eval-items`` items
  (users scored ``SCORES_AT_ONCE // items`` at a time, 100 excluded items each, metrics summed per
  evaluation batch of ``--eval-batch`` users as the task's accumulation does).

Targets (one H200): two-tower >= 1M samples/s, DLRM >= 500k samples/s; the table gives each figure
as a fraction of its target. Every configuration runs in its own try block: one that fails (out of
memory, a kernel missing) is reported with its error and the others still run. ``--json`` writes
everything (device, versions, each row) to one file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ranker import MODEL_CONFIGS, NUM_DENSE, criteo_like  # noqa: E402  (puts src/ on sys.path too)
from bench_train import ROOT, show  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402

from recfunnel.eval.metrics import ranking_metrics  # noqa: E402
from recfunnel.features.batch import TowerInput  # noqa: E402
from recfunnel.tasks.build import build_datamodule, build_task  # noqa: E402
from recfunnel.tasks.retrieval import SCORES_AT_ONCE  # noqa: E402

TARGETS = {"two_tower": 1_000_000, "dlrm": 500_000}  # training samples/s on one H200


# -- batches on the device -------------------------------------------------------------------------
@dataclasses.dataclass
class _KJTParts:
    """A KJT's tensors on the device; ``make`` gives a fresh KJT over them (nothing cached)."""

    keys: list[str]
    values: torch.Tensor
    lengths: torch.Tensor
    weights: torch.Tensor | None
    stride: int

    def make(self) -> KeyedJaggedTensor:
        if not self.keys:
            return KeyedJaggedTensor.empty(values_dtype=self.values.dtype, lengths_dtype=self.lengths.dtype,
                                           device=self.values.device)
        return KeyedJaggedTensor(keys=self.keys, values=self.values, lengths=self.lengths, weights=self.weights,
                                 stride=self.stride)


def to_device(x: Any, device: torch.device) -> Any:
    """A batch (dicts of tensors, ``TowerInput``s, KJTs) on ``device``, KJTs kept as their parts."""
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, TowerInput):
        return TowerInput(to_device(x.sparse, device), x.dense.to(device))
    if isinstance(x, KeyedJaggedTensor):
        w = x.weights_or_none()
        return _KJTParts(list(x.keys()), x.values().to(device), x.lengths().to(device),
                         None if w is None else w.to(device), x.stride() if x.keys() else 0)
    if torch.is_tensor(x):
        return x.to(device)
    return x


def fresh(x: Any) -> Any:
    """The batch as a step receives it: new KJT objects over the device tensors."""
    if isinstance(x, dict):
        return {k: fresh(v) for k, v in x.items()}
    if isinstance(x, TowerInput):
        return TowerInput(fresh(x.sparse), x.dense)
    if isinstance(x, _KJTParts):
        return x.make()
    return x


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the timed loop --------------------------------------------------------------------------------
def train_steps(task, batches: list, steps: int, warmup: int, device: torch.device, bf16: bool,
                samples_per_batch: int) -> dict[str, Any]:
    """``warmup`` untimed, then ``steps`` timed optimiser steps of ``task`` over ``batches`` in turn."""
    task.to(device).train()
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    losses: list[torch.Tensor] = []

    def step(i: int) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task.compute_loss(fresh(batches[i % len(batches)]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        losses.append(step(i))
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        losses.append(step(i))
    sync(device)
    seconds = time.perf_counter() - start
    values = [float(v) for v in torch.stack(losses).float().cpu()]
    return {"steps": steps, "warmup": warmup, "distinct_batches": len(batches), "seconds": seconds,
            "ms_per_step": 1000 * seconds / steps, "samples_per_s": steps * samples_per_batch / seconds,
            "loss_first": values[0], "loss_last": values[-1], "loss_finite": all(math.isfinite(v) for v in values),
            "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def compose_train(args, batch_size: int):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=["experiment=ml100k_two_tower", "logger=none", "paths.output_dir=/tmp/bench_gpu",
                                           f"paths.data_dir={args.data_dir}", f"data.batch_size={batch_size}",
                                           f"model.net.backend={args.backend}", *args.overrides])


def bench_two_tower(args, device: torch.device, batch_size: int, keep: dict) -> dict[str, Any]:
    cfg = compose_train(args, batch_size)
    dm = build_datamodule(cfg)
    batches = []
    for b in dm.train_dataloader():
        batches.append(to_device(b, device))
        if len(batches) >= args.max_batches:
            break
    if not batches:
        raise RuntimeError(f"ML-100K gives no full training batch of {batch_size}")
    torch.manual_seed(0)
    task = build_task(cfg.model, dm)
    row = train_steps(task, batches, args.steps, args.warmup, device, args.bf16, batch_size)
    keep.setdefault("two_tower", (task, dm))  # for the evaluation benchmark: a model trained a little
    return row


def bench_dlrm(args, device: torch.device, batch_size: int, interaction: str) -> dict[str, Any]:
    schema, rows, dense_stats, batches, _ = criteo_like(batch_size, args.dlrm_batches, args.rows_cap, args.zipf)
    with initialize_config_dir(config_dir=str(ROOT / "configs" / "model"), version_base="1.3"):
        cfg = compose(MODEL_CONFIGS[interaction], overrides=[f"net.interaction={interaction}",
                                                            f"net.backend={args.backend}"])
    inputs = {"schema": schema, "num_embeddings": rows, "num_pair_dense": NUM_DENSE, "dense_stats": dense_stats}
    torch.manual_seed(0)
    task = build_task(cfg, SimpleNamespace(model_inputs=lambda: inputs))
    batches = [to_device(b, device) for b in batches]
    row = train_steps(task, batches, args.steps, args.warmup, device, args.bf16, batch_size)
    row["embedding_rows"] = int(sum(rows.values()))
    return row


# -- evaluation ------------------------------------------------------------------------------------
def bench_eval_ml100k(args, device: torch.device, keep: dict) -> dict[str, Any]:
    """The real RetrievalTask validated by a Lightning Trainer (second of two runs timed)."""
    import pytorch_lightning as pl

    if "two_tower" in keep:
        task, dm = keep["two_tower"]
    else:
        cfg = compose_train(args, 1024)
        dm = build_datamodule(cfg)
        task = build_task(cfg.model, dm)
    users = len(dm.evalsets["valid"].rows)
    trainer = pl.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         precision="bf16-mixed" if args.bf16 else "32-true", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(task, datamodule=dm, verbose=False)
    sync(device)
    start = time.perf_counter()
    metrics = trainer.validate(task, datamodule=dm, verbose=False)[0]
    sync(device)
    seconds = time.perf_counter() - start
    return {"what": "ML-100K valid, RetrievalTask under Trainer.validate", "users": users,
            "items": int(dm.data.num_items), "seconds": seconds, "users_per_s": users / seconds,
            "valid/ndcg@10 (bench-trained model)": float(metrics.get("valid/ndcg@10", float("nan")))}


@torch.no_grad()
def bench_eval_scoring(args, device: torch.device, items: int, users: int, dim: int = 64,
                       seen_per_user: int = 100) -> dict[str, Any]:
    """RetrievalTask.eval_step's scoring core on random unit vectors: chunks of SCORES_AT_ONCE // items
    users, exclusions as (row, item) pairs, the metrics summed per evaluation batch."""
    g = torch.Generator(device=device).manual_seed(0)
    item_vecs = torch.nn.functional.normalize(torch.randn(items, dim, generator=g, device=device), dim=1)
    user_vecs = torch.nn.functional.normalize(torch.randn(users, dim, generator=g, device=device), dim=1)
    targets = torch.randint(items, (users,), generator=g, device=device)
    seen = torch.randint(items, (users, seen_per_user), generator=g, device=device).sort(1).values
    unique = torch.ones_like(seen, dtype=torch.bool)
    unique[:, 1:] = seen[:, 1:] != seen[:, :-1]
    chunk = max(1, SCORES_AT_ONCE // items)

    def run(n_users: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        for lo_batch in range(0, n_users, args.eval_batch):
            hi_batch = min(lo_batch + args.eval_batch, n_users)
            parts = []
            for lo in range(lo_batch, hi_batch, chunk):
                hi = min(lo + chunk, hi_batch)
                scores = user_vecs[lo:hi] @ item_vecs.T
                keep = unique[lo:hi]
                rows = torch.arange(hi - lo, device=device)[:, None].expand_as(keep)[keep]
                parts.append(ranking_metrics(scores, targets[lo:hi], (rows, seen[lo:hi][keep])))
            for k in parts[0]:
                sums[k] = sums.get(k, 0.0) + float(torch.cat([p[k] for p in parts]).sum())  # a sync, as the task's
        return sums

    run(min(users, args.eval_batch))  # warm-up
    sync(device)
    start = time.perf_counter()
    sums = run(users)
    sync(device)
    seconds = time.perf_counter() - start
    return {"what": "scoring core of RetrievalTask.eval_step, random vectors", "users": users, "items": items,
            "dim": dim, "users_per_chunk": chunk, "seconds": seconds, "users_per_s": users / seconds,
            "mean recall@100 (random: ~100/items)": sums["recall@100"] / users}


# -- main ------------------------------------------------------------------------------------------
def versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda}
    for name in ("pytorch_lightning", "torchrec", "fbgemm_gpu", "numpy"):
        try:
            out[name] = getattr(__import__(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - reported, not raised
            out[name] = f"not importable: {type(e).__name__}"
    return out


def attempt(results: list, label: dict[str, Any], fn, *a, after=None) -> None:
    """Run one configuration; a failure becomes a row with its error (and the others still run).
    ``after()`` is called once the row is in ``results`` (to save the results so far)."""
    t0 = time.perf_counter()
    print(f"-- {' '.join(f'{k}={v}' for k, v in label.items())}", flush=True)
    try:
        row = {**label, **fn(*a)}
    except Exception as e:  # noqa: BLE001 - one bad configuration must not hide the rest
        traceback.print_exc()
        row = {**label, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:500]}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["wall_s"] = time.perf_counter() - t0
    if "samples_per_s" in row and label.get("model") in TARGETS:
        row["target_samples_per_s"] = TARGETS[label["model"]]
        row["fraction_of_target"] = row["samples_per_s"] / TARGETS[label["model"]]
    print("   " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    results.append(row)
    if after is not None:
        after()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", nargs="+", default=["two_tower", "dlrm"], choices=["two_tower", "dlrm"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 8192 32768 on CUDA, 512 on CPU")
    ap.add_argument("--steps", type=int, default=300, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first; default: 30 on CUDA, 1 on CPU")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--backend", default="torch", choices=["torch", "torchrec", "auto"], help="embedding backend")
    ap.add_argument("--interactions", nargs="+", default=["dcn"], choices=sorted(MODEL_CONFIGS),
                    help="DLRM interactions: dcn (configs/model/dcnv2.yaml, the funnel's), dot, cat (dlrm.yaml)")
    ap.add_argument("--max-batches", type=int, default=16, help="distinct ML-100K batches replayed at most")
    ap.add_argument("--dlrm-batches", type=int, default=4, help="distinct Criteo-like batches replayed")
    ap.add_argument("--rows-cap", type=int, default=100_000, help="rows per DLRM embedding table at most")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--eval-items", nargs="*", type=int, default=None,
                    help="catalogue sizes of the scoring benchmark; default: 1000000 on CUDA, 20000 on CPU")
    ap.add_argument("--eval-users", type=int, default=None, help="default: 20000 on CUDA, 512 on CPU")
    ap.add_argument("--eval-batch", type=int, default=2048, help="users per evaluation batch (eval_batch_size)")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR", str(ROOT / "data")))
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides of the two-tower config")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device (use --device cpu)")
    args.batch_sizes = args.batch_sizes or ([8192, 32768] if cuda else [512])
    args.warmup = args.warmup if args.warmup is not None else (30 if cuda else 1)
    args.bf16 = (args.precision or ("bf16" if cuda else "fp32")) == "bf16"
    eval_items = args.eval_items if args.eval_items is not None else ([1_000_000] if cuda else [20_000])
    eval_users = args.eval_users or (20_000 if cuda else 512)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "recfunnel"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*TF32.*")

    info = {"device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
            "precision": "bf16 autocast" if args.bf16 else "fp32", "backend": args.backend,
            "versions": versions(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    print(json.dumps(info), flush=True)
    train: list[dict] = []
    evals: list[dict] = []
    keep: dict = {}

    def save(done: bool = False) -> None:  # after every configuration: a run cut short keeps what it measured
        if args.json:
            out = {**info, "targets_samples_per_s": TARGETS, "steps": args.steps, "warmup": args.warmup,
                   "complete": done, "train": train, "eval": evals,
                   "failed": sum("error" in r for r in train + evals)}
            tmp = Path(args.json).with_suffix(".tmp")
            tmp.write_text(json.dumps(out, indent=2, default=str))
            tmp.replace(args.json)

    for model in args.models:
        for bs in args.batch_sizes:
            if model == "two_tower":
                attempt(train, {"model": "two_tower", "batch_size": bs}, bench_two_tower, args, device, bs, keep,
                        after=save)
            else:
                for inter in args.interactions:
                    attempt(train, {"model": "dlrm", "interaction": inter, "batch_size": bs},
                            bench_dlrm, args, device, bs, inter, after=save)
    if not args.no_eval:
        attempt(evals, {"eval": "ml100k"}, bench_eval_ml100k, args, device, keep, after=save)
        for items in eval_items:
            attempt(evals, {"eval": f"scoring_{items}"}, bench_eval_scoring, args, device, items, eval_users,
                    after=save)

    show(f"training step, {info['precision']}, embedding backend {args.backend}, {info['device']}",
         [{"model": r["model"] + (f" ({r['interaction']})" if "interaction" in r else ""), "batch": r["batch_size"],
           "samples/s": r.get("samples_per_s", float("nan")), "ms/step": r.get("ms_per_step", float("nan")),
           "of target": r.get("fraction_of_target", float("nan")), "loss first→last":
           f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" if "loss_first" in r else "",
           "peak GiB": r.get("peak_mem_gib") or float("nan"), "error": r.get("error", "")} for r in train])
    if evals:
        show("full-corpus evaluation", [{"eval": r["eval"], "users": r.get("users", ""), "items": r.get("items", ""),
                                          "users/s": r.get("users_per_s", float("nan")),
                                          "seconds": r.get("seconds", float("nan")), "error": r.get("error", "")}
                                         for r in evals])
    save(done=True)
    if args.json:
        print(f"wrote {args.json}")
    return 1 if any("error" in r for r in train + evals) else 0


if __name__ == "__main__":
    sys.exit(main())
