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


def train(cfg: DictConfig) -> dict[str, float]:
    """The whole job; returns the flat metrics dict also written to ``metrics.json``."""
    out = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True)
    resolved = redact(OmegaConf.to_container(cfg, resolve=True))
    (out / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    run_id = read_run_id(out) or uuid.uuid4().hex  # kept across resumes: the index fingerprint names it
    write_json(out / "run_info.json", {**run_metadata(seed=cfg.seed), "run_id": run_id})

    dm = build_datamodule(cfg)
    task = build_task(cfg, dm)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values()]
    loggers = [CSVLogger(out, name="csv", version="")]
    loggers += [hydra.utils.instantiate(lg) for lg in (cfg.logger or {}).values()]
    for lg in loggers:
        lg.log_hyperparams(resolved)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    last = out / "checkpoints" / "last.ckpt"
    resume = str(last) if cfg.resume and last.exists() else None
    if resume:
        log.info("resuming from %s", resume)
    start = time.perf_counter()
    trainer.fit(task, datamodule=dm, ckpt_path=resume)
    fit_s = time.perf_counter() - start

    best = next((c.best_model_path for c in callbacks
                 if isinstance(c, pl.callbacks.ModelCheckpoint) and c.monitor and c.best_model_path), None)
    ckpt = best or None  # no best checkpoint (callbacks=none): evaluate the final weights
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
    metrics = train(cfg)
    if cfg.monitor not in metrics:
        raise RecfunnelError(f"monitor={cfg.monitor!r} is not among the run's metrics ({', '.join(sorted(metrics))}); "
                             "set monitor to one of them, e.g. monitor=valid/ndcg@10")
    return metrics[cfg.monitor]


if __name__ == "__main__":
    main()
