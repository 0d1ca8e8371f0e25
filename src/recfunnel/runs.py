"""Run setup shared by every entry point: run directory, loggers, trainer, fit with resume, scoring.

A *run* is one directory (``paths.output_dir``) holding ``config.yaml`` (resolved, secrets
redacted), ``run_info.json`` (run id, git commit, versions, seed), ``checkpoints/``, ``csv/`` and
``metrics.json``. A *stage* is one model trained or evaluated inside a run ("retriever", "ranker",
"funnel"); each stage is its own W&B run (``job_type`` = the stage) and all stages of one run share
a W&B ``group``: the run's name, or the sweep's name for the trials of a sweep
(see ``wandb_identity``). Once a run has loaded its data, ``run_info.json`` also records it
(``data_name``, ``data_dir``, ``data_fingerprint``: see ``record_data``).

The jobs behind the entry points live here too, so entry points stay thin and library code never
imports them: ``train`` (``python -m recfunnel.train``), ``run_funnel`` (``python -m recfunnel.funnel``)
and ``evaluate`` (``python -m recfunnel.evaluate``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from recfunnel.data.datamodule import RecDataModule
from recfunnel.data.objectives import parse_objectives, predicted
from recfunnel.data.sources import load_split
from recfunnel.eval.funnel import evaluate_funnel, objective_metrics, rerank_ablation
from recfunnel.eval.protocol import EvalSet
from recfunnel.eval.protocol import evaluate as evaluate_protocol
from recfunnel.eval.report import flatten, print_metrics, write_funnel_report, write_metrics
from recfunnel.eval.slices import target_slices
from recfunnel.models.multitask import ObjectiveMix, check_heads
from recfunnel.serving.fusion import SECOND_RUN_FILE, RankFusion, read_second_retriever_run
from recfunnel.serving.index import ItemIndex, index_fingerprint
from recfunnel.serving.pipeline import Funnel, item_catalogue
from recfunnel.serving.rerank import build_reranker
from recfunnel.serving.retriever import FUNNEL_RUN_FILES, Retriever, read_retriever_runs
from recfunnel.tasks.build import build_datamodule, build_task
from recfunnel.tasks.callbacks import AppendingCSVLogger, EpochSummary, SaveOnSigterm
from recfunnel.tasks.checkpoints import checkpoint_step, load_checkpoint
from recfunnel.tasks.sharding import DEFAULT_OPTIMIZER, DEFAULT_TYPES, ShardedStrategy, check_sharding
from recfunnel.utils.config_checks import check_config
from recfunnel.utils.dist import barrier, is_main_process
from recfunnel.utils.errors import RecfunnelError, RunStopped
from recfunnel.utils.io import atomic_path, write_json
from recfunnel.utils.run_info import (
    DATA_KEYS,
    OVERRIDES_FILE,
    data_info,
    read_run_info,
    redact,
    redact_overrides,
    run_metadata,
    update_run_info,
)
from recfunnel.utils.timing import timed
from recfunnel.utils.trees import flatten as flatten_config

log = logging.getLogger(__name__)


#: config keys that may differ when a run directory is used again (a resume); any other difference
#: from the run's ``config.yaml`` is refused, so a finished run is never silently changed
RESUMABLE_KEYS = ("run_name", "group", "tags", "resume", "paths.", "logger.", "trainer.max_epochs",
                  "trainer.min_epochs", "trainer.enable_progress_bar", "trainer.log_every_n_steps",
                  "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "data.num_workers", "funnel.timing_users")
LOCK = ".lock"


@dataclasses.dataclass
class Run:
    """An open run: its config, directory, resolved config (secrets redacted), id (kept across resumes)
    and the data an earlier start of it recorded (``DATA_KEYS``; empty for a new run)."""

    cfg: DictConfig
    out: Path
    resolved: dict[str, Any]
    run_id: str
    data_before: dict[str, Any] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def open_run(cfg: DictConfig) -> Iterator[Run]:
    """Check the config, take the run directory's lock, check that an existing run there is this
    one (a resume), then seed everything and write ``config.yaml`` and ``run_info.json``.

    Nothing in the directory is rewritten before every check passed; the lock is held until the
    block ends, so a second run started into the same directory is refused.
    """
    check_config(cfg)
    check_strategy(cfg.get("trainer") or {})
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    if not is_main_process():  # another process of a multi-process run: the main one owns the directory
        pl.seed_everything(cfg.seed, workers=True)
        before = read_run_info(out)
        yield Run(cfg, out, resolved, before.get("run_id") or "", {k: before[k] for k in DATA_KEYS if k in before})
        return
    with run_lock(out):
        check_same_run(out, resolved, resume=bool(cfg.get("resume", True)))
        fresh = not (out / "config.yaml").exists()
        pl.seed_everything(cfg.seed, workers=True)
        with atomic_path(out / "config.yaml") as tmp:
            tmp.write_text(OmegaConf.to_yaml(resolved))
        overrides = command_overrides(out)
        if overrides is not None:
            with atomic_path(out / OVERRIDES_FILE) as tmp:
                tmp.write_text(OmegaConf.to_yaml(redact_overrides(overrides)))
        before = read_run_info(out)
        run_id = before.get("run_id") or uuid.uuid4().hex
        data_before = {k: before[k] for k in DATA_KEYS if k in before}  # checked by record_data on a resume
        write_json(out / "run_info.json", {**run_metadata(seed=cfg.seed), "run_id": run_id, **data_before})
        try:
            yield Run(cfg, out, resolved, run_id, data_before)
        except BaseException:
            if fresh:
                _forget_empty_run(out)
            raise


def command_overrides(out: Path) -> list[str] | None:
    """The command line's overrides when ``out`` is the directory of the Hydra job running (not a run
    the job starts inside its own, such as the funnel's retriever), else None. The run records them
    itself (``overrides.yaml``): Hydra's own record (``.hydra/``, off in ``configs/hydra/default.yaml``)
    was written before any check, so a refused command rewrote a finished run's copy, secrets unredacted."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if Path(hc.runtime.output_dir).resolve() != out.resolve():
        return None
    return list(hc.overrides.task)


