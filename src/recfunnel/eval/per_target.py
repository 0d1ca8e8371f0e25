"""Per-target metrics of a finished run, recomputed from what it saved: one value per user's target,
whose mean is the run's own ``metrics.json`` figure (tested), for paired comparisons
(``recfunnel.eval.significance``).

    users, values = per_target("logs/funnel/runs/<time>", "valid", "ndcg@10")            # a funnel: final lists
    users, values = per_target("logs/funnel/runs/<time>", "test", "ndcg@10", stage="ranked")
    users, values = per_target("logs/train/runs/<time>", "test", "recall@100")          # a two-tower run

A funnel run (``recfunnel.funnel``: it holds ``retriever_run.txt``) is loaded as it serves
(``Recommender.from_run``) and its stage's lists scored by ``list_metrics``; a two-tower run
(``recfunnel.train``) is loaded as a ``Retriever`` and its full-catalogue scores ranked by
``ranking_metrics`` (ties as expectation), both under the protocol's exclusions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recfunnel.eval.funnel import funnel_lists
from recfunnel.eval.metrics import list_metrics
from recfunnel.eval.protocol import EvalSet, per_target_chunks
from recfunnel.serving.pipeline import STAGES
from recfunnel.serving.recommender import Recommender
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError


def per_target(run_dir: str | Path, split: str, metric: str, stage: str = "final", data_dir: str | None = None,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(users (U,) int64 dense user indices, values (U,) float64) of ``metric`` (``ndcg@10``,
    ``recall@20``, ``mrr``, ...) on ``split`` (valid / test) for the run at ``run_dir``; ``stage``
    (``retrieval``, ``ranked``, ``final``) picks a funnel's lists and must be ``final`` (the default)
    or ``retrieval`` for a two-tower run, which has only that one."""
    run_dir = Path(run_dir)
    if split not in ("valid", "test"):
        raise RecfunnelError(f"split={split!r} is not valid; use valid or test")
    if stage not in STAGES:
        raise RecfunnelError(f"stage={stage!r} is not valid; use one of {', '.join(STAGES)}")
    if (run_dir / "retriever_run.txt").is_file():
        rec = Recommender.from_run(run_dir, data_dir=data_dir, threads=None)
        evalset = EvalSet.build(rec.funnel.retriever.data, split)
        slates = funnel_lists(rec.funnel, rec.ranker_pipeline, evalset.rows)
        values = list_metrics(torch.as_tensor(slates[stage].items), torch.as_tensor(evalset.targets))
    elif (run_dir / "index").is_dir():
        if stage not in ("final", "retrieval"):
            raise RecfunnelError(f"{run_dir} is a two-tower run: it has no {stage!r} stage (its one ranking is "
                                 "stage=final, or retrieval)")
        retriever = Retriever.from_run(run_dir, data_dir=data_dir)
        evalset = EvalSet.build(retriever.data, split)
        vectors = retriever.item_vectors.T
        parts: dict[str, list[torch.Tensor]] = {}

        def scorer(positions: np.ndarray) -> torch.Tensor:  # (B, I) the index's inner products
            return torch.from_numpy(retriever.query_vectors(retriever.store, evalset.rows[positions]) @ vectors)

        for _, chunk_values in per_target_chunks(scorer, evalset, chunk):
            for k, v in chunk_values.items():
                parts.setdefault(k, []).append(v)
        values = {k: torch.cat(v) for k, v in parts.items()}
    else:
        raise RecfunnelError(f"{run_dir} is neither a finished funnel run (retriever_run.txt) nor a finished "
                             "two-tower run (index/): give the directory a recfunnel.funnel or recfunnel.train run wrote")
    if metric not in values:
        raise RecfunnelError(f"metric={metric!r} is not computed per target for {run_dir}; use one of "
                             f"{', '.join(sorted(values))}")
    return evalset.users.astype(np.int64), values[metric].double().numpy()
