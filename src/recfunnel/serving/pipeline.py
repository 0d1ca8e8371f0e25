"""The funnel: retrieve K candidates (the index, or its fusion with co-occurrence) → rank them → re-rank → keep the top N.

``Funnel`` runs all stages for a batch of query events (rows of a feature pipeline, or a request
view of one, see ``FeaturePipeline.for_request``) and returns each stage's lists, so one call gives
what evaluation compares (retrieval only / + ranker / + re-ranking, ``recfunnel.eval.funnel``) and
what serving returns (``recfunnel.serving.recommender``).

Where the user is, for location-aware re-ranking (``rerank.DistanceRerank``): a query row that is an
event of the data takes the event's own ``lat`` / ``lon`` (columns of the interactions, as
``data=synthetic_places`` has them: the request's location context, known when it is made); a
request (``FeaturePipeline.for_request``) takes the ``locations`` it is given, else the user's
``home_lat`` / ``home_lon`` (users table); a dataset with none of these gives no location.
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
    without years), the retriever's vectors, and coordinates when the table has ``lat`` and ``lon``."""
    year = (items_table["year"].to_numpy(dtype=np.float64) if "year" in items_table
            else np.full(len(items_table), np.nan))
    lat, lon = _coordinates(items_table, "lat", "lon")
    return ItemCatalogue(genres=genres > 0, year=year, embeddings=embeddings, lat=lat, lon=lon)


def _coordinates(table, lat: str, lon: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(n,) float64 columns ``lat`` and ``lon`` of a DataFrame (NaN where missing), or (None, None)
    unless it has both."""
    if lat not in table or lon not in table:
        return None, None
    return table[lat].to_numpy(dtype=np.float64, na_value=np.nan), table[lon].to_numpy(dtype=np.float64, na_value=np.nan)


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
        tables = retriever.dm.data.tables
        self.event_location = _stacked(*_coordinates(tables.interactions, "lat", "lon"))  # (N, 2) or None
        self.home_location = _stacked(*_coordinates(tables.users, "home_lat", "home_lon"))  # (num_users, 2) or None

    def seen(self, retriever_pipeline: FeaturePipeline, rows: np.ndarray, locations: np.ndarray | None = None) -> Seen:
        """What re-ranking knows of the users of query ``rows`` (B,): the items each saw before its row
        and where each is (the module docstring): ``locations`` (B, 2) (lat, lon) when given."""
        ptr, items = self.retriever.seen_before(retriever_pipeline, rows)
        return Seen(ptr, items, self.locations(retriever_pipeline, rows, locations))

    def locations(self, retriever_pipeline: FeaturePipeline, rows: np.ndarray,
                  locations: np.ndarray | None = None) -> np.ndarray | None:
        """(B, 2) float64 (lat, lon) of the users of query ``rows`` (B,), or None (see the module docstring)."""
        rows = np.asarray(rows, dtype=np.int64)
        if locations is not None:
            out = np.asarray(locations, dtype=np.float64)
            if out.shape != (len(rows), 2):
                raise RecfunnelError(f"locations must be ({len(rows)}, 2): (lat, lon) per query, got shape {out.shape}")
            return out
        if self.event_location is not None and retriever_pipeline is self.retriever.pipeline:
            return self.event_location[rows]
        if self.home_location is not None:
            return self.home_location[retriever_pipeline.user_idx[rows]]
        return None

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
        queries = r.query_vectors(retriever_pipeline, rows)
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
            scores = np.einsum("bd,bcd->bc", queries, r.item_vectors[items])
            order = np.argsort(-scores, axis=1, kind="stable")
            items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        retrieval = Slate(items, scores)
        batch = build_batch(ranker_pipeline, self.pairs, rows, queries, items, items)
        logits = self.ranker(batch).masked_fill(batch["cand_idx"] < 0, float("-inf")).numpy()
        order = np.argsort(-logits, axis=1, kind="stable")
        ranked = Slate(np.take_along_axis(items, order, 1), np.take_along_axis(logits, order, 1))
        final = self.reranker(ranked, self.catalogue, users, n=top_n or self.top_n)
        return {"retrieval": retrieval, "ranked": ranked, "final": final}


def _stacked(lat: np.ndarray | None, lon: np.ndarray | None) -> np.ndarray | None:
    """(n, 2) float64 of two (n,) columns, or None when they are None."""
    return None if lat is None else np.stack([lat, lon], axis=1)