def _forget_empty_run(out: Path) -> None:
    """After a new run failed before it wrote anything of its own (bad data, a schema that cannot
    train), remove its ``config.yaml``, ``overrides.yaml`` and ``run_info.json``, so that the directory
    is as it was and the corrected command can use it; a run that wrote anything else is left for a resume."""
    own = ("config.yaml", OVERRIDES_FILE, "run_info.json")
    if all(p.name in own or p.name == LOCK or p.suffix == ".log" for p in out.iterdir()):
        for name in own:
            (out / name).unlink(missing_ok=True)


def record_data(run: Run, name: str, data_dir: str | Path, fingerprint: str) -> None:
    """Record in ``run_info.json`` the data the run loaded: ``data_name``, ``data_dir`` (absolute) and
    ``data_fingerprint`` (``recfunnel.data.fingerprint``). A resumed run must have loaded the tables
    it started on: other tables are refused with one line naming both fingerprints and folders."""
    info = data_info(name, data_dir, fingerprint)
    old = run.data_before.get("data_fingerprint")
    if old and old != fingerprint:
        raise RecfunnelError(
            f"{run.out} holds a run trained on {run.data_before.get('data_name')} tables with fingerprint {old} "
            f"(data folder {run.data_before.get('data_dir')}), but this start loaded {name} tables with fingerprint "
            f"{fingerprint} from {info['data_dir']}; resume it with the data it was trained on, or choose another "
            "hydra.run.dir for a run on this data")
    if is_main_process():
        update_run_info(run.out, info)
    log.info("data %s: tables fingerprint %s (data folder %s)", name, fingerprint, info["data_dir"])


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (pid, host) for the block. A lock left by a dead process on this host is
    taken over with a warning; a live one (or one from another host) refuses with one line."""
    path = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    # the lock appears whole or not at all: written aside, then hard-linked into place (fails if taken)
    mine = path.with_name(f"{LOCK}.{me['pid']}")
    mine.write_text(json.dumps(me))
    try:
        for _ in range(2):
            try:
                _place(mine, path)
                break
            except FileExistsError:
                try:
                    holder = json.loads(path.read_text())
                except (OSError, ValueError):
                    holder = {}
                if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    log.warning("taking over %s: its process %s is gone (a run that crashed)", path, holder.get("pid"))
                    path.unlink(missing_ok=True)
                    continue
                raise RecfunnelError(f"{out} is in use by another run (pid {holder.get('pid')} on "
                                     f"{holder.get('host')}, since {holder.get('since')}); wait for it or choose "
                                     f"another hydra.run.dir (if that process is gone, delete {path})") from None
        else:
            raise RecfunnelError(f"could not take {path}: another run took it over at the same time; try again")
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _place(mine: Path, path: Path) -> None:
    """Put the lock written at ``mine`` at ``path``, or raise FileExistsError if ``path`` is taken: a
    hard link where the filesystem has them, else an exclusive create written in one call (some
    network and FUSE filesystems refuse links)."""
    try:
        os.link(mine, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (EPERM, ENOTSUP, ...)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(mine.read_text())


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def config_differences(before: Mapping[str, Any], now: Mapping[str, Any], allowed: tuple[str, ...]) -> list[str]:
    """Flat keys whose values differ between two resolved configs, less the ``allowed`` ones (a key, or
    a prefix ending in "."); paths are compared after replacing the old ``paths.*`` by the new ones, so
    a moved or copied run directory (or data folder) is the same run."""
    before, now = flatten_config(before), flatten_config(now)
    for key in [k for k in before if k.startswith("paths.")]:
        old, new = before[key], now.get(key)
        if isinstance(old, str) and isinstance(new, str) and old and old != new:
            before = {k: v.replace(old, new) if isinstance(v, str) and v.startswith(old) else v
                      for k, v in before.items()}
    return sorted(k for k in before.keys() | now.keys()
                  if before.get(k, "<absent>") != now.get(k, "<absent>")
                  and not any(k == r.rstrip(".") or (r.endswith(".") and k.startswith(r)) for r in allowed))


def check_same_run(out: Path, resolved: Mapping[str, Any], resume: bool) -> None:
    """Refuse to reuse a directory that holds another run: a config that differs from its
    ``config.yaml`` outside ``RESUMABLE_KEYS``, or any earlier run when ``resume`` is false."""
    path = out / "config.yaml"
    if not path.is_file():
        return
    if not resume:
        raise RecfunnelError(f"{out} already holds a run and resume=false; choose another hydra.run.dir, or "
                             "resume=true to continue it")
    before = OmegaConf.to_container(OmegaConf.load(path))
    differ = config_differences(before, resolved, RESUMABLE_KEYS)
    if differ:
        raise RecfunnelError(f"{out} holds a run with another config: {_describe(differ, before, resolved)}. A run "
                             "directory resumes only its own config; choose another hydra.run.dir for a new run")


def _describe(differ: list[str], before: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """The differing keys (the first 12) and the first one's two values, for an error message."""
    before, now = flatten_config(before), flatten_config(now)
    keys = ", ".join(differ[:12]) + (f" and {len(differ) - 12} more" if len(differ) > 12 else "")
    first = differ[0]
    return f"{keys} differ (e.g. {first}: {before.get(first, '<absent>')!r} → {now.get(first, '<absent>')!r})"


