"""Re-ranking: the last funnel step, as small numpy stages applied in order to candidate slates.

A ``Slate`` holds U users' candidate lists, best first: ``items`` (U, K) int64 dense item indices
with -1 at empty slots (always after the real ones) and ``scores`` (U, K) float32 with -inf there.
Each ``Stage`` maps ``(slate, catalogue, seen) -> slate`` with the same shape, keeps empty slots at
the end and never duplicates an item. All stages are vectorised over users (loops run over list
positions at most) and accept U = 0 and K = 0.

Stages:

- ``ExcludeSeen()``: drops items the user has already interacted with; later candidates move up.
- ``FreshnessBoost(weight, reference_year)``: adds ``weight * freshness`` (freshness in [0, 1] from
  release year) to the scores and re-sorts.
- ``MMR(lam, similarity, n)``: maximal marginal relevance (Carbonell & Goldstein 1998) re-ordering
  of the first n candidates, trading relevance against similarity to items already chosen.
- ``GenreCap(max_per_genre)``: at most ``max_per_genre`` items of any genre, in list order; the
  items it skips go to the end of the list rather than being dropped.
- ``DistanceRerank(boost, scale_km, max_km)``: favours places near where the user is: adds
  ``boost * exp(-d / scale_km)`` (d the distance in km) and re-sorts, then moves candidates farther
  than ``max_km`` to the end. It reads the items' coordinates (``ItemCatalogue.lat`` / ``lon``) and
  each user's location (``Seen.location``).

Per-user inputs: ``Seen`` holds what the request knows of each of the U users: the items they have
already interacted with and, optionally, where they are (``location`` (U, 2) lat / lon in degrees).

Score semantics. Stages that *remove* items (ExcludeSeen) or *re-score* them (FreshnessBoost, the
boost of DistanceRerank) keep each item's own score. Stages that only *re-order* (MMR, GenreCap, the
distance cut of DistanceRerank) keep the score column per position: position p keeps the input's
p-th score and the items move past it. The list therefore stays monotone non-increasing in the
scorer's units (logits of the ranker, or retrieval scores), but after MMR, GenreCap or a distance cut
a score belongs to a rank, not to the item now sitting there.

``Reranker`` chains stages and cuts the result to the top n; ``build_reranker(cfg)`` builds one from
the ``rerank`` Hydra config group (``configs/rerank/``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.geo import haversine_km

__all__ = [
    "MMR",
    "DistanceRerank",
    "ExcludeSeen",
    "FreshnessBoost",
    "GenreCap",
    "ItemCatalogue",
    "Reranker",
    "Seen",
    "Slate",
    "Stage",
    "build_reranker",
]


# --------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True, eq=False)
class ItemCatalogue:
    """What re-ranking stages know about items (dense item indices 0..I-1)."""

    genres: np.ndarray                        # (I, G) bool multi-hot
    year: np.ndarray                          # (I,) float64 release year, NaN = unknown
    embeddings: np.ndarray | None = None      # (I, D) float32 item vectors (the retriever's), or None
    lat: np.ndarray | None = None             # (I,) float64 latitude in degrees, NaN = unknown; None = no coordinates
    lon: np.ndarray | None = None             # (I,) float64 longitude in degrees; given together with lat

    def __post_init__(self):
        genres = np.asarray(self.genres, dtype=bool)
        year = np.asarray(self.year, dtype=np.float64)
        if genres.ndim != 2:
            raise RecfunnelError(f"ItemCatalogue.genres must be (I, G) multi-hot, got shape {genres.shape}")
        if year.shape != (genres.shape[0],):
            raise RecfunnelError(f"ItemCatalogue.year must be ({genres.shape[0]},) like genres' rows, "
                                 f"got shape {year.shape}")
        object.__setattr__(self, "genres", genres)
        object.__setattr__(self, "year", year)
        if self.embeddings is not None:
            emb = np.asarray(self.embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != genres.shape[0]:
                raise RecfunnelError(f"ItemCatalogue.embeddings must be ({genres.shape[0]}, D), "
                                     f"got shape {emb.shape}")
            object.__setattr__(self, "embeddings", emb)
        if (self.lat is None) != (self.lon is None):
            raise RecfunnelError("ItemCatalogue.lat and ItemCatalogue.lon must be given together (item coordinates)")
        for name in ("lat", "lon") if self.lat is not None else ():
            coord = np.asarray(getattr(self, name), dtype=np.float64)
            if coord.shape != (genres.shape[0],):
                raise RecfunnelError(f"ItemCatalogue.{name} must be ({genres.shape[0]},) like genres' rows, "
                                     f"got shape {coord.shape}")
            object.__setattr__(self, name, coord)

    @property
    def num_items(self) -> int:
        return int(self.genres.shape[0])


@dataclasses.dataclass(eq=False)
class Slate:
    """Candidate lists of U users, best first."""

    items: np.ndarray   # (U, K) int64 item indices; -1 = empty slot (always after the real ones)
    scores: np.ndarray  # (U, K) float32; -inf at empty slots

    def __post_init__(self):
        self.items = np.asarray(self.items, dtype=np.int64)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        if self.items.ndim != 2 or self.items.shape != self.scores.shape:
            raise RecfunnelError(f"Slate.items and Slate.scores must both be (U, K), got shapes "
                                 f"{self.items.shape} and {self.scores.shape}")

    @property
    def real(self) -> np.ndarray:
        """(U, K) bool: which slots hold an item."""
        return self.items >= 0


@dataclasses.dataclass(frozen=True, eq=False)
class Seen:
    """What a request knows of each of U users: the items they have already interacted with, CSR (user u's
    items are indices[indptr[u]:indptr[u+1]]), and optionally where they are."""

    indptr: np.ndarray   # (U+1,) int64
    indices: np.ndarray  # (nnz,) int64
    location: np.ndarray | None = None  # (U, 2) float64 (lat, lon) in degrees, NaN = unknown; None = not given

    def __post_init__(self):
        indptr = np.asarray(self.indptr, dtype=np.int64)
        indices = np.asarray(self.indices, dtype=np.int64)
        if (indptr.ndim != 1 or indptr.size == 0 or indptr[0] != 0 or indptr[-1] != indices.size
                or np.any(np.diff(indptr) < 0)):
            raise RecfunnelError("Seen.indptr must be a non-decreasing (U+1,) array from 0 to "
                                 f"len(indices)={indices.size}")
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)
        if self.location is not None:
            location = np.asarray(self.location, dtype=np.float64)
            if location.shape != (indptr.size - 1, 2):
                raise RecfunnelError(f"Seen.location must be ({indptr.size - 1}, 2) (lat, lon) per user, "
                                     f"got shape {location.shape}")
            object.__setattr__(self, "location", location)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]], location: np.ndarray | None = None) -> Seen:
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = (np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if len(lists)
                   else np.zeros(0, np.int64))
        return cls(indptr, indices.astype(np.int64), location)

    @property
    def num_users(self) -> int:
        return int(self.indptr.size - 1)


# --------------------------------------------------------------------------------------- helpers


def _take(slate: Slate, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items and scores of each row re-arranged by the (U, K) column permutation ``order``."""
    return (np.take_along_axis(slate.items, order, axis=1),
            np.take_along_axis(slate.scores, order, axis=1))


