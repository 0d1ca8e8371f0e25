"""The funnel: retrieve K candidates (the index, or its fusion with co-occurrence) → rank them → re-rank → keep the top N.

``Funnel`` runs all stages for a batch of query events (rows of a feature pipeline, or a request
view of one, see ``FeaturePipeline.for_request``) and returns each stage's lists, so one call gives
what evaluation compares (retrieval only / + ranker / + re-ranking, ``recfunnel.eval.funnel``) and
what serving returns (``recfunnel.serving.recommender``).
"""

from __future__ import annotations

import numpy as np
import torch

from recfunnel.data.ranking import PairFeatures, build_batch
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.models.dlrm import DLRM
from recfunnel.serving.fusion import RankFusion
from recfunnel.serving.rerank import ItemCatalogue, Reranker, Seen, Slate
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError

STAGES = ("retrieval", "ranked", "final")


def item_catalogue(items_table, genres: np.ndarray, embeddings: np.ndarray | None) -> ItemCatalogue:
    """What re-ranking knows of the items: genres, release year (NaN where unknown, or for a dataset
    without years), the retriever's vectors."""
    year = (items_table["year"].to_numpy(dtype=np.float64) if "year" in items_table
            else np.full(len(items_table), np.nan))
    return ItemCatalogue(genres=genres > 0, year=year, embeddings=embeddings)


class Funnel:
    """Args:
        retriever: the loaded retrieval run (user tower + index).
        ranker: the trained DLRM (eval mode).
        pairs: the ranker's pair features.
        reranker: the re-ranking stages.
        catalogue: item attributes for re-ranking.
        candidates: K retrieved per query; top_n: N returned.
        fusion: the first stage when it fuses the retriever with co-occurrence
            (``recfunnel.serving.fusion``); None: the retriever's index alone.
    """

    def __init__(self, retriever: Retriever, ranker: DLRM, pairs: PairFeatures, reranker: Reranker,
                 catalogue: ItemCatalogue, candidates: int = 100, top_n: int = 10, fusion: RankFusion | None = None):
        self.retriever, self.ranker, self.pairs, self.fusion = retriever, ranker.eval(), pairs, fusion
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
        if candidates is None and self.fusion is not None:
            items, scores = self.fusion.search(retriever_pipeline, rows, queries, seen, self.candidates)
        elif candidates is None:
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
