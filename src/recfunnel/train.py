"""Train a model from config, restore the checkpoint best on validation, score valid and test.

    python -m recfunnel.train experiment=ml100k_two_tower hydra.run.dir=DIR
    python -m recfunnel.train -m hparams_search=two_tower_optuna      # a sweep

Writes into the run directory: ``metrics.json`` (``valid/...`` and ``test/...``), ``config.yaml``
(resolved), ``run_info.json`` (git commit, versions, seed), ``checkpoints/{best,last}.ckpt``, a CSV
log and, for retrieval models, ``index/`` (exact inner-product FAISS index of the selected model's
item vectors, with the item-id map; logged to W&B as an artifact too). Running the same command again in the same directory resumes from ``last.ckpt``.
Returns the validation metric named by ``monitor`` (what sweeps optimise).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from recfunnel.data.datamodule import RecDataModule
from recfunnel.eval.index import ItemIndex
from recfunnel.eval.report import print_metrics, write_metrics
from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import write_json
from recfunnel.utils.run_info import redact, run_metadata

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> RecDataModule:
    history = OmegaConf.select(cfg, "model.net.history_feature", default=None)
    dm = RecDataModule(cfg.data, cfg.features, cfg.paths.data_dir, batch_size=cfg.data.batch_size,
                       num_workers=cfg.data.num_workers,
                       num_negatives=OmegaConf.select(cfg, "model.loss.num_uniform_negatives", default=0),
                       train_windows=cfg.data.get("train_windows", 0), seed=cfg.seed,
                       window_tokens=cfg.features.features[history].max_len if history in cfg.features.features else 50)
    dm.setup()
    return dm


def build_task(cfg: DictConfig, dm: RecDataModule) -> pl.LightningModule:
    # Data-derived arguments are passed to the built factory, not to instantiate (which would turn
    # the schema dataclass and numpy arrays into config nodes).
    factory = hydra.utils.instantiate(cfg.model, _partial_=True)
    return factory(schema=dm.schema, num_embeddings=dm.num_embeddings, item_counts=dm.data.item_counts(),
                   dense_stats=dm.dense_stats())


def save_index(task: pl.LightningModule, dm: RecDataModule, out: Path, fingerprint: str) -> Path | None:
    """Exact inner-product FAISS index over the selected model's item vectors, saved in ``out/index``
    with the item-id map (retrieval models only)."""
    if not hasattr(task, "catalogue_vectors"):
        return None
    vectors = task.catalogue_vectors().float().cpu().numpy()
    index = ItemIndex.build(vectors, dm.data.tables.items["item_id"].to_numpy(), kind="flat", fingerprint=fingerprint)
    index.save(out / "index")
    return out / "index"


def read_run_id(run_dir: Path) -> str | None:
    """The id a run directory's ``run_info.json`` records (None for a new directory)."""
    try:
        return json.loads((Path(run_dir) / "run_info.json").read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def index_fingerprint(run_id: str, ckpt: str | None) -> str:
    """What a run's saved index is checked against: the run and the checkpoint its vectors came from."""
    return f"{run_id}:{Path(ckpt or 'final').name}"


def start_run(cfg: DictConfig) -> tuple[Path, dict, str]:
    """Seed everything and write the run directory's ``config.yaml`` (resolved, secrets redacted) and
    ``run_info.json``; returns (run dir, resolved config, run id — kept across resumes)."""
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    run_id = read_run_id(out) or uuid.uuid4().hex
    write_json(out / "run_info.json", {**run_metadata(seed=cfg.seed), "run_id": run_id})
    return out, resolved, run_id


def build_trainer(cfg: DictConfig, out: Path, resolved: dict) -> tuple[pl.Trainer, list, list]:
    """The Trainer of ``cfg.trainer`` with the configured callbacks and loggers (+ a CSV log in ``out``)."""
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values()]
    loggers = [CSVLogger(out, name="csv", version="")]
    loggers += [hydra.utils.instantiate(lg) for lg in (cfg.logger or {}).values()]
    for lg in loggers:
        lg.log_hyperparams(resolved)
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers), callbacks, loggers


def fit(cfg: DictConfig, trainer: pl.Trainer, task: pl.LightningModule, dm: pl.LightningDataModule, out: Path) -> float:
    """``trainer.fit``, resumed from ``out/checkpoints/last.ckpt`` when it exists; returns seconds."""
    last = out / "checkpoints" / "last.ckpt"
    resume = str(last) if cfg.resume and last.exists() else None
    if resume:
        log.info("resuming from %s", resume)
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm, ckpt_path=resume)
    return time.perf_counter() - start


def best_checkpoint(callbacks: list) -> str | None:
    """Path of the checkpoint best on ``monitor`` (None without a monitoring ModelCheckpoint)."""
    return next((c.best_model_path for c in callbacks
                 if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor and c.best_model_path), None)


def monitored(cfg: DictConfig, metrics: dict[str, float]) -> float:
    """The metric a sweep optimises, ``cfg.monitor``, with a clear error when the run lacks it."""
    if cfg.monitor not in metrics:
        raise RecfunnelError(f"monitor={cfg.monitor!r} is not among the run's metrics ({', '.join(sorted(metrics))}); "
                             "set monitor to one of them, e.g. monitor=valid/ndcg@10")
    return metrics[cfg.monitor]


def train(cfg: DictConfig) -> dict[str, float]:
    """The whole job; returns the flat metrics dict also written to ``metrics.json``."""
    out, resolved, run_id = start_run(cfg)
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm)
    trainer, callbacks, loggers = build_trainer(cfg, out, resolved)
    fit_s = fit(cfg, trainer, task, dm, out)

    ckpt = best_checkpoint(callbacks)  # None (callbacks=none): evaluate the final weights
    metrics: dict[str, float] = {}
    # final scoring with a quiet trainer, so it does not add an epoch to the logged curves
    scorer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    for split, run in (("valid", scorer.validate), ("test", scorer.test)):
        for k, v in run(task, datamodule=dm, ckpt_path=ckpt, verbose=False)[0].items():
            if k.startswith(f"{split}/"):
                metrics[k] = float(v)
    metrics["train/fit_seconds"] = fit_s
    metrics["train/epochs"] = trainer.current_epoch
    write_metrics(out, metrics)
    index_dir = save_index(task, dm, out, fingerprint=index_fingerprint(run_id, ckpt))
    for lg in loggers:
        lg.log_metrics({f"final/{k}": v for k, v in metrics.items()})
        if index_dir is not None and isinstance(lg, WandbLogger):
            import wandb  # only here: importing it costs every run a second or two

            artifact = wandb.Artifact(f"index-{lg.experiment.id}", type="faiss-index")
            artifact.add_dir(str(index_dir))
            lg.experiment.log_artifact(artifact)
        lg.finalize("success")
    print_metrics(f"{cfg.run_name} ({cfg.data.name})", metrics)
    print(f"run directory: {out.resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> float:
    return monitored(cfg, train(cfg))


if __name__ == "__main__":
    main()