def _stable_order(key: np.ndarray) -> np.ndarray:
    """(U, K) permutation sorting each row by ``key`` ascending; ties keep their list order."""
    return np.argsort(key, axis=1, kind="stable")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); zero rows stay zero, so their cosine with anything is 0."""
    x = x.astype(np.float64, copy=False)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _check_number(stage: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
                  integer: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value) and (not integer or float(value).is_integer())
    ok = ok and (lo is None or value >= lo) and (hi is None or value <= hi)
    if not ok:
        rng = ("an integer" if integer else "a finite number") + (
            f" in [{lo}, {hi}]" if lo is not None and hi is not None
            else f" >= {lo}" if lo is not None else "")
        raise RecfunnelError(f"{stage}: {name} must be {rng}, got {value!r}")


# --------------------------------------------------------------------------------------- stages


class Stage:
    """One re-ranking step: ``(slate, catalogue, seen) -> slate`` of the same (U, K) shape.

    Subclasses take their parameters as constructor keyword arguments (so Hydra's ``_target_``
    can build them) and validate them there.
    """

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> Slate:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class ExcludeSeen(Stage):
    """Drops each user's already-seen items; later candidates move up, freed slots become -1/-inf."""

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> Slate:
        if seen is None:
            raise RecfunnelError("ExcludeSeen needs the users' seen items (seen=Seen(...)); pass them "
                                 "to the reranker or remove the stage (~rerank.stages.exclude_seen)")
        U = slate.items.shape[0]
        if seen.num_users != U:
            raise RecfunnelError(f"ExcludeSeen: seen has {seen.num_users} users, the slate {U}")
        real = slate.real
        # One integer key per (user, item) pair; membership of the slate's pairs in the seen pairs.
        span = int(max(slate.items.max(initial=-1), seen.indices.max(initial=-1))) + 1
        seen_users = np.repeat(np.arange(U, dtype=np.int64), np.diff(seen.indptr))
        seen_keys = seen_users * span + seen.indices
        slate_keys = np.arange(U, dtype=np.int64)[:, None] * span + slate.items
        keep = real & ~np.isin(slate_keys, seen_keys)
        items, scores = _take(slate, _stable_order(~keep))
        kept = np.sort(keep, axis=1)[:, ::-1]   # True for the first keep.sum() slots of each row
        return Slate(np.where(kept, items, -1), np.where(kept, scores, -np.inf).astype(np.float32))


