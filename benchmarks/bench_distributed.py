"""Multi-process training-speed benchmark (not a test): global training samples/s of the two-tower
step and of the DLRM step in four configurations, from one command.

    .venv/bin/python benchmarks/bench_distributed.py [--steps 50] [--warmup 5] [--json out.json]
    .venv/bin/python benchmarks/bench_distributed.py --models two_tower --configs lightning sharded --steps 10

Configurations (each in its own fresh process or pair of processes, started by this command; the
2-process ones by ``python -m torch.distributed.run --nproc-per-node 2``, gloo on CPU):

* ``plain``: 1 process, a plain PyTorch loop over the same model: the task's ``compute_loss``,
  backward, the task's own optimiser (``configure_optimizers``: SparseAdamW), no framework. The
  reference, as in ``bench_train.py``.
* ``lightning``: 1 process, a real ``pl.Trainer`` from ``configs/trainer/default.yaml`` (devices=1).
* ``ddp``: 2 processes, ``configs/trainer/ddp.yaml`` (``strategy="ddp"``, accelerator cpu, devices=2):
  every process holds the whole model, gradients are all-reduced.
* ``sharded``: 2 processes, ``configs/trainer/sharded.yaml`` (``recfunnel.tasks.sharding.ShardedStrategy``):
  the tables are sharded by TorchRec's planner (among the types that config allows: table_wise,
  column_wise, table_column_wise, data_parallel; the plan it picked is in the table's notes and in
  ``--json``) and updated by the config's fused optimizer (row-wise Adagrad, lr 0.05) in backward; the
  rest of the model is data-parallel with the task's optimiser.

Every Trainer is built by ``recfunnel.runs.make_trainer`` from the composed ``trainer`` config (as a
training run builds it), with ``max_steps = warmup + steps``, no logger, checkpoints, progress bar
or validation. All configurations use the TorchRec embedding backend (``model.net.backend=torchrec``;
the sharded one needs it).

Models:

* ``two_tower``: ``RetrievalTask`` of ``experiment=ml100k_two_tower`` (recency-pooled last-50-items
  history, in-batch sampled softmax with logQ correction) with ``features=ml100k`` (12 embedding
  tables, dense features). A sample is a training event; ``--batch-size`` events per process.
* ``dlrm``: ``RankingTask`` of ``experiment=ml100k_funnel`` (the funnel's ranker: DLRM with the DCN-v2
  interaction over ``features=ml100k_rank``, 7 tables). Its batches are the real ranker batches of
  ``recfunnel.data.ranking`` (``RankingDataModule`` / ``TrainPairs``: query towers, 1 positive + 8
  hard + 2 uniform candidates per event, the five pair features), built from the ML-100K feature
  store with one shortcut: the "retriever" that supplies candidates and pair features is the
  funnel's two-tower model *untrained* (seeded initial weights, its catalogue in an exact FAISS
  index), not a trained run, so that the benchmark needs no minute-long retriever training. Hard
  negatives are therefore near-random items and the pair features near-noise; the shapes, the ids'
  tables and the work per step are those of real ranker training. Only each user's last
  ``--ranker-events-per-user`` train events are retrieved for (setup time), and every event is
  kept (``retrieved_positives_only=false``). A sample is a real (query, candidate) pair (the
  batch's ``mask``); ``--ranker-batch-size`` events per process (256, the funnel's: ~2.8k pairs).

Batches: per-process batch size fixed, so 2 processes train 2x the samples per step; figures are
*global* samples/s. For step i a seeded draw picks 2 x B distinct training rows; rank r of a
2-process run trains rows [r B, (r+1) B), a 1-process run rows [0, B) (rank 0 of every
configuration sees the same batches). All ``warmup + steps`` batches are built before training,
outside the timed span, each used once (no replay: nothing a ``KeyedJaggedTensor`` caches carries
over). Timing: a callback stamps ``on_train_batch_start`` of the first timed step (after ``--warmup``
untimed ones) and ``on_train_end``; a 2-process figure is all ranks' timed samples over the slower
rank's span. The plain loop is timed over the same steps. "step ms" is the median time between
consecutive step ends (less sensitive to other jobs than the span).

Threads: each process runs ``--threads`` torch threads (1 by default: on 2 busy cores a step with 2
threads was ~30x slower than with 1, see also ``bench_ranker.py``). So a 1-process configuration uses
one core and a 2-process one up to two, and on a 2-core machine the two processes share its cores
with whatever else runs. On CPU the 2-process figures are therefore not a scaling result: they say
that the DDP and sharded paths run, under a real Trainer, and what their collectives (gloo) and
strategies cost per step. The figures that matter are those on GPUs (one device per process, nccl).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT  # noqa: E402  (also puts src/ on sys.path)

MODELS = ("two_tower", "dlrm")
CONFIGS = ("lightning", "plain", "ddp", "sharded")  # the order they run and are shown in
PROCESSES = {"plain": 1, "lightning": 1, "ddp": 2, "sharded": 2}
MAX_WORLD = 2  # rows drawn per step: MAX_WORLD x batch size, so rank 0 sees the same batches everywhere
TRAINER_OVERRIDES = {  # the trainer config of each configuration
    "plain": ["trainer=default"],
    "lightning": ["trainer=default", "trainer.accelerator=cpu", "trainer.devices=1"],
    "ddp": ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
    "sharded": ["trainer=sharded"],
}
DESCRIPTION = {
    "plain": "plain PyTorch loop, 1 process",
    "lightning": "Lightning, 1 process",
    "ddp": "Lightning DDP, 2 processes",
    "sharded": "Lightning ShardedStrategy, 2 processes",
}


# -- worker: one configuration, in this process (rank of a torchrun job, or alone) ------------------
def quiet() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*You defined a `validation_step` but have no `val_dataloader`.*",
                    ".*is_fx_tracing will return true.*"):
        warnings.filterwarnings("ignore", message=message)


def step_rows(n_rows: int, steps: int, batch_size: int, rank: int, seed: int) -> list[np.ndarray]:
    """Positions (into the training rows) of this rank's batch at each step (see the docstring)."""
    rng = np.random.default_rng(seed)
    draws = [rng.choice(n_rows, MAX_WORLD * batch_size, replace=False) for _ in range(steps)]
    return [d[rank * batch_size:(rank + 1) * batch_size] for d in draws]


