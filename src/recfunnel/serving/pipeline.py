"""The funnel: retrieve K candidates (the index, or its fusion with co-occurrence) → rank them → re-rank → keep the top N.

``Funnel`` runs all stages for a batch of query events (rows of a feature pipeline, or a request
view of one, see ``FeaturePipeline.for_request``) and returns each stage's lists, so one call gives
what evaluation compares (retrieval only / + ranker / + re-ranking, ``recfunnel.eval.funnel``) and
what serving returns (``recfunnel.serving.recommender``).

Where the user is, for location-aware re-ranking (``rerank.DistanceRerank``) and the ranker's
distance feature (one rule, ``data.ranking.UserLocations``): a query row that is an
event of the data takes the event's own ``lat`` / ``lon`` (columns of the interactions, as
``data=synthetic_places`` has them: the request's location context, known when it is made); a
request (``FeaturePipeline.for_request``) takes the ``locations`` it is given, else the user's
``home_lat`` / ``home_lon`` (users table); a dataset with none of these gives no location.
"""

from __future__ import annotations

import numpy as np
import torch

from recfunnel.data.ranking import PairFeatures, UserLocations, build_batch, coordinates
from recfunnel.features.embedding import request_texts
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.models.dlrm import DLRM
from recfunnel.serving.fusion import RankFusion
from recfunnel.serving.rerank import ItemCatalogue, Reranker, Seen, Slate
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError

STAGES = ("retrieval", "ranked", "final")


def item_catalogue(items_table, genres: np.ndarray, embeddings: np.ndarray | None) -> ItemCatalogue:
    """What re-ranking knows of the items: genres, release year (NaN where unknown, or for a dataset
    without years), the retriever's vectors, and coordinates when the table has ``lat`` and ``lon``."""
    year = (items_table["year"].to_numpy(dtype=np.float64) if "year" in items_table
            else np.full(len(items_table), np.nan))
    where = coordinates(items_table, "lat", "lon")
    lat, lon = (None, None) if where is None else (where[:, 0], where[:, 1])
    return ItemCatalogue(genres=genres > 0, year=year, embeddings=embeddings, lat=lat, lon=lon)


class Funnel:
    """Args:
        retriever: the loaded retrieval run (user tower + index).
        ranker: the trained DLRM (eval mode).
        pairs: the ranker's pair features.
        reranker: the re-ranking stages.
        catalogue: item attributes for re-ranking.
        candidates: K retrieved per query; top_n: N returned.
        fusion: the first stage when it fuses the retriever with co-occurrence or a second
            retriever (``recfunnel.serving.fusion``); None: the retriever's index alone.
    """

    def __init__(self, retriever: Retriever, ranker: DLRM, pairs: PairFeatures, reranker: Reranker,
                 catalogue: ItemCatalogue, candidates: int = 100, top_n: int = 10, fusion: RankFusion | None = None):
        self.retriever, self.ranker, self.pairs, self.fusion = retriever, ranker.eval(), pairs, fusion
        self.reranker, self.catalogue = reranker, catalogue
        self.candidates, self.top_n = candidates, top_n
        self.user_locations = UserLocations.of(retriever.dm.data)  # where users are, when the data says

    def seen(self, retriever_pipeline: FeaturePipeline, rows: np.ndarray, locations: np.ndarray | None = None) -> Seen:
        """What re-ranking knows of the users of query ``rows`` (B,): the items each saw before its row
        and where each is (the module docstring): ``locations`` (B, 2) (lat, lon) when given."""
        ptr, items = self.retriever.seen_before(retriever_pipeline, rows)
        return Seen(ptr, items, self.locations(retriever_pipeline, rows, locations))

    def locations(self, retriever_pipeline: FeaturePipeline, rows: np.ndarray,
                  locations: np.ndarray | None = None) -> np.ndarray | None:
        """(B, 2) float64 (lat, lon) of the users of query ``rows`` (B,), or None (see the module docstring)."""
        if locations is not None:
            out = np.asarray(locations, dtype=np.float64)
            if out.shape != (len(rows), 2):
                raise RecfunnelError(f"locations must be ({len(rows)}, 2): (lat, lon) per query, got shape {out.shape}")
            return out
        return None if self.user_locations is None else self.user_locations.where(retriever_pipeline, rows)

    @torch.no_grad()
    def __call__(self, retriever_pipeline: FeaturePipeline, ranker_pipeline: FeaturePipeline,
                 rows: np.ndarray, candidates: np.ndarray | None = None, top_n: int | None = None,
                 locations: np.ndarray | None = None) -> dict[str, Slate]:
        """Each stage's lists for query ``rows`` (B,): retrieval (B, K), ranked (B, K), final (B, N).

        ``candidates`` (B, C) dense item indices replace the retrieval stage (they are ranked and
        re-ranked as given, in the retriever's score order); ``top_n`` overrides N; ``locations``
        (B, 2) (lat, lon) say where the users are (default: the module docstring's).
        """
        r = self.retriever
        queries = (self.fusion or r).query_vectors(retriever_pipeline, rows)  # (B, d [+ d2]), see RankFusion
        users = self.seen(retriever_pipeline, rows, locations)
        seen = (users.indptr, users.indices)
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
            scores = np.einsum("bd,bcd->bc", queries[:, :r.index.dim], r.item_vectors[items])
            order = np.argsort(-scores, axis=1, kind="stable")
            items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        retrieval = Slate(items, scores)
        batch = build_batch(ranker_pipeline, self.pairs, rows, queries, items, items, here=users.location)
        with request_texts(self.ranker, ranker_pipeline.request_text):
            logits = self.ranker(batch)
        logits = logits.masked_fill(batch["cand_idx"] < 0, float("-inf")).numpy()
        order = np.argsort(-logits, axis=1, kind="stable")
        ranked = Slate(np.take_along_axis(items, order, 1), np.take_along_axis(logits, order, 1))
        final = self.reranker(ranked, self.catalogue, users, n=top_n or self.top_n)
        return {"retrieval": retrieval, "ranked": ranked, "final": final}