class FreshnessBoost(Stage):
    """Adds ``weight * freshness`` to each candidate's score, then re-sorts (ties keep list order).

    freshness = clip((year - min_year) / (reference_year - min_year), 0, 1) with min_year the
    catalogue's earliest known year and reference_year (default: its latest) the year that counts as
    fully fresh; unknown years get 0. If every known year equals min_year (and no reference_year is
    given) known items get 1. ``weight`` is in the units of the incoming scores (ranker logits or
    retrieval scores): weight 0.5 lets a brand-new item overtake a 0.5-logit better old one.
    weight 0 is an exact no-op; a negative weight favours older items.
    """

    def __init__(self, weight: float, reference_year: float | None = None):
        _check_number("FreshnessBoost", "weight", weight)
        if reference_year is not None:
            _check_number("FreshnessBoost", "reference_year", reference_year)
        self.weight = float(weight)
        self.reference_year = None if reference_year is None else float(reference_year)

    def freshness(self, catalogue: ItemCatalogue) -> np.ndarray:
        """(I,) float64 freshness of every catalogue item, in [0, 1]."""
        year = catalogue.year
        known = np.isfinite(year)
        if not known.any():
            return np.zeros(year.shape)
        lo = float(year[known].min())
        hi = float(year[known].max()) if self.reference_year is None else self.reference_year
        if hi < lo or (hi == lo and self.reference_year is not None):
            raise RecfunnelError(f"FreshnessBoost: reference_year={self.reference_year} must be after the "
                                 f"catalogue's earliest release year {lo:g}")
        if hi == lo:
            return known.astype(np.float64)
        return np.where(known, np.clip((year - lo) / (hi - lo), 0.0, 1.0), 0.0)

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> Slate:
        if self.weight == 0.0 or slate.items.size == 0:
            return Slate(slate.items.copy(), slate.scores.copy())
        fresh = self.freshness(catalogue)[np.maximum(slate.items, 0)]
        boosted = np.where(slate.real, slate.scores + self.weight * fresh, -np.inf).astype(np.float32)
        # Empty slots (-inf) sort last; a real item scored -inf ties with them but stays ahead, since
        # the sort is stable and empty slots already come after the real ones.
        order = _stable_order(-boosted)
        return Slate(*_take(Slate(slate.items, boosted), order))