def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides)


def two_tower_inputs(args, rank: int, out: Path) -> tuple[Any, pl.LightningModule, list[dict], list[int]]:
    from recfunnel.data.datamodule import EventBatches
    from recfunnel.tasks.build import build_datamodule, build_task

    cfg = compose_cfg("train", ["experiment=ml100k_two_tower", "features=ml100k", "model.net.backend=torchrec",
                                "logger=none", f"paths.data_dir={args.data_dir}", f"paths.output_dir={out}",
                                f"data.batch_size={args.batch_size}", *TRAINER_OVERRIDES[args.worker], *args.overrides])
    dm = build_datamodule(cfg)
    torch.manual_seed(args.seed)
    task = build_task(cfg.model, dm)
    events = EventBatches(dm.store, dm.train_rows, with_items=True, num_negatives=dm.num_negatives)
    batches = [events.batch_for_rows(dm.train_rows[pos], np.random.default_rng((args.seed, i)))
               for i, pos in enumerate(step_rows(len(dm.train_rows), args.warmup + args.steps, args.batch_size, rank,
                                                 args.seed))]
    return cfg, task, batches, [len(b["item_idx"]) for b in batches]


def dlrm_inputs(args, rank: int, out: Path) -> tuple[Any, pl.LightningModule, list[dict], list[int]]:
    from recfunnel.data.ranking import RankingDataModule, TrainPairs
    from recfunnel.serving.index import ItemIndex
    from recfunnel.serving.retriever import Retriever
    from recfunnel.tasks.build import build_datamodule, build_task

    common = ["logger=none", f"paths.data_dir={args.data_dir}", f"paths.output_dir={out}"]
    cfg = compose_cfg("funnel", ["experiment=ml100k_funnel", "model.net.backend=torchrec", *common,
                                 f"pairs.batch_size={args.ranker_batch_size}", *TRAINER_OVERRIDES[args.worker],
                                 *args.ranker_overrides])
    # the funnel's retriever, untrained (see the docstring): its data, user tower and an exact index
    rcfg = compose_cfg("train", [*cfg.retriever.overrides, *common])
    rdm = build_datamodule(rcfg)
    torch.manual_seed(args.seed)
    net = build_task(rcfg.model, rdm).net.eval()
    with torch.no_grad():
        vectors = net.item_vectors(rdm.catalogue()).float().numpy()
    index = ItemIndex.build(vectors, rdm.data.tables.items["item_id"].to_numpy(), kind="flat",
                            fingerprint="untrained retriever (bench_distributed)")
    retriever = Retriever([out], rcfg, rdm, [net], index)
    pairs = OmegaConf.to_container(cfg.pairs, resolve=True)
    pairs.pop("_target_")
    pairs.update(retrieved_positives_only=False, max_events_per_user=args.ranker_events_per_user)
    dm = RankingDataModule(retriever=retriever, features=cfg.features, seed=args.seed, **pairs)
    dm.setup()
    torch.manual_seed(args.seed)
    task = build_task(cfg.model, dm)
    data = TrainPairs(dm)
    batches = [data[(args.seed, 0, i, pos)]
               for i, pos in enumerate(step_rows(len(dm.train_rows), args.warmup + args.steps, args.ranker_batch_size,
                                                 rank, args.seed))]
    return cfg, task, batches, [int(b["mask"].sum()) for b in batches]


