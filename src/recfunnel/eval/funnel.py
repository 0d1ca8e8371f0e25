"""The funnel: retrieve K candidates from the index → rank them → re-rank → keep the top N.

``Funnel`` runs all stages for a batch of query events (rows of a feature pipeline, or a request
view of one, see ``FeaturePipeline.for_request``) and returns each stage's lists, so one call gives
what evaluation compares (retrieval only / + ranker / + re-ranking) and what serving returns.
``evaluate_funnel`` scores a split by ``../shared/EVALUATION.md``: one target per user, the user's
earlier items excluded (the retriever drops them), metrics of the returned lists (a target the
funnel does not return scores 0), plus catalogue coverage, intra-list diversity (genres) and the
time per user of single-user calls.
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import torch

from recfunnel.data.ranking import PairFeatures, build_batch
from recfunnel.eval.diversity import catalogue_coverage, intra_list_diversity
from recfunnel.eval.metrics import list_metrics
from recfunnel.eval.rerank import ItemCatalogue, Reranker, Seen, Slate
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.models.dlrm import DLRM
from recfunnel.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError

STAGES = ("retrieval", "ranked", "final")


def item_catalogue(items_table, genres: np.ndarray, embeddings: np.ndarray | None) -> ItemCatalogue:
    """What re-ranking knows of the items: genres, release year, the retriever's vectors."""
    return ItemCatalogue(genres=genres > 0, year=items_table["year"].to_numpy(dtype=np.float64), embeddings=embeddings)


class Funnel:
    """Args:
        retriever: the loaded retrieval run (user tower + index).
        ranker: the trained DLRM (eval mode).
        pairs: the ranker's pair features.
        reranker: the re-ranking stages.
        catalogue: item attributes for re-ranking.
        candidates: K retrieved per query; top_n: N returned.
    """

    def __init__(self, retriever: Retriever, ranker: DLRM, pairs: PairFeatures, reranker: Reranker,
                 catalogue: ItemCatalogue, candidates: int = 100, top_n: int = 10):
        self.retriever, self.ranker, self.pairs = retriever, ranker.eval(), pairs
        self.reranker, self.catalogue = reranker, catalogue
        self.candidates, self.top_n = candidates, top_n

    @torch.no_grad()
    def __call__(self, retriever_pipeline: FeaturePipeline, ranker_pipeline: FeaturePipeline,
                 rows: np.ndarray, candidates: np.ndarray | None = None, top_n: int | None = None) -> dict[str, Slate]:
        """Each stage's lists for query ``rows`` (B,): retrieval (B, K), ranked (B, K), final (B, N).

        ``candidates`` (B, C) dense item indices replace the retrieval stage (they are ranked and
        re-ranked as given, in the retriever's score order); ``top_n`` overrides N.
        """
        r = self.retriever
        queries = r.query_vectors(retriever_pipeline, rows)
        seen = r.seen_before(retriever_pipeline, rows)
        if candidates is None:
            items, scores = r.search(queries, self.candidates, seen=seen)
        else:
            items = np.asarray(candidates, dtype=np.int64).reshape(len(rows), -1)
            bad = items[(items < 0) | (items >= r.index.num_items)]
            if bad.size:
                raise RecfunnelError(f"candidates reference item indices {sorted(set(bad.tolist()))[:5]} outside the "
                                     f"catalogue [0, {r.index.num_items}); pass items of the retriever's catalogue")
            scores = np.einsum("bd,bcd->bc", queries, r.item_vectors[items])
            order = np.argsort(-scores, axis=1, kind="stable")
            items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        retrieval = Slate(items, scores)
        batch = build_batch(ranker_pipeline, self.pairs, rows, queries, items, items)
        logits = self.ranker(batch).masked_fill(batch["cand_idx"] < 0, float("-inf")).numpy()
        order = np.argsort(-logits, axis=1, kind="stable")
        ranked = Slate(np.take_along_axis(items, order, 1), np.take_along_axis(logits, order, 1))
        final = self.reranker(ranked, self.catalogue, Seen(*seen), n=top_n or self.top_n)
        return {"retrieval": retrieval, "ranked": ranked, "final": final}


def stage_metrics(slates: Mapping[str, Slate], targets: np.ndarray, top_n: int, num_items: int,
                  genres: np.ndarray) -> dict[str, float]:
    """Mean metrics per stage, keyed ``<stage>/<metric>``; coverage and diversity of each stage's top N."""
    out: dict[str, float] = {}
    t = torch.as_tensor(targets)
    for stage, slate in slates.items():
        items = torch.as_tensor(slate.items)
        for k, v in list_metrics(items, t, ndcg_ks=[k for k in (10, 20) if k <= items.shape[1]]).items():
            out[f"{stage}/{k}"] = float(v.mean())
        head = slate.items[:, :top_n]
        out[f"{stage}/mrr@{top_n}"] = float(list_metrics(torch.as_tensor(head), t)["mrr"].mean())  # comparable across stages
        out[f"{stage}/coverage@{top_n}"] = catalogue_coverage(head, num_items)
        out[f"{stage}/ild@{top_n}"] = intra_list_diversity(head, genres)
    return out


def evaluate_funnel(funnel: Funnel, ranker_pipeline: FeaturePipeline, rows: np.ndarray, batch_size: int = 256,
                    timing_users: int = 200) -> tuple[dict[str, float], dict[str, Slate]]:
    """Stage metrics for event ``rows`` (one target per user) and the time per user.

    The lists come from batched calls; ``timing_users`` of the users are then served one by one
    (features, retrieval, ranking, re-ranking) to give the mean and p99 time of a single-user call.
    Returns the metrics (``retrieval/ndcg@10``, ``ranked/...``, ``final/...``, ``ms_per_user_mean``,
    ``ms_per_user_p99``) and the stages' lists.
    """
    ret_pipe = funnel.retriever.pipeline
    parts: dict[str, list[Slate]] = {s: [] for s in STAGES}
    for lo in range(0, len(rows), batch_size):
        for stage, slate in funnel(ret_pipe, ranker_pipeline, rows[lo:lo + batch_size]).items():
            parts[stage].append(slate)
    slates = {s: Slate(np.concatenate([p.items for p in v]), np.concatenate([p.scores for p in v]))
              for s, v in parts.items()}
    genres = funnel.catalogue.genres.astype(np.float32)
    metrics = stage_metrics(slates, ret_pipe.item_idx[rows], funnel.top_n, ret_pipe.num_items, genres)
    times = []
    for row in rows[:timing_users]:
        start = time.perf_counter()
        funnel(ret_pipe, ranker_pipeline, np.array([row]))
        times.append((time.perf_counter() - start) * 1000)
    if times:
        metrics["ms_per_user_mean"] = float(np.mean(times))
        metrics["ms_per_user_p99"] = float(np.percentile(times, 99))
    return metrics, slates