class MMR(Stage):
    """Maximal marginal relevance re-ordering of the first ``n`` candidates (all K by default).

    Greedy (Carbonell & Goldstein 1998): repeatedly pick the remaining candidate maximising
    ``lam * rel - (1 - lam) * max(sim to the items already picked)``, where rel is the score
    min-max normalised per user over the real candidates in the first n (all 1 if they tie).
    The first pick is the most relevant (nothing picked yet, so no penalty); ties go to the
    earlier candidate. lam = 1 returns the input unchanged; lam = 0 is pure diversity after the first.

    similarity: "genre" = cosine of the genre multi-hot vectors (|A∩B| / sqrt(|A||B|); items with no
    genre have similarity 0 with everything); "embedding" = cosine of ``catalogue.embeddings``.
    Scores are kept per position (see the module docstring): the output stays monotone.
    """

    SIMILARITIES = ("genre", "embedding")

    def __init__(self, lam: float, similarity: str = "genre", n: int | None = None):
        _check_number("MMR", "lam", lam, 0.0, 1.0)
        if similarity not in self.SIMILARITIES:
            raise RecfunnelError(f"MMR: similarity={similarity!r} is not one of {list(self.SIMILARITIES)}")
        if n is not None:
            _check_number("MMR", "n", n, lo=1, integer=True)
        self.lam = float(lam)
        self.similarity = similarity
        self.n = None if n is None else int(n)

    def _features(self, catalogue: ItemCatalogue) -> np.ndarray:
        if self.similarity == "genre":
            return catalogue.genres
        if catalogue.embeddings is None:
            raise RecfunnelError("MMR: similarity='embedding' needs ItemCatalogue.embeddings (the "
                                 "retriever's item vectors); pass them or use similarity='genre'")
        return catalogue.embeddings

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> Slate:
        feats = self._features(catalogue)   # checked even when there is nothing to re-order
        U, K = slate.items.shape
        m = K if self.n is None else min(self.n, K)
        if self.lam == 1.0 or m < 2 or U == 0:
            return Slate(slate.items.copy(), slate.scores.copy())
        head = slate.items[:, :m]
        available = head >= 0
        x = _unit_rows(feats[np.maximum(head, 0)])                     # (U, m, F)
        s = slate.scores[:, :m].astype(np.float64)
        finite = available & np.isfinite(s)   # a real item scored -inf just gets rel 0
        lo = np.min(np.where(finite, s, np.inf), axis=1, keepdims=True)
        hi = np.max(np.where(finite, s, -np.inf), axis=1, keepdims=True)
        spread = hi > lo
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(spread, (s - lo) / np.where(spread, hi - lo, 1.0), 1.0)
        rel = np.where(finite, np.clip(rel, 0.0, 1.0), 0.0)

        rows = np.arange(U)
        picked = np.full((U, m), -1, dtype=np.int64)
        max_sim = np.zeros((U, m))   # unused at step 0: the first pick has no penalty
        for t in range(int(available.sum(1).max())):
            obj = self.lam * rel - (1.0 - self.lam) * max_sim if t else rel
            j = np.argmax(np.where(available, obj, -np.inf), axis=1)   # first max = earlier candidate
            has = available[rows, j]
            picked[has, t] = head[has, j[has]]
            available[rows[has], j[has]] = False
            sim = np.einsum("umf,uf->um", x, x[rows, j])
            max_sim = sim if t == 0 else np.maximum(max_sim, sim)
        items = slate.items.copy()
        items[:, :m] = picked
        return Slate(items, slate.scores.copy())


class GenreCap(Stage):
    """At most ``max_per_genre`` items of any one genre, filled greedily in list order.

    An item is skipped if any of its genres already has ``max_per_genre`` items selected; skipped
    items are not dropped but moved, in their original order, behind the selected ones (so the list
    length is kept and a top-n cut shows the capped list first). Items without genres are never
    capped. Scores are kept per position (see the module docstring).
    """

    def __init__(self, max_per_genre: int):
        _check_number("GenreCap", "max_per_genre", max_per_genre, lo=1, integer=True)
        self.max_per_genre = int(max_per_genre)

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> Slate:
        U, K = slate.items.shape
        genres = catalogue.genres
        real = slate.real
        counts = np.zeros((U, genres.shape[1]), dtype=np.int64)
        # 0 = selected, 1 = skipped, 2 = empty slot; a stable sort on it gives the output order.
        status = np.where(real, 0, 2).astype(np.int8)
        slate_genres = genres[np.maximum(slate.items, 0)] & real[:, :, None]   # (U, K, G)
        for k in range(K):
            g = slate_genres[:, k]
            full = (g & (counts >= self.max_per_genre)).any(1)
            status[full, k] = 1
            counts += g & ~full[:, None]
        items, _ = _take(slate, _stable_order(status))
        return Slate(items, slate.scores.copy())