def _identity(batch):
    return batch


class StepTimer(pl.Callback):
    """Stamps the start of the first timed step, every step's end (with its loss) and the end of training."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = None
        self.stamps: list[float] = []
        self.losses: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stamps.append(time.perf_counter())
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()


def lightning_run(cfg, task, batches, args, out: Path) -> tuple[StepTimer, dict]:
    from recfunnel.runs import make_trainer
    from recfunnel.tasks.sharding import ShardedStrategy, plan_summary

    timer = StepTimer(args.warmup)
    trainer = make_trainer(cfg.trainer, run_dir=out, max_steps=len(batches), logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                           num_sanity_val_steps=0, callbacks=[timer])
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=_identity)
    trainer.fit(task, train_dataloaders=loader)
    strategy = trainer.strategy
    info: dict[str, Any] = {"strategy": type(strategy).__name__, "global_step": trainer.global_step}
    if isinstance(strategy, ShardedStrategy):
        info["plan"] = plan_summary(strategy.plan)
        info["fused_optimizer"] = {"name": strategy.optimizer_name, "lr": strategy.optimizer_lr}
    return timer, info


def plain_run(task, batches, args) -> tuple[StepTimer, dict]:
    """``bench_train.plain_loop``, with the same stamps as ``StepTimer``."""
    timer = StepTimer(args.warmup)
    opt = task.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    task.train()
    for i, b in enumerate(batches):
        if i == args.warmup:
            timer.start = time.perf_counter()
        loss = task.compute_loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        timer.stamps.append(time.perf_counter())
        timer.losses.append(loss.detach())
    timer.end = time.perf_counter()
    return timer, {"strategy": "none", "optimizer": type(opt).__name__}


def worker(args) -> None:
    quiet()
    torch.set_num_threads(args.threads)
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    run_dir = out.parent / f"{out.stem}_run"
    build = {"two_tower": two_tower_inputs, "dlrm": dlrm_inputs}[args.model]
    t0 = time.perf_counter()
    cfg, task, batches, sizes = build(args, rank, run_dir)
    setup_s = time.perf_counter() - t0
    if args.worker == "plain":
        timer, info = plain_run(task, batches, args)
    else:
        timer, info = lightning_run(cfg, task, batches, args, run_dir)
    n_steps = len(batches)
    if timer.start is None or timer.end is None or len(timer.stamps) != n_steps:
        raise RuntimeError(f"{args.worker}: {len(timer.stamps)} of {n_steps} steps ran (start {timer.start}, end {timer.end})")
    intervals = np.diff([timer.start, *timer.stamps[args.warmup:]])
    local = {"rank": rank, "seconds": timer.end - timer.start, "samples": int(sum(sizes[args.warmup:])),
             "step_ms_median": float(np.median(intervals) * 1e3), "setup_s": setup_s,
             "loss_first": float(timer.losses[args.warmup]), "loss_last": float(timer.losses[-1])}
    ranks = [local]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, local)
    if rank != 0:
        return
    seconds = max(r["seconds"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    result = {"model": args.model, "config": args.worker, "processes": len(ranks), "threads_per_process": args.threads,
              "batch_per_process": args.batch_size if args.model == "two_tower" else args.ranker_batch_size,
              "warmup": args.warmup, "steps": args.steps, "samples_timed": samples, "seconds": seconds,
              "samples_per_s": samples / seconds, "samples_per_step": samples / args.steps,
              "step_ms_median": max(r["step_ms_median"] for r in ranks), "ranks": ranks, **info}
    out.write_text(json.dumps(result, indent=1))


# -- driver: every configuration, one table ---------------------------------------------------------
def launch(args, model: str, config: str, workdir: Path) -> dict[str, Any]:
    """Run one configuration in fresh processes; its rank 0's JSON, or what went wrong."""
    out = workdir / f"{model}_{config}.json"
    log = workdir / f"{model}_{config}.log"
    script = [str(Path(__file__).resolve()), "--worker", config, "--model", model, "--out", str(out),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
              "--seed", str(args.seed), "--data-dir", args.data_dir, "--batch-size", str(args.batch_size),
              "--ranker-batch-size", str(args.ranker_batch_size),
              "--ranker-events-per-user", str(args.ranker_events_per_user)]
    script += ["--overrides", *args.overrides] if args.overrides else []
    script += ["--ranker-overrides", *args.ranker_overrides] if args.ranker_overrides else []
    n = PROCESSES[config]
    launcher = [sys.executable] if n == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc-per-node", str(n)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    try:
        with open(log, "w") as f:
            done = subprocess.run([*launcher, *script], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=args.timeout)
        rc = done.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - start
    if rc == 0 and out.is_file():
        result = json.loads(out.read_text())
        result["wall_s"] = wall
        return result
    tail = log.read_text(errors="replace").strip().splitlines()[-40:] if log.is_file() else []
    errors = [line for line in tail if "Error" in line or "error" in line]
    return {"model": model, "config": config, "processes": n, "error": f"exit {rc}", "wall_s": wall,
            "error_line": (errors or tail or ["(no output)"])[-1][:200], "log_tail": tail, "log": str(log)}


