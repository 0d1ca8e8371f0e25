"""The whole funnel from one command: retriever → index → ranker → re-ranking → evaluation.

    python -m recfunnel.funnel experiment=ml100k_funnel hydra.run.dir=DIR
    python -m recfunnel.funnel retriever.run_dir=RUN model=dcnv2        # reuse a trained retriever

Steps: (1) the retriever: ``retriever.run_dir`` if given, else a ``recfunnel.train`` run with
``retriever.overrides`` trained into ``DIR/retriever`` (skipped when it already finished there);
(2) ranker pairs from the retriever (``pairs``: hard negatives from its top-K, uniform negatives);
(3) the DLRM ranker (``model``) trained with early stopping on the validation NDCG@10 of the ranked
lists; (4) re-ranking (``rerank``); (5) the funnel evaluated on valid and test per
``../shared/EVALUATION.md``.

Writes into DIR: ``metrics.json`` — the end of the funnel under the usual keys (``test/ndcg@10``,
...), each stage under ``test/retrieval/...``, ``test/ranked/...``, the ranker's pair metrics
(``test/ranker/auc``, ``logloss``), coverage, intra-list diversity, time per user, and what
removing each re-ranking stage changes (``test/rerank_without_<stage>/...``); ``funnel.md`` and
``funnel.png`` (the stage comparison); ``config.yaml``; ``run_info.json``; ``checkpoints/``.
Running the same command again in DIR resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from recfunnel.data.ranking import RankingDataModule
from recfunnel.eval.funnel import STAGES, Funnel, evaluate_funnel, item_catalogue, stage_metrics
from recfunnel.eval.report import write_metrics
from recfunnel.eval.rerank import Reranker, Seen, build_reranker
from recfunnel.retriever import Retriever
from recfunnel.train import best_checkpoint, build_trainer, fit, monitored, start_run, train
from recfunnel.utils.cli import friendly_errors

log = logging.getLogger(__name__)


def train_retriever(cfg: DictConfig, out: Path) -> Path:
    """Train the retriever with ``retriever.overrides`` into ``out`` (unless it finished there)."""
    from hydra import compose

    if (out / "metrics.json").exists() and (out / "index").exists():
        log.info("retriever already trained in %s", out)
        return out
    choices = HydraConfig.get().runtime.choices
    inherited = [f"{group}={choices[group]}" for group in ("trainer", "logger", "debug")
                 if choices.get(group) not in (None, "null")]
    # the funnel's own trainer.* command-line overrides (e.g. trainer.enable_progress_bar=false) apply too
    inherited += [o for o in HydraConfig.get().overrides.task if o.startswith("trainer.")]
    overrides = inherited + list(cfg.retriever.overrides) + [
        f"paths.output_dir={out.resolve()}", f"paths.data_dir={cfg.paths.data_dir}", f"seed={cfg.seed}"]
    log.info("training the retriever: recfunnel.train %s", " ".join(overrides))
    train(compose(config_name="train", overrides=overrides))
    return out


def build_ranker(cfg: DictConfig, dm: RankingDataModule) -> pl.LightningModule:
    factory = hydra.utils.instantiate(cfg.model, _partial_=True)
    return factory(schema=dm.schema, num_embeddings=dm.num_embeddings, num_pair_dense=dm.num_pair_dense,
                   dense_stats=dm.dense_stats())


def rerank_ablation(ranked, catalogue, seen: Seen, reranker: Reranker, targets, top_n, num_items, genres) -> dict:
    """Final-list metrics with each re-ranking stage left out in turn: what each stage costs or gains."""
    out = {}
    stages = dict(zip(reranker.names, reranker.stages))
    for name in stages:
        without = Reranker({k: s for k, s in stages.items() if k != name}, reranker.depth)
        slate = without(ranked, catalogue, seen, n=top_n)
        for k, v in stage_metrics({"final": slate}, targets, top_n, num_items, genres).items():
            out[f"rerank_without_{name}/{k.split('/', 1)[1]}"] = v
    return out


def write_report(out: Path, metrics: dict[str, float], top_n: int) -> str:
    """``funnel.md`` (stage table, test and valid) and ``funnel.png``; returns the markdown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for split in ("test", "valid"):
        cols = ["recall@10", "ndcg@10", f"mrr@{top_n}", "recall@100", f"coverage@{top_n}", f"ild@{top_n}"]
        lines += [f"### {split}", "", "| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for stage, label in zip(STAGES, ("retrieval only", "+ ranker", "+ re-ranking")):
            vals = [metrics.get(f"{split}/{stage}/{c}") for c in cols]
            lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
        lines.append("")
    timing = [f"{s}: mean {metrics[f'{s}/ms_per_user_mean']:.1f} ms, p99 {metrics[f'{s}/ms_per_user_p99']:.1f} ms"
              for s in ("test", "valid") if f"{s}/ms_per_user_mean" in metrics]
    if timing:
        lines += ["Time per user (single-user calls): " + "; ".join(timing), ""]
    text = "\n".join(lines)
    (out / "funnel.md").write_text(text)

    shown = ["recall@10", "ndcg@10", f"mrr@{top_n}", f"coverage@{top_n}", f"ild@{top_n}"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.25
    x = np.arange(len(shown))
    for i, (stage, label) in enumerate(zip(STAGES, ("retrieval only", "+ ranker", "+ re-ranking"))):
        ax.bar(x + (i - 1) * width, [metrics.get(f"test/{stage}/{m}", 0.0) for m in shown], width, label=label)
    ax.set_xticks(x, shown)
    ax.set_title("funnel stages, test split (same users)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "funnel.png", dpi=120)
    plt.close(fig)
    return text


def run(cfg: DictConfig) -> dict[str, float]:
    """The whole job; returns the flat metrics also written to ``metrics.json``."""
    out, resolved, _ = start_run(cfg)
    retriever_dir = Path(cfg.retriever.run_dir) if cfg.retriever.run_dir else train_retriever(cfg, out / "retriever")
    retriever = Retriever.from_run(retriever_dir, data_dir=cfg.paths.data_dir)
    (out / "retriever_run.txt").write_text(str(retriever_dir.resolve()) + "\n")
    dm = RankingDataModule(retriever, cfg.features, seed=cfg.seed, **cfg.pairs)
    dm.setup()
    task = build_ranker(cfg, dm)

    trainer, callbacks, loggers = build_trainer(cfg, out, resolved)
    fit_s = fit(cfg, trainer, task, dm, out)
    best = best_checkpoint(callbacks)
    if best:
        task.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])

    metrics: dict[str, float] = {"ranker/fit_seconds": fit_s, "ranker/epochs": trainer.current_epoch}
    scorer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], enable_progress_bar=False)
    for split, check in (("valid", scorer.validate), ("test", scorer.test)):
        for k, v in check(task, datamodule=dm, verbose=False)[0].items():
            if k.endswith(("/auc", "/logloss")):
                metrics[k.replace(f"{split}/", f"{split}/ranker/")] = float(v)

    reranker = build_reranker(cfg.rerank)
    catalogue = item_catalogue(dm.data.tables.items, dm.genres, retriever.item_vectors)
    funnel = Funnel(retriever, task.net, dm.pairs, reranker, catalogue, cfg.pairs.candidates, cfg.funnel.top_n)
    for split in ("valid", "test"):
        rows = dm.eval_rows[split]
        stage, slates = evaluate_funnel(funnel, dm.pipeline, rows, cfg.funnel.batch_size, cfg.funnel.timing_users)
        seen = Seen(*retriever.seen_before(retriever.pipeline, rows))
        stage.update(rerank_ablation(slates["ranked"], catalogue, seen, reranker, dm.pipeline.item_idx[rows],
                                     cfg.funnel.top_n, dm.data.num_items, catalogue.genres.astype(np.float32)))
        metrics.update({f"{split}/{k}": v for k, v in stage.items()})
        # the end of the funnel under the usual keys
        metrics.update({f"{split}/{k.split('/', 1)[1]}": v for k, v in stage.items() if k.startswith("final/")})
    write_metrics(out, metrics)
    for lg in loggers:
        lg.log_metrics({f"final/{k}": v for k, v in metrics.items()})
        lg.finalize("success")
    print(write_report(out, metrics, cfg.funnel.top_n))
    print(f"run directory: {out.resolve()}")
    return metrics


@hydra.main(version_base="1.3", config_path="../../configs", config_name="funnel")
@friendly_errors
def main(cfg: DictConfig) -> float:
    return monitored(cfg, run(cfg))


if __name__ == "__main__":
    main()