# -- W&B: one run per stage ------------------------------------------------------------------------
def run_identity(cfg: DictConfig) -> tuple[str, str]:
    """(W&B group, base name) of a run: ``cfg.group`` when set, else the sweep's name for a trial of
    a Hydra multirun (base name ``trial-<n>``), else the run's own name (``cfg.run_name``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if cfg.get("group"):
        return str(cfg.group), str(cfg.run_name)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hc = HydraConfig.get()
        return f"{cfg.task_name}-sweep-{Path(hc.sweep.dir).name}", f"trial-{hc.job.num}"
    return str(cfg.run_name), str(cfg.run_name)


def wandb_identity(cfg: DictConfig, stage: str) -> dict[str, str]:
    """``group``, ``name`` and ``job_type`` of a stage's W&B run (see ``run_identity``)."""
    group, base = run_identity(cfg)
    return {"group": group, "name": f"{base}-{stage}", "job_type": stage}


def build_loggers(run: Run, stage: str, config: Mapping[str, Any], csv: bool = True) -> list[Logger]:
    """The CSV log in ``run.out/csv`` (when ``csv``) and the loggers of ``cfg.logger``; a W&B logger
    starts a run of its own for ``stage`` (see ``wandb_identity``) with ``config`` as its config."""
    loggers: list[Logger] = [AppendingCSVLogger(run.out, name="csv", version="")] if csv else []
    for node in (run.cfg.logger or {}).values():
        factory = hydra.utils.instantiate(node, _partial_=True)
        if getattr(factory, "func", None) is not None and getattr(factory.func, "starts_wandb_run", False):
            identity = wandb_identity(run.cfg, stage)
            loggers.append(factory(**identity, checkpoint_name=f"{stage}-model-{identity['name']}"))
        else:
            loggers.append(factory())
    for lg in loggers:
        lg.log_hyperparams(dict(config))
    return loggers