class DistanceRerank(Stage):
    """Favours candidates near where the user is: a distance boost, then a distance cut.

    d is the great-circle distance (km) from user u's location (``seen.location[u]``) to the item
    (``catalogue.lat`` / ``lon``).

    1. Boost: ``score += boost * exp(-d / scale_km)``, then re-sort (ties keep list order); each item
       keeps its own, boosted, score. ``boost`` is in the units of the incoming scores (ranker logits
       or retrieval scores): boost 1 lets a place next door overtake a 1-logit better one far away; a
       negative boost favours distant items.
    2. Cut (``max_km`` not None): candidates farther than ``max_km`` move, in their order, behind the
       others. They are not dropped: the list keeps its length, so a top-n cut shows the near ones
       first and is filled from the far ones only when too few are near. This step keeps scores per
       position (see the module docstring), so the list stays monotone.

    An unknown distance (the user's location or the item's coordinates NaN) gets no boost and is never
    cut: a user without a known location keeps their list as it is. ``boost=0`` with ``max_km=None``
    is an exact no-op.
    """

    def __init__(self, boost: float = 0.0, scale_km: float = 2.0, max_km: float | None = None):
        _check_number("DistanceRerank", "boost", boost)
        if not (isinstance(scale_km, (int, float, np.integer, np.floating)) and not isinstance(scale_km, bool)
                and math.isfinite(scale_km) and scale_km > 0):
            raise RecfunnelError(f"DistanceRerank: scale_km must be a finite number > 0, got {scale_km!r}")
        if max_km is not None:
            _check_number("DistanceRerank", "max_km", max_km, lo=0.0)
        self.boost = float(boost)
        self.scale_km = float(scale_km)
        self.max_km = None if max_km is None else float(max_km)

    def distances(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> np.ndarray:
        """(U, K) float64 km from each user's location to each candidate; NaN at empty slots and
        wherever a location or the item's coordinates are unknown."""
        if catalogue.lat is None:
            raise RecfunnelError("DistanceRerank needs the items' coordinates (ItemCatalogue.lat / lon, from the items "
                                 "table's lat and lon columns, as data=synthetic_places has them); use a dataset with "
                                 "them or remove the stage (~rerank.stages.geo)")
        U = slate.items.shape[0]
        if seen is None or seen.location is None:
            raise RecfunnelError("DistanceRerank needs each user's location (Seen.location, (U, 2) lat / lon: the "
                                 "event's lat and lon columns of the interactions, the users' home_lat / home_lon, or "
                                 "the request's location=(lat, lon)); pass them or remove the stage (~rerank.stages.geo)")
        if seen.num_users != U:
            raise RecfunnelError(f"DistanceRerank: seen has {seen.num_users} users, the slate {U}")
        items = np.maximum(slate.items, 0)
        d = haversine_km(seen.location[:, :1], seen.location[:, 1:], catalogue.lat[items], catalogue.lon[items])
        return np.where(slate.real, d, np.nan)

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None) -> Slate:
        d = self.distances(slate, catalogue, seen)   # checked even when there is nothing to do
        items, scores = slate.items.copy(), slate.scores.copy()
        if self.boost != 0.0 and items.size:
            bonus = np.where(np.isnan(d), 0.0, self.boost * np.exp(-np.nan_to_num(d) / self.scale_km))
            boosted = np.where(slate.real, scores + bonus, -np.inf).astype(np.float32)
            # as in FreshnessBoost: empty slots (-inf) stay after a real item scored -inf (stable sort)
            order = _stable_order(-boosted)
            items, scores = _take(Slate(items, boosted), order)
            d = np.take_along_axis(d, order, axis=1)
        if self.max_km is not None and items.size:
            far = d > self.max_km   # NaN (unknown, empty) compares False
            status = np.where(items >= 0, far.astype(np.int8), 2)   # 0 near, 1 far, 2 empty slot
            items = np.take_along_axis(items, _stable_order(status), axis=1)
        return Slate(items, scores)