def plan_note(row: dict) -> str:
    """The table's notes: the strategy / optimiser, the sharding plan, or the failure."""
    if row.get("error"):
        return f"FAILED ({row['error']}): {row['error_line']}"
    if "plan" in row:
        kinds: dict[str, list[str]] = {}
        for table, t in sorted(row["plan"].items()):
            kinds.setdefault(t["type"], []).append(table)
        fused = row.get("fused_optimizer", {})
        return ("plan: " + "; ".join(f"{k} x{len(v)}" + (f" ({', '.join(v)})" if len(v) <= 3 else "")
                                      for k, v in sorted(kinds.items()))
                + f"; fused {fused.get('name')} lr {fused.get('lr')}")
    if row["config"] == "plain":
        return f"{row.get('optimizer')}, no framework"
    return row.get("strategy", "")


def print_table(title: str, rows: list[dict]) -> None:
    """A plain-text table (readable in a log or a pipe, whatever the terminal's width)."""
    keys = list(rows[0])
    width = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    left = {"model", "configuration", "notes"}

    def line(cells: dict) -> str:
        return "  ".join(str(cells[k]).ljust(width[k]) if k in left else str(cells[k]).rjust(width[k]) for k in keys)

    print(f"\n{title}")
    print(line({k: k for k in keys}))
    print("  ".join("-" * width[k] for k in keys))
    for r in rows:
        print(line(r))


def table_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        base = {k: next((x for x in results if x["model"] == r["model"] and x["config"] == k and not x.get("error")), None)
                for k in ("lightning", "plain")}
        ok = not r.get("error")
        rate = r.get("samples_per_s")
        ratio = {k: f"{rate / b['samples_per_s']:.2f}" if ok and b else "-" for k, b in base.items()}
        rows.append({"model": r["model"], "configuration": DESCRIPTION[r["config"]],
                     "proc x thr": f"{r['processes']} x {r.get('threads_per_process', '-')}",
                     "samples/step": f"{r['samples_per_step']:,.0f}" if ok else "-",
                     "samples/s": f"{rate:,.0f}" if ok else "-",
                     "x Lightning 1p": ratio["lightning"], "x plain 1p": ratio["plain"],
                     "step ms (median)": f"{r['step_ms_median']:.0f}" if ok else "-",
                     "loss first→last (rank 0)": f"{r['ranks'][0]['loss_first']:.3f}→{r['ranks'][0]['loss_last']:.3f}"
                     if ok else "-",
                     "notes": plan_note(r)})
    return rows