def finish_loggers(loggers: list[Logger], metrics: Mapping[str, float],
                   artifacts: Mapping[str, tuple[str, list[Path]]] | None = None) -> None:
    """Record a stage's final ``metrics`` (W&B: the run's summary; others: ``final/<key>`` rows),
    log ``artifacts`` (name → (type, files or folders)) to W&B as ``<name>-<W&B run id>``, and close
    each logger (W&B: finish the run, so the next stage starts its own)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            run = lg.experiment
            run.summary.update(dict(metrics))
            lg.finalize("success")  # logs the checkpoints as model artifacts
            for name, (kind, paths) in (artifacts or {}).items():
                import wandb  # only here: importing it costs every run a second or two

                artifact = wandb.Artifact(f"{name}-{run.id}", type=kind)
                for path in paths:  # "immutable": uploaded from the run directory, no staging copy
                    (artifact.add_dir if path.is_dir() else artifact.add_file)(str(path), policy="immutable")
                run.log_artifact(artifact)
            run.finish()
        else:
            lg.log_metrics({f"final/{k}": v for k, v in metrics.items()})
            lg.finalize("success")


# -- training --------------------------------------------------------------------------------------
def make_trainer(trainer_cfg: DictConfig, run_dir: Path | None = None, **kwargs: Any) -> pl.Trainer:
    """The Trainer of a ``trainer`` config (``kwargs`` override its keys). ``strategy: sharded`` is
    ``recfunnel.tasks.sharding.ShardedStrategy`` with the config's ``sharding`` node, recording its
    plan in ``run_dir``."""
    args = OmegaConf.to_container(trainer_cfg, resolve=True)
    trainer_class = hydra.utils.get_class(args.pop("_target_"))
    sharding = args.pop("sharding", None) or {}
    if args.get("strategy") == "sharded":
        args["strategy"] = ShardedStrategy(**sharding, run_dir=run_dir)
    return trainer_class(**{**args, **kwargs})


def check_strategy(trainer_cfg: Mapping[str, Any]) -> None:
    """With ``strategy: sharded``, one clear error for a sharding config that cannot run (before
    anything is written): see ``recfunnel.tasks.sharding.check_sharding``. ``trainer_cfg`` may be
    empty (the evaluate job has no trainer)."""
    if trainer_cfg.get("strategy") != "sharded":
        return
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    devices = trainer_cfg.get("devices", "auto")
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if "WORLD_SIZE" in os.environ:  # torchrun / SLURM set it: the processes exist already
        world = int(os.environ["WORLD_SIZE"])
    elif isinstance(devices, int):
        world = devices * nodes
    elif isinstance(devices, str) and devices != "auto":
        world = len([d for d in devices.split(",") if d.strip()]) * nodes
    elif not isinstance(devices, str):  # a list of device indices
        world = len(devices) * nodes
    else:
        world = (torch.cuda.device_count() if cuda else 1) * nodes
    sharding = trainer_cfg.get("sharding") or {}
    check_sharding(list(sharding.get("types", DEFAULT_TYPES)), dict(sharding.get("tables") or {}),
                   sharding.get("optimizer", DEFAULT_OPTIMIZER), "cuda" if cuda else "cpu", world)


def build_trainer(run: Run, stage: str, loggers: list[Logger]) -> tuple[pl.Trainer, list[pl.Callback]]:
    """The Trainer of ``cfg.trainer`` with the configured callbacks, a one-line-per-epoch summary for
    ``stage``, and ``loggers``."""
    callbacks = [hydra.utils.instantiate(c) for c in (run.cfg.callbacks or {}).values()]
    callbacks += [EpochSummary(stage, monitor=run.cfg.monitor), SaveOnSigterm(run.out / "checkpoints" / "last.ckpt")]
    return make_trainer(run.cfg.trainer, run_dir=run.out, callbacks=callbacks, logger=loggers), callbacks


def fit(run: Run, trainer: pl.Trainer, task: pl.LightningModule, dm: pl.LightningDataModule) -> float:
    """``trainer.fit``, resumed from ``checkpoints/last.ckpt`` when it exists; returns seconds.

    A damaged ``last.ckpt`` is one clear error; on resume the CSV log keeps its rows before the
    checkpoint's step. SIGTERM stops at the next step boundary with the state saved to
    ``last.ckpt`` (see ``SaveOnSigterm``) and raises ``RunStopped`` (exit status 143).
    """
    last = run.out / "checkpoints" / "last.ckpt"
    resume = str(last) if run.cfg.resume and last.exists() else None
    if resume:
        step = checkpoint_step(last)
        log.info("resuming from %s (step %d)", resume, step)
        if is_main_process():
            trim_csv_log(run.out / "csv" / "metrics.csv", before_step=step)
    start = time.perf_counter()
    try:
        trainer.fit(task, datamodule=dm, ckpt_path=resume, weights_only=True)
    except SIGTERMException:
        raise RunStopped(f"SIGTERM at step {trainer.global_step} (epoch {trainer.current_epoch}); the state is saved in "
                         f"{last}: run the same command again to resume") from None
    return time.perf_counter() - start


def trim_csv_log(path: Path, before_step: int) -> None:
    """Keep the rows of a CSV log (Lightning's ``metrics.csv``) logged before ``before_step``: what a
    resumed run will log again is dropped, what came before survives."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    keep = [r for r in rows if not r.get("step") or float(r["step"]) < before_step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)


def best_checkpoint(callbacks: list) -> str | None:
    """Path of the checkpoint best on ``monitor`` (None without a monitoring ModelCheckpoint)."""
    return next((c.best_model_path for c in callbacks
                 if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor and c.best_model_path), None)


def score(cfg: DictConfig, task: pl.LightningModule, dm: pl.LightningDataModule, ckpt: str | None) -> dict[str, float]:
    """``valid/...`` and ``test/...`` metrics of ``task`` with the weights of ``ckpt`` (None: as they
    are), which stay loaded. A quiet trainer: scoring adds no epoch to the logged curves.

    Test is scored first; when the checkpoint carries the metrics of a validation of its own weights
    (``RecTask.checkpoint_valid_metrics``: it was saved right after that validation, as the best
    checkpoint is), those are the valid metrics and validation is not run again (a full-corpus
    pass: about 30 s at 100k users × 100k items on 2 cores)."""
    scorer = make_trainer(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    metrics: dict[str, float] = {}
    for split, check in (("test", scorer.test), ("valid", scorer.validate)):
        known = getattr(task, "checkpoint_valid_metrics", None) if ckpt is not None else None
        if split == "valid" and known:
            log.info("valid metrics of %s: from its own validation during fit", ckpt)
            metrics.update((k, float(v)) for k, v in known.items())
            continue
        for k, v in check(task, datamodule=dm, ckpt_path=ckpt, verbose=False, weights_only=True)[0].items():
            if k.startswith(f"{split}/"):
                metrics[k] = float(v)
    return metrics


def monitored(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """The metric a sweep optimises, ``cfg.monitor``, with a clear error when the run lacks it."""
    if cfg.monitor not in metrics:
        raise RecfunnelError(f"monitor={cfg.monitor!r} is not among the run's metrics ({', '.join(sorted(metrics))}); "
                             "set monitor to one of them, e.g. monitor=valid/ndcg@10")
    return metrics[cfg.monitor]


def save_index(task: pl.LightningModule, dm: RecDataModule, out: Path, fingerprint: str) -> Path | None:
    """Exact inner-product FAISS index over the selected model's item vectors, saved in ``out/index``
    with the item-id map (retrieval models only). Every process embeds the catalogue (a sharded
    model's forward is collective); the main one saves it."""
    if not hasattr(task, "catalogue_vectors"):
        return None
    training = task.training  # a Lightning test leaves the module in the mode it found: training after fit
    task.eval()  # the vectors the scores were computed with: no dropout
    try:
        with torch.no_grad():
            vectors = task.catalogue_vectors().float().cpu().numpy()
    finally:
        task.train(training)
    if not is_main_process():
        return out / "index"
    index = ItemIndex.build(vectors, dm.data.tables.items["item_id"].to_numpy(), kind="flat", fingerprint=fingerprint)
    index.save(out / "index")
    return out / "index"


# -- jobs ------------------------------------------------------------------------------------------
def train(cfg: DictConfig) -> dict[str, float]:
    """Train ``cfg.model`` on ``cfg.data``, restore the checkpoint best on validation, score valid and
    test once, save the item index (retrieval models); returns the flat metrics of ``metrics.json``."""
    with open_run(cfg) as run:
        dm = build_datamodule(cfg)
        if getattr(dm, "data", None) is not None:
            record_data(run, cfg.data.name, cfg.paths.data_dir, dm.data.fingerprint)
        task = build_task(cfg.model, dm)
        stage = getattr(task, "stage", "model")
        loggers = build_loggers(run, stage, run.resolved)
        trainer, callbacks = build_trainer(run, stage, loggers)
        with timed("fit"):
            fit_s = fit(run, trainer, task, dm)

        ckpt = best_checkpoint(callbacks)  # None (callbacks=none): evaluate the final weights
        with timed("score (valid and test, full corpus)"):
            metrics = score(cfg, task, dm, ckpt)
        metrics["train/fit_seconds"] = fit_s
        metrics["train/epochs"] = trainer.current_epoch
        with timed("index"):
            index_dir = save_index(task, dm, run.out, fingerprint=index_fingerprint(run.run_id, ckpt))
        if is_main_process():
            write_metrics(run.out, metrics)
            finish_loggers(loggers, metrics, {f"{stage}-index": ("faiss-index", [index_dir])} if index_dir else None)
        barrier()  # the other processes read this run (the funnel's next stage) only once it is written
    if is_main_process():
        print_metrics(f"{cfg.run_name} ({cfg.data.name})", metrics)
        print(f"run directory: {run.out.resolve()}")
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Fit a non-neural model of ``cfg.model`` (e.g. most popular) on the train split and score valid
    and test by ``../shared/EVALUATION.md``; returns the flat metrics of ``metrics.json``."""
    with open_run(cfg) as run:
        data = load_split(cfg.data, cfg.paths.data_dir)
        record_data(run, cfg.data.name, cfg.paths.data_dir, data.fingerprint)
        model = hydra.utils.instantiate(cfg.model).fit(data)
        results = {}
        for split in ("valid", "test"):
            evalset = EvalSet.build(data, split)
            results[split] = evaluate_protocol(model.scorer(evalset), evalset, data.num_items,
                                               chunk_size=cfg.eval_chunk_size)
        metrics = flatten(results)
        path = write_metrics(run.out, metrics)
    print_metrics(f"{cfg.model._target_.rsplit('.', 1)[-1]} on {cfg.data.name}", metrics)
    print(f"metrics: {path.resolve()}")
    return metrics


def train_retriever(cfg: DictConfig, out: Path, member: int = 0, role: str = "retriever") -> Path:
    """The funnel's first stage: a ``train`` run with ``{role}.overrides`` (``retriever`` or
    ``second_retriever``) in ``out`` (unless it finished there), in the funnel's W&B group. Member
    ``m`` of an ensemble (``retriever.members``) trains with seed ``seed + 1000 m``, so the ensembles
    of seeds 0, 1, 2, ... share no member and member 0 is the single retriever of the same seed."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    if (out / "metrics.json").exists() and (out / "index").exists():
        log.info("retriever already trained in %s", out)
        return out
    choices = HydraConfig.get().runtime.choices
    inherited = [f"{group}={choices[group]}" for group in ("trainer", "logger", "debug")
                 if choices.get(group) not in (None, "null")]
    # the funnel's own trainer.* command-line overrides (e.g. trainer.enable_progress_bar=false) apply too
    inherited += [o for o in HydraConfig.get().overrides.task if o.startswith("trainer.")]
    group, base = run_identity(cfg)
    name = base + (f"-member{member}" if member else "") + ("-second" if role == "second_retriever" else "")
    overrides = inherited + list(cfg[role].overrides) + [
        f"paths.output_dir={out.resolve()}", f"paths.data_dir={cfg.paths.data_dir}", f"seed={cfg.seed + 1000 * member}",
        f"group={group}", f"run_name={name}"]
    log.info("training the %s%s: recfunnel.train %s", role.replace("_", " "), f" (member {member})" if member else "",
             " ".join(overrides))
    train(compose(config_name="train", overrides=overrides))
    return out


def given_retriever_runs(cfg: DictConfig) -> list[Path]:
    """``retriever.run_dir`` as a list: one run, several (an ensemble; ``check_config`` holds them to
    ``retriever.members``), or none when not given."""
    given = cfg.retriever.run_dir
    if not given:
        return []
    return [Path(given)] if isinstance(given, str) else [Path(d) for d in given]


def train_retrievers(cfg: DictConfig, out: Path) -> list[Path]:
    """The ``retriever.members`` retriever runs trained here: ``out/retriever``, ``out/retriever_1``, ..."""
    members = int(cfg.retriever.get("members", 1))
    return [train_retriever(cfg, out / ("retriever" if m == 0 else f"retriever_{m}"), m) for m in range(members)]


def second_retriever_run(cfg: DictConfig, out: Path) -> Path | None:
    """The first stage's ``second_retriever``: its ``run_dir`` when given, else a run with its
    ``overrides`` trained into ``out/second_retriever``; None when both are null."""
    second = cfg.get("second_retriever") or {}
    if second.get("run_dir"):
        return Path(second.run_dir)
    if second.get("overrides"):
        return train_retriever(cfg, out / "second_retriever", role="second_retriever")
    return None


def run_funnel(cfg: DictConfig) -> dict[str, float]:
    """The whole funnel (see ``recfunnel.funnel``); returns the flat metrics of ``metrics.json``."""
    check_objectives(cfg)
    ranker_dir = reusable_ranker(cfg)  # checked before the run directory is written
    with open_run(cfg) as run:
        if ranker_dir is not None:
            retriever_dirs, second_dir = read_retriever_runs(ranker_dir), read_second_retriever_run(ranker_dir)
        else:
            retriever_dirs = given_retriever_runs(cfg) or train_retrievers(cfg, run.out)
            second_dir = second_retriever_run(cfg, run.out)
        # the retriever's own data (checked against its fingerprint), or the folder asked for on the command line
        retriever = Retriever.from_run(retriever_dirs, data_dir=_data_dir_given(cfg))
        record_data(run, retriever.data_name, retriever.data_dir, retriever.data_fingerprint)
        second = Retriever.beside(second_dir, retriever) if second_dir else None
        fusion = RankFusion.build(retriever, cfg.get("first_stage"), seed=cfg.seed, second=second)
        dm, task, metrics = train_ranker(run, retriever, fusion, ranker_dir)
        metrics.update(evaluate_stages(cfg, retriever, dm, task, fusion))
        if not is_main_process():
            return metrics
        (run.out / "retriever_run.txt").write_text("".join(f"{d.resolve()}\n" for d in retriever_dirs))
        if second_dir:
            (run.out / SECOND_RUN_FILE).write_text(f"{second_dir.resolve()}\n")
        write_metrics(run.out, metrics)
        report = write_funnel_report(run.out, metrics, cfg.funnel.top_n)
        finish_loggers(build_loggers(run, "funnel", run.resolved, csv=False), metrics,
                       {"funnel-report": ("report", [run.out / n for n in ("funnel.md", "funnel.png", "metrics.json")])})
    print(report)
    print(f"run directory: {run.out.resolve()}")
    return metrics


def check_objectives(cfg: DictConfig) -> None:
    """The objectives, the ranker's heads and the funnel's weights agree (before anything trains)."""
    objectives = predicted(parse_objectives(cfg.get("objectives")))
    check_heads(objectives, OmegaConf.select(cfg, "model.net.multitask", default=None))
    ObjectiveMix.from_config(objectives, cfg.funnel)


def _data_dir_given(cfg: DictConfig) -> str | None:
    """``paths.data_dir`` when the command line sets it (the data a user asks for), else None (a default,
    which says nothing about the data a given retriever run was trained on)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return str(cfg.paths.data_dir) if "paths.data_dir" in keys else None


#: what a funnel run may change of the run whose ranker it reuses (``ranker.run_dir``)
REUSE_KEYS = RESUMABLE_KEYS + ("funnel.", "rerank.", "ranker.", "retriever.", "hydra.", "hparams_search")


def reusable_ranker(cfg: DictConfig) -> Path | None:
    """``ranker.run_dir``: a finished funnel run whose first stage and ranker this run evaluates again
    (under other ``funnel.*`` settings, e.g. ``objective_weights``, or other ``rerank`` stages), instead
    of training them; None when not set. Its config must equal this one outside ``REUSE_KEYS``."""
    reuse = OmegaConf.select(cfg, "ranker.run_dir", default=None)
    if not reuse:
        return None
    reuse = Path(reuse)
    for name in FUNNEL_RUN_FILES:
        if not (reuse / name).is_file():
            raise RecfunnelError(f"ranker.run_dir: {reuse / name} is missing; give a finished `recfunnel.funnel` run")
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    before = OmegaConf.to_container(OmegaConf.load(reuse / "config.yaml"))
    differ = config_differences(before, resolved, REUSE_KEYS)
    if differ:
        raise RecfunnelError(f"ranker.run_dir={reuse} was trained with another config: "
                             f"{_describe(differ, before, resolved)}; reusing its ranker allows "
                             "other funnel.* and rerank settings only: drop the other overrides, or train a new ranker")
    given = given_retriever_runs(cfg)
    if given:
        if [d.resolve() for d in given] != [d.resolve() for d in read_retriever_runs(reuse)]:
            raise RecfunnelError(f"retriever.run_dir={', '.join(map(str, given))} is not the retriever of ranker.run_dir="
                                 f"{reuse} ({', '.join(map(str, read_retriever_runs(reuse)))}); drop retriever.run_dir")
    log.info("reusing the first stage and ranker of %s", reuse)
    return reuse


def train_ranker(run: Run, retriever: Retriever, fusion: RankFusion | None = None,
                 reuse: Path | None = None) -> tuple[Any, pl.LightningModule, dict[str, float]]:
    """The funnel's second stage: pairs from the first stage (``fusion`` when given, else ``retriever``;
    ``cfg.pairs``), the ranker (``cfg.model``) trained with its own W&B run, or loaded from the run
    ``reuse`` (``reusable_ranker``) and scored under this run's settings; returns its DataModule,
    the task with the weights best on validation, and the funnel's ``ranker/...`` metrics (pair AUC
    and log-loss, cost)."""
    cfg = run.cfg
    # the same start whether the retriever was trained in this process or loaded (a resumed funnel)
    pl.seed_everything(cfg.seed, workers=True)
    dm = ranker_data(cfg, retriever, fusion, stage="test" if reuse is not None else None)  # reused: no training pairs
    task = ranker_task(cfg, dm)
    log.info("the ranker's score: %s", task.net.mix.describe())
    if reuse is not None:
        task.load_state_dict(load_checkpoint(reuse / "checkpoints" / "best.ckpt")["state_dict"])
        return dm, task, ranker_metrics(score(cfg, task, dm, None))
    # the ranker's W&B config: the funnel's, less the later stages
    config = {k: v for k, v in run.resolved.items() if k not in ("rerank", "funnel")}
    runs = [str(d.resolve()) for d in retriever.run_dirs]
    loggers = build_loggers(run, "ranker", {**config, "retriever_run": runs[0] if len(runs) == 1 else runs})
    trainer, callbacks = build_trainer(run, "ranker", loggers)
    fit_s = fit(run, trainer, task, dm)
    ranker = {**score(cfg, task, dm, best_checkpoint(callbacks)), "train/fit_seconds": fit_s,
              "train/epochs": trainer.current_epoch}
    if is_main_process():
        finish_loggers(loggers, ranker)
    return dm, task, {"ranker/fit_seconds": fit_s, "ranker/epochs": trainer.current_epoch, **ranker_metrics(ranker)}


def ranker_data(cfg: DictConfig, retriever: Retriever, fusion: RankFusion | None = None, stage: str | None = None) -> Any:
    """The funnel's ``pairs`` DataModule over its first stage (``fusion`` when given, else
    ``retriever``), set up: each split's candidate lists, and the training pairs unless ``stage`` is
    "test" or "validate" (``RankingDataModule.setup``)."""
    dm = hydra.utils.instantiate(cfg.pairs, _partial_=True)(
        retriever=fusion or retriever, features=cfg.features, seed=cfg.seed,
        cooccurrence=fusion.cooccurrence if fusion else None, objectives=cfg.get("objectives"))
    dm.setup(stage)
    return dm


def ranker_task(cfg: DictConfig, dm: Any) -> pl.LightningModule:
    """A new ranker (``cfg.model``) for ``dm``, scoring with the funnel's objective weights."""
    task = build_task(cfg.model, dm)
    task.net.mix = ObjectiveMix.from_config(task.net.objectives, cfg.funnel)
    return task


