"""End-of-funnel NDCG@10 of several rankers' logits averaged: does an ensemble of ranker starts help?

    .venv/bin/python benchmarks/ranker_average.py RUN_A RUN_B [RUN_C ...] [--split valid] [--json OUT]

Each RUN is a finished ``recfunnel.funnel`` run over the same first stage, trained with the same config
but its seed (``experiment=ml100k_funnel retriever.run_dir=RUN seed=S`` and ``seed=S+1000``: the same
retriever, another ranker start and pair sampling). The first stage, the ranker's pairs and the
re-ranking are rebuilt from the first run's config; each run's ``checkpoints/best.ckpt`` is loaded and
the funnel is scored (``recfunnel.eval.funnel.evaluate_funnel``) with each ranker alone and with the
mean of their logits. Prints ranked-list and final-list NDCG@10 of each; ``--json OUT`` writes them.
Validation chooses: ``--split test`` is for reporting a configuration already chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recfunnel.eval.funnel import evaluate_funnel  # noqa: E402
from recfunnel.runs import RESUMABLE_KEYS, config_differences, ranker_data, ranker_task  # noqa: E402
from recfunnel.serving.fusion import RankFusion, read_second_retriever_run  # noqa: E402
from recfunnel.serving.pipeline import Funnel, item_catalogue  # noqa: E402
from recfunnel.serving.rerank import build_reranker  # noqa: E402
from recfunnel.serving.retriever import FUNNEL_RUN_FILES, Retriever, read_retriever_runs  # noqa: E402
from recfunnel.tasks.checkpoints import load_checkpoint  # noqa: E402
from recfunnel.utils.errors import RecfunnelError  # noqa: E402


class MeanLogits(torch.nn.Module):
    """The mean of several rankers' (B, C) logits for one batch."""

    def __init__(self, rankers: list[torch.nn.Module]):
        super().__init__()
        self.rankers = torch.nn.ModuleList(rankers)

    def forward(self, batch) -> torch.Tensor:
        return torch.stack([r(batch) for r in self.rankers]).mean(0)


def check_runs(runs: list[Path]) -> None:
    """Every run is a finished funnel run with the first run's retriever and config (but its seed)."""
    for run in runs:
        for name in FUNNEL_RUN_FILES:
            if not (run / name).is_file():
                raise RecfunnelError(f"{run / name} is missing; give finished `recfunnel.funnel` runs")
    first = OmegaConf.to_container(OmegaConf.load(runs[0] / "config.yaml"))
    for run in runs[1:]:
        if [p.resolve() for p in read_retriever_runs(run)] != [p.resolve() for p in read_retriever_runs(runs[0])] or \
                str(read_second_retriever_run(run)) != str(read_second_retriever_run(runs[0])):
            raise RecfunnelError(f"{run} ranks another retriever's candidates than {runs[0]}: give runs of one first stage")
        differ = config_differences(first, OmegaConf.to_container(OmegaConf.load(run / "config.yaml")),
                                    (*RESUMABLE_KEYS, "seed", "hydra.", "retriever."))
        if differ:
            raise RecfunnelError(f"{run} was trained with another config than {runs[0]} ({', '.join(differ[:5])}); "
                                 "give runs that differ in their seed only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished recfunnel.funnel runs over one first stage")
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--data-dir", default=None, help="the data folder, when not where the retriever was trained")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    if len(args.runs) < 2:
        ap.error("give two runs or more")
    check_runs(args.runs)
    cfg = OmegaConf.load(args.runs[0] / "config.yaml")
    retriever = Retriever.from_run(read_retriever_runs(args.runs[0]), data_dir=args.data_dir)
    fusion = RankFusion.of_funnel_run(retriever, args.runs[0], cfg)
    dm = ranker_data(cfg, retriever, fusion, stage="test")  # the rankers are loaded: no training pairs
    rankers = []
    for run in args.runs:
        task = ranker_task(cfg, dm)
        task.load_state_dict(load_checkpoint(run / "checkpoints" / "best.ckpt")["state_dict"])
        rankers.append(task.net.eval())
    reranker = build_reranker(cfg.rerank)
    catalogue = item_catalogue(dm.data.tables.items, dm.genres, retriever.item_vectors)
    rows = dm.eval_rows[args.split]
    results = {}
    for name, ranker in [*((str(r), n) for r, n in zip(args.runs, rankers)), ("mean of the logits", MeanLogits(rankers))]:
        funnel = Funnel(retriever, ranker, dm.pairs, reranker, catalogue, cfg.pairs.candidates, cfg.funnel.top_n, fusion)
        metrics, _ = evaluate_funnel(funnel, dm.pipeline, rows, cfg.funnel.batch_size, timing_users=0)
        results[name] = {"ranked/ndcg@10": metrics["ranked/ndcg@10"], "final/ndcg@10": metrics["final/ndcg@10"]}
        print(f"{args.split} NDCG@10  ranked {metrics['ranked/ndcg@10']:.4f}  final {metrics['final/ndcg@10']:.4f}  {name}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "results": results}, indent=1))


if __name__ == "__main__":
    try:
        main()
    except RecfunnelError as e:
        sys.exit(f"error: {e}")
