"""The funnel's evaluation: each stage of ``recfunnel.serving.pipeline.Funnel`` scored on a split.

``evaluate_funnel`` scores a split by ``../shared/EVALUATION.md``: one target per user, the user's
earlier items excluded (the retriever drops them), metrics of the returned lists (a target the
funnel does not return scores 0), plus catalogue coverage, intra-list diversity (genres) and the
time per user of single-user calls. Given which targets are in each slice (``recfunnel.eval.slices``),
each stage's list metrics are also averaged over each slice's targets only (``<stage>/cold/ndcg@10``,
``<stage>/query/ndcg@10``, ...), and their number is ``<slice>/targets``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import torch

from recfunnel.eval.diversity import catalogue_coverage, intra_list_diversity
from recfunnel.eval.metrics import list_metrics
from recfunnel.eval.slices import COUNT, slice_metrics
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.serving.pipeline import STAGES, Funnel
from recfunnel.serving.rerank import Reranker, Seen, Slate

__all__ = ["STAGES", "evaluate_funnel", "objective_metrics", "rerank_ablation", "stage_metrics"]


def stage_metrics(slates: Mapping[str, Slate], targets: np.ndarray, top_n: int, num_items: int,
                  genres: np.ndarray, slices: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Mean metrics per stage, keyed ``<stage>/<metric>``; coverage and diversity of each stage's top N.

    targets: (U,) each user's target item; slices: {name: (U,) bool} which targets are in each slice:
    each stage's list metrics are then averaged over those too, ``<stage>/<slice>/<metric>`` (none
    for a slice without targets; the counts are the caller's to report once).
    """
    out: dict[str, float] = {}
    t = torch.as_tensor(targets)
    for stage, slate in slates.items():
        items = torch.as_tensor(slate.items)
        per_target = list_metrics(items, t, ndcg_ks=[k for k in (10, 20) if k <= items.shape[1]])
        for k, v in per_target.items():
            out[f"{stage}/{k}"] = float(v.mean())
        out.update({f"{stage}/{k}": v for k, v in slice_metrics(per_target, slices or {}).items()
                    if not k.endswith(f"/{COUNT}")})
        head = slate.items[:, :top_n]
        out[f"{stage}/mrr@{top_n}"] = float(list_metrics(torch.as_tensor(head), t)["mrr"].mean())  # comparable across stages
        out[f"{stage}/coverage@{top_n}"] = catalogue_coverage(head, num_items)
        out[f"{stage}/ild@{top_n}"] = intra_list_diversity(head, genres)
    return out


def objective_metrics(slate: Slate, targets: np.ndarray, labels: np.ndarray, names: list[str], top_n: int
                      ) -> dict[str, float]:
    """Per objective, how the top ``top_n`` of ``slate`` serve it, the target's label as gain.

    labels: (U, T) each user's target labels for the T objectives ``names``. With one target per user
    the gain only scales a user's ideal list, so:

    - ``objective/<name>/ndcg@N``: mean NDCG@N over the users whose target has a positive label
      (for satisfaction: the users who liked their next item), 0 for a target outside the top N;
    - ``<name>@N``: mean over all users of the target's label when it is in the top N (revenue@10:
      the revenue the lists capture per user; engagement@10: the hit rate).
    """
    head = np.asarray(slate.items)[:, :top_n]
    hit = head == np.asarray(targets)[:, None]
    found = hit.any(1)
    ndcg = np.where(found, 1.0 / np.log2(hit.argmax(1) + 2.0), 0.0)
    out = {}
    for j, name in enumerate(names):
        gain = labels[:, j].astype(np.float64)
        positive = gain > 0
        out[f"objective/{name}/ndcg@{top_n}"] = float(ndcg[positive].mean()) if positive.any() else 0.0
        out[f"{name}@{top_n}"] = float((gain * found).mean()) if len(gain) else 0.0
    return out


def funnel_lists(funnel: Funnel, ranker_pipeline: FeaturePipeline, rows: np.ndarray, batch_size: int = 256
                 ) -> dict[str, Slate]:
    """Each stage's lists (``STAGES``: retrieval (U, K), ranked (U, K), final (U, N)) for event ``rows``
    (U,) of the retriever's pipeline, from batched calls of ``funnel``."""
    parts: dict[str, list[Slate]] = {s: [] for s in STAGES}
    for lo in range(0, len(rows), batch_size):
        for stage, slate in funnel(funnel.retriever.pipeline, ranker_pipeline, rows[lo:lo + batch_size]).items():
            parts[stage].append(slate)
    return {s: Slate(np.concatenate([p.items for p in v]), np.concatenate([p.scores for p in v]))
            for s, v in parts.items()}


def evaluate_funnel(funnel: Funnel, ranker_pipeline: FeaturePipeline, rows: np.ndarray, batch_size: int = 256,
                    timing_users: int = 200, slices: Mapping[str, np.ndarray] | None = None
                    ) -> tuple[dict[str, float], dict[str, Slate]]:
    """Stage metrics for event ``rows`` (U,) (one target per user) and the time per user.

    The lists come from batched calls; ``timing_users`` of the users are then served one by one
    (features, retrieval, ranking, re-ranking) to give the mean and p99 time of a single-user call.
    ``slices``: {name: (U,) bool} which targets are in each slice (``recfunnel.eval.slices.target_slices``).
    Returns the metrics (``retrieval/ndcg@10``, ``ranked/...``, ``final/...``, ``ms_per_user_mean``,
    ``ms_per_user_p99``; for each slice, ``<stage>/<slice>/...`` and ``<slice>/targets``) and the stages' lists.
    """
    ret_pipe = funnel.retriever.pipeline
    slates = funnel_lists(funnel, ranker_pipeline, rows, batch_size)
    genres = funnel.catalogue.genres.astype(np.float32)
    metrics = stage_metrics(slates, ret_pipe.item_idx[rows], funnel.top_n, ret_pipe.num_items, genres, slices)
    # each slice's count, once (of no metric: the counts alone), and a line for a slice without targets
    metrics.update(slice_metrics({}, slices or {}, where=f"funnel evaluation of {len(rows)} targets"))
    times = []
    for row in rows[:timing_users]:
        start = time.perf_counter()
        funnel(ret_pipe, ranker_pipeline, np.array([row]))
        times.append((time.perf_counter() - start) * 1000)
    if times:
        metrics["ms_per_user_mean"] = float(np.mean(times))
        metrics["ms_per_user_p99"] = float(np.percentile(times, 99))
    return metrics, slates


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