def ranker_metrics(ranker: Mapping[str, float]) -> dict[str, float]:
    """The ranker stage's metrics the funnel reports: pair AUC and log-loss (``{split}/ranker/...``),
    each objective head's AUC (``{split}/objective/<name>/auc``)."""
    metrics = {}
    for k, v in ranker.items():
        if k.endswith(("/auc", "/logloss", "/users")):
            split, name = k.split("/", 1)
            metrics[f"{split}/{name}" if name.startswith("objective/") else f"{split}/ranker/{name}"] = v
    return metrics


def evaluate_stages(cfg: DictConfig, retriever: Retriever, dm: Any, task: pl.LightningModule,
                    fusion: RankFusion | None = None) -> dict[str, float]:
    """Each stage of the funnel (retrieval, + ranker, + re-ranking) on valid and test, what leaving
    out each re-ranking stage changes, and the end of the funnel under the usual keys (the final
    lists' slices too, ``final/<slice>/...``: ``{split}/cold/ndcg@10``, beside ``{split}/cold/targets``)."""
    reranker = build_reranker(cfg.rerank)
    catalogue = item_catalogue(dm.data.tables.items, dm.genres, retriever.item_vectors)
    funnel = Funnel(retriever, task.net, dm.pairs, reranker, catalogue, cfg.pairs.candidates, cfg.funnel.top_n, fusion)
    metrics: dict[str, float] = {}
    for split in ("valid", "test"):
        rows = dm.eval_rows[split]
        stage, slates = evaluate_funnel(funnel, dm.pipeline, rows, cfg.funnel.batch_size, cfg.funnel.timing_users,
                                        slices=target_slices(dm.data, rows))
        seen = funnel.seen(retriever.pipeline, rows)  # seen items and where each user is (geo stages)
        stage.update(rerank_ablation(slates["ranked"], catalogue, seen, reranker, dm.pipeline.item_idx[rows],
                                     cfg.funnel.top_n, dm.data.num_items, catalogue.genres.astype(np.float32)))
        stage.update(objective_metrics(slates["final"], dm.pipeline.item_idx[rows], dm.labels[rows],
                                       [o.name for o in dm.objectives], cfg.funnel.top_n))
        metrics.update({f"{split}/{k}": v for k, v in stage.items()})
        metrics.update({f"{split}/{k.split('/', 1)[1]}": v for k, v in stage.items() if k.startswith("final/")})
    return metrics