def caveat(results: list[dict], threads: int, cores: int, load_start: float, load_end: float) -> str:
    """What the 2-process figures on a CPU machine mean (and do not)."""
    two = min(2 * threads, cores)
    text = (f"CPU caveat: this machine has {cores} CPU cores (load average {load_start:.2f} at the start, {load_end:.2f} at "
            f"the end, other jobs included). Every process runs {threads} torch thread(s): a 1-process run uses "
            f"{min(threads, cores)} core(s), a 2-process run {two}, on the same {cores} cores, shared with each other and "
            f"with any other job, and its collectives go through gloo. Two CPU processes add no hardware: on {cores} cores "
            f"they cannot be faster than one process that uses the same cores, so these figures are no measure of "
            f"scaling. They are the cost of the collectives and of the strategies (DDP's all-reduce; the sharded "
            f"input/output all-to-alls, fused table update and DDP of the rest) and a smoke test that both paths train "
            f"under a real Trainer. The GPU figures (one device per process, nccl) are what matter.")
    faster = [f"{r['model']} {r['config']}" for r in results if PROCESSES[r["config"]] > 1 and not r.get("error")
              and any(b["model"] == r["model"] and b["config"] == "lightning" and not b.get("error")
                      and r["samples_per_s"] > b["samples_per_s"] for b in results)]
    if faster and two > min(threads, cores):
        text += (f" Here {', '.join(faster)} beat(s) the 1-process Lightning run only because it had {two} cores to the "
                 f"1-process run's {min(threads, cores)} (--threads {threads}; 2 threads in one process on busy cores "
                 "ran a step ~30x slower).")
    return text


def versions() -> dict[str, str]:
    import torchrec

    return {"python": platform.python_version(), "torch": torch.__version__, "torchrec": torchrec.__version__,
            "pytorch_lightning": pl.__version__}


def driver(args) -> int:
    cores = os.cpu_count() or 1
    load_start = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    print(f"bench_distributed: models {', '.join(args.models)}; configurations {', '.join(args.configs)}; "
          f"{args.warmup} warm-up + {args.steps} timed steps each; {cores} CPU cores (load average {load_start:.2f}); "
          f"{args.threads} torch thread(s) per process; worker logs in {workdir}", flush=True)
    t0 = time.perf_counter()
    results = []
    for model in args.models:
        for config in args.configs:
            r = launch(args, model, config, workdir)
            results.append(r)
            what = (f"{r['samples_per_s']:,.0f} samples/s over {r['seconds']:.1f}s (setup {r['ranks'][0]['setup_s']:.1f}s)"
                    if not r.get("error") else f"FAILED ({r['error']}): {r['error_line']}")
            print(f"  {model:9s} {config:9s} {what}; {r['wall_s']:.0f}s in all", flush=True)
    load_end = os.getloadavg()[0]
    print_table(f"training step, global samples/s (per-process batch: {args.batch_size} events for two_tower, "
                f"{args.ranker_batch_size} events x 11 candidates for dlrm; {args.steps} timed steps after {args.warmup} "
                f"warm-up)", table_rows(results))
    print("x Lightning 1p / x plain 1p: samples/s over that of the 1-process Lightning run / of the plain loop, same "
          "model (> 1: more samples/s). step ms: median time per step (the slower rank's).")
    print(caveat(results, args.threads, cores, load_start, load_end))
    print(f"total {time.perf_counter() - t0:.0f}s; command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "benchmark": "bench_distributed", "command": [Path(sys.executable).name, *sys.argv], "args": vars(args),
            "cpu_cores": cores, "load_average": {"start": load_start, "end": load_end}, "versions": versions(),
            "results": results}, indent=1))
        print(f"wrote {args.json}")
    return 1 if any(r.get("error") for r in results) else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    ap.add_argument("--batch-size", type=int, default=1024, help="two_tower: events per process per step")
    ap.add_argument("--ranker-batch-size", type=int, default=256,
                    help="dlrm: events per process per step (each with 1 + 10 candidates)")
    ap.add_argument("--ranker-events-per-user", type=int, default=20,
                    help="dlrm: train on each user's last N train events (retrieval for them is setup time)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=os.environ.get("RECFUNNEL_DATA_DIR", str(ROOT / "data")))
    ap.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides of the two-tower config")
    ap.add_argument("--ranker-overrides", nargs="*", default=[], help="extra Hydra overrides of the funnel (ranker) config")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per configuration before it is stopped")
    ap.add_argument("--json", help="write every figure, each rank's, the plans and versions here")
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)  # internal: run one configuration
    ap.add_argument("--model", choices=MODELS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    if args.worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main())