# --------------------------------------------------------------------------------------- chain


class Reranker:
    """Applies stages in order, then keeps each user's top ``n``.

    ``depth``: the stages see only the top ``max(depth, n)`` candidates (None = all K); a shallow
    depth bounds the cost of the per-position loops of MMR and the genre cap.

    ``stages`` is a name -> stage mapping (as built from the config), a sequence of stages, or
    None / empty for the identity.
    """

    def __init__(self, stages: Mapping[str, Stage] | Sequence[Stage] | None, depth: int | None = None):
        if depth is not None:
            _check_number("Reranker", "depth", depth, lo=1, integer=True)
        self.depth = None if depth is None else int(depth)
        if stages is None:
            pairs: list[tuple[str, Any]] = []
        elif isinstance(stages, Mapping):
            pairs = [(str(k), v) for k, v in stages.items()]
        else:
            pairs = [(type(s).__name__, s) for s in stages]
        for name, stage in pairs:
            if not callable(stage):
                raise RecfunnelError(f"rerank stage {name!r} is not a Stage (got {type(stage).__name__}); "
                                     "give it a _target_ such as recfunnel.serving.rerank.MMR")
        self._names = [name for name, _ in pairs]
        self.stages = [stage for _, stage in pairs]

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"Reranker({dict(zip(self._names, self.stages))})"

    def __call__(self, slate: Slate, catalogue: ItemCatalogue, seen: Seen | None = None,
                 n: int = 10) -> Slate:
        _check_number("Reranker", "n", n, lo=0, integer=True)
        n = int(n)
        if slate.items.size and slate.items.max() >= catalogue.num_items:
            raise RecfunnelError(f"Reranker: slate holds item {int(slate.items.max())} but the catalogue "
                                 f"has {catalogue.num_items} items")
        if self.depth is not None and self.stages:  # stages re-order only the top `depth` candidates
            slate = Slate(slate.items[:, :max(self.depth, n)], slate.scores[:, :max(self.depth, n)])
        for stage in self.stages:
            slate = stage(slate, catalogue, seen)
        U, K = slate.items.shape
        items = np.full((U, n), -1, dtype=np.int64)
        scores = np.full((U, n), -np.inf, dtype=np.float32)
        items[:, :min(n, K)] = slate.items[:, :n]
        scores[:, :min(n, K)] = slate.scores[:, :n]
        return Slate(items, scores)


def build_reranker(cfg: Any) -> Reranker:
    """Builds the ``rerank`` config group (``configs/rerank/*.yaml``): ``cfg.stages`` name -> node.

    ``cfg`` may be a DictConfig, a plain mapping, or None (identity). A stage removed with
    ``~rerank.stages.NAME`` is simply absent; one set to null is skipped too.
    """
    if cfg is None:
        return Reranker(None)
    import hydra.utils  # only here: the stages themselves are plain numpy

    stages_cfg = cfg.get("stages") if hasattr(cfg, "get") else getattr(cfg, "stages", None)
    depth = cfg.get("depth") if hasattr(cfg, "get") else getattr(cfg, "depth", None)
    stages: dict[str, Stage] = {}
    for name, node in (stages_cfg or {}).items():
        if node is None:
            continue
        stage = hydra.utils.instantiate(node)
        if not isinstance(stage, Stage):
            raise RecfunnelError(f"rerank.stages.{name} built a {type(stage).__name__}, not a "
                                 "recfunnel.serving.rerank.Stage; check its _target_")
        stages[str(name)] = stage
    return Reranker(stages, depth)
