"""Synthetic places on a map (restaurants and destinations) visited by users who live in one city
and travel to others, with planted, recoverable structure.

``generate_places`` returns canonical ``Tables`` (see ``tables.py``) whose structure is known:

- **A map.** ``num_cities`` cities: city 0 (the home city, centred on ``center``) and trip cities
  at random bearings ``TRIP_DISTANCE_KM`` away. A share ``home_share`` of the places lie in the home
  city, the rest equally in the trip cities; in each city places cluster around ``DISTRICTS`` district
  centres (spread ``CITY_SPREAD_KM`` around the city centre, places ``DISTRICT_SPREAD_KM`` around
  theirs). Every user lives in the home city, near a district (``HOME_SPREAD_KM``).
- **Places.** One of ``CATEGORIES`` each (uniformly), a ``price_level`` 1-4 around the category's
  typical level, the coordinates ``lat`` / ``lon`` (degrees) and their geohash cells ``geohash4`` /
  ``geohash5`` / ``geohash6`` (about 39 x 20 km, 4.9 x 4.9 km, 1.2 x 0.6 km), the ``city``
  (``"city0"``...) and ``genres`` = ``[category]`` (so the genre-based parts of the funnel, the
  ranker's genre overlap, MMR, the genre cap and intra-list diversity, work on places as they are).
- **Where a user is.** A user's events come in segments of geometric length (mean
  ``mean_segment_length``); a segment is a trip with probability ``trip_share`` (to a trip city drawn
  uniformly), else a stay at home. The user is, for the whole segment, ``HOME_JITTER_KM`` around
  home, or ``TRIP_SPREAD_KM`` around the trip city's centre (the hotel). The interactions record that
  location context: ``lat``, ``lon``, its ``geohash5`` and ``trip`` (1 on a trip, else 0).
- **Choosing a place.** An event picks place i with probability proportional to
  ``exp(taste[c, category_i] + log popularity_i + appeal_i - sensitivity_c * (price_level_i - 1)
  - distance_km(where the user is, i) / distance_scale_km)``, c the user's taste cluster (uniform
  over ``num_clusters``): ``taste`` is N(0, ``TASTE_SIGMA``) per (cluster, category); popularity is
  ``rank ** -zipf_exponent`` of a random permutation; appeal is N(0, ``APPEAL_SIGMA``); the price
  sensitivities of the clusters are evenly spaced in ``SENSITIVITY_RANGE`` (random order).
  Each (user, place) pair occurs at most once, like ratings (the protocol excludes seen items, so a
  repeat could never be hit): a repeat is redrawn from the same distribution without the places the
  user already holds. Most visits are hence within a few km of where the user is; heavy users move
  further out once they have visited their neighbourhood.
- **Activity and time.** Every user has at least ``MIN_EVENTS`` events, the rest spread by lognormal
  weights (capped at ``num_places // 4`` per user), so the total is exactly ``num_interactions``.
  Gaps are lognormal: a median of ``HOME_GAP_MEDIAN_S`` at home, ``TRIP_GAP_MEDIAN_S`` between visits
  of a trip, plus ``TRAVEL_GAP_MIN_S`` when a segment starts; a timeline starts at a random time so
  it ends before ``T_END`` (compressed when longer than the window). ``ts`` is int64 unix seconds in
  [``T_START``, ``T_END``); the interactions table is in global time order, ties in user order.
- **Ratings.** float32 whole stars 1-5: higher for the user's taste and the place's appeal, plus noise.

**Answer keys**, the planted truth, kept in the tables for evaluation and never features
(``ANSWER_KEY_COLUMNS``): ``users.cluster``, ``users.price_sensitivity`` (of the user's cluster),
``users.taste`` (the cluster's taste, a list of floats in ``CATEGORIES`` order), ``items.popularity``
(the planted weight) and ``items.appeal``. ``features=auto`` skips the names listed in
``recfunnel.data.synthetic.ANSWER_KEY_COLUMNS``, which holds all of these.

Ids are 0-based and equal to the dense index. The same arguments give identical tables: the map,
catalogue and users come from one stream, the segments and times from a second, the choices of
places from a third, the ratings from a fourth (``SeedSequence(seed).spawn(4)``). No users x places array is built: places are
scored per segment, ``CHUNK_CELLS`` (segment, place) pairs at a time, so the cost grows with segments
x places: about 6 s for the default size (100,000 visits, 2,000 places) on a busy 2-core machine.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from recfunnel.data.synthetic import MIN_EVENTS, user_activity
from recfunnel.data.tables import Tables
from recfunnel.utils.arrays import concat_ranges
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.geo import geohash, offset_km, pairwise_km

__all__ = ["ANSWER_KEY_COLUMNS", "CATEGORIES", "generate_places"]

# category -> typical price level (1 cheap .. 4 expensive)
CATEGORIES = {"cafe": 1.5, "bakery": 1.2, "street_food": 1.3, "pizzeria": 2.0, "bistro": 2.5, "brasserie": 2.6,
              "sushi": 2.8, "fine_dining": 3.8, "wine_bar": 2.7, "museum": 2.0, "park": 1.0, "market": 1.3}
ANSWER_KEY_COLUMNS = ("users.cluster", "users.price_sensitivity", "users.taste", "items.popularity", "items.appeal")

TRIP_DISTANCE_KM = (150.0, 800.0)  # trip cities lie this far from the home city's centre
DISTRICTS = 8  # district centres per city
CITY_SPREAD_KM = 4.0  # sigma of the districts around the city centre (trip cities: half)
DISTRICT_SPREAD_KM = 0.8  # sigma of places around their district
HOME_SPREAD_KM = 1.5  # sigma of homes around their district
HOME_JITTER_KM = 1.0  # sigma of where a user is, per home segment, around home
TRIP_SPREAD_KM = 1.5  # sigma of where a user stays on a trip, around the city's centre
PRICE_SIGMA = 0.6  # sigma of a place's price level around its category's typical level
TASTE_SIGMA = 1.2  # sigma of a cluster's log-preference for a category
APPEAL_SIGMA = 0.5  # sigma of a place's appeal
SENSITIVITY_RANGE = (0.0, 1.2)  # price sensitivities of the clusters (per level above 1), evenly spaced

T_START = 1_546_300_800  # 2019-01-01 00:00:00 UTC
T_END = 1_704_067_200  # 2024-01-01 00:00:00 UTC
HOME_GAP_MEDIAN_S = 2 * 86_400.0  # between visits at home
TRIP_GAP_MEDIAN_S = 4 * 3600.0  # between visits on a trip
TRAVEL_GAP_MIN_S = 86_400  # added when a segment (a trip, or the return home) starts
MIN_GAP_S = 1800
CHUNK_CELLS = 4_000_000  # (segment, place) scores held at once


def generate_places(num_users: int, num_places: int, num_interactions: int, *, seed: int = 0,
                    num_clusters: int = 6, num_cities: int = 5, home_share: float = 0.6, trip_share: float = 0.2,
                    mean_segment_length: float = 4.0, distance_scale_km: float = 1.0, zipf_exponent: float = 0.7,
                    center: tuple[float, float] = (48.8566, 2.3522), progress: bool = False) -> Tables:
    """Canonical tables with the planted structure of the module docstring.

    Returns ``Tables`` with
    interactions (num_interactions rows): user_id int64, item_id int64, ts int64, rating float32, and
    the event's location context lat float64, lon float64, geohash5 str, trip int64 (0/1);
    users (num_users rows): user_id, home_lat, home_lon (float64), home_geohash4/5/6 (str), and the
    answer keys cluster int64, price_sensitivity float64, taste (list[float], ``CATEGORIES`` order);
    items (num_places rows): item_id, lat, lon (float64), geohash4/5/6 (str), city (str), category (str),
    price_level int64 (1-4), genres (list[str]: [category]), and the answer keys popularity, appeal
    (float64); edges None.

    ``progress`` is accepted for the data config's sake and ignored (generation takes seconds).
    Raises ``RecfunnelError`` naming the argument for arguments that cannot give such tables.
    """
    _check_args(num_users, num_places, num_interactions, seed, num_clusters, num_cities, home_share, trip_share,
                mean_segment_length, distance_scale_km, zipf_exponent, center)
    static_seed, segment_seed, choice_seed, rating_seed = np.random.SeedSequence(seed).spawn(4)
    rng = np.random.default_rng(static_seed)
    cities = _cities(rng, num_cities, center)
    districts = _districts(rng, cities)
    items = _places(rng, cities, districts, num_places, home_share)
    popularity = (rng.permutation(num_places) + 1.0) ** -zipf_exponent
    appeal = APPEAL_SIGMA * rng.standard_normal(num_places)
    taste = TASTE_SIGMA * rng.standard_normal((num_clusters, len(CATEGORIES)))
    sensitivity = rng.permutation(np.linspace(*SENSITIVITY_RANGE, num_clusters))
    cluster = rng.integers(num_clusters, size=num_users)
    users = _users(rng, districts[0], num_users, cluster, sensitivity, taste)
    counts = user_activity(rng, num_users, num_interactions, max(MIN_EVENTS, num_places // 4))

    category = items["category"].map({c: k for k, c in enumerate(CATEGORIES)}).to_numpy()
    base = (taste[:, category] + np.log(popularity) + appeal
            - sensitivity[:, None] * (items["price_level"].to_numpy() - 1.0))  # (K, I) utility before distance
    seg = _segments(np.random.default_rng(segment_seed), counts, cities, users, mean_segment_length, trip_share)
    user = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    item = _choose(np.random.default_rng(choice_seed), user, seg, cluster, base, items, distance_scale_km)

    rng = np.random.default_rng(rating_seed)
    stars = 3.2 + 0.6 * taste[cluster[user], category[item]] + appeal[item] + 0.8 * rng.standard_normal(len(item))
    columns = {"user_id": user, "item_id": item, "ts": seg["ts"],
               "rating": np.clip(np.rint(stars), 1, 5).astype(np.float32),
               "lat": seg["lat"], "lon": seg["lon"], "geohash5": geohash(seg["lat"], seg["lon"], 5),
               "trip": seg["trip"].astype(np.int64)}
    order = np.argsort(columns["ts"], kind="stable")
    interactions = pd.DataFrame({k: v[order] for k, v in columns.items()})
    items["popularity"], items["appeal"] = popularity, appeal
    return Tables(interactions=interactions, users=users, items=items, edges=None)


# -- the map ---------------------------------------------------------------------------------------
def _cities(rng: np.random.Generator, num_cities: int, center: tuple[float, float]) -> np.ndarray:
    """(num_cities, 2) city centres (lat, lon); city 0 is ``center``, the others ``TRIP_DISTANCE_KM`` away."""
    bearing = rng.uniform(0.0, 2.0 * np.pi, num_cities - 1)
    dist = rng.uniform(*TRIP_DISTANCE_KM, num_cities - 1)
    lat, lon = offset_km(center[0], center[1], dist * np.sin(bearing), dist * np.cos(bearing))
    return np.r_[[center], np.stack([lat, lon], axis=1)].reshape(num_cities, 2)


def _around(rng: np.random.Generator, lat: np.ndarray, lon: np.ndarray, sigma_km: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """Points (n,) at N(0, sigma_km) east and north of the points (n,)."""
    east, north = sigma_km * rng.standard_normal((2, len(lat)))
    return offset_km(lat, lon, east, north)


def _districts(rng: np.random.Generator, cities: np.ndarray) -> np.ndarray:
    """(num_cities, DISTRICTS, 2) district centres; trip cities are half as spread as the home city."""
    spread = np.where(np.arange(len(cities)) == 0, CITY_SPREAD_KM, CITY_SPREAD_KM / 2)
    lat = np.repeat(cities[:, 0], DISTRICTS)
    lon = np.repeat(cities[:, 1], DISTRICTS)
    east, north = np.repeat(spread, DISTRICTS) * rng.standard_normal((2, len(lat)))
    return np.stack(offset_km(lat, lon, east, north), axis=1).reshape(len(cities), DISTRICTS, 2)


def _places(rng: np.random.Generator, cities: np.ndarray, districts: np.ndarray, num_places: int,
            home_share: float) -> pd.DataFrame:
    """Items table without the answer keys; districts (num_cities, DISTRICTS, 2) from ``_districts``."""
    num_cities = len(cities)
    home = num_places if num_cities == 1 else int(round(home_share * num_places))
    city = np.r_[np.zeros(home, np.int64), np.arange(num_places - home) % max(num_cities - 1, 1) + 1]
    city = rng.permutation(city)
    d = districts[city, rng.integers(DISTRICTS, size=num_places)]  # (I, 2)
    lat, lon = _around(rng, d[:, 0], d[:, 1], DISTRICT_SPREAD_KM)
    names = list(CATEGORIES)
    cat = rng.integers(len(names), size=num_places)
    typical = np.array(list(CATEGORIES.values()))[cat]
    price = np.clip(np.rint(typical + PRICE_SIGMA * rng.standard_normal(num_places)), 1, 4).astype(np.int64)
    category = np.array(names, dtype=object)[cat]
    items = pd.DataFrame({"item_id": np.arange(num_places, dtype=np.int64), "lat": lat, "lon": lon,
                          **{f"geohash{p}": geohash(lat, lon, p) for p in (4, 5, 6)},
                          "city": np.char.add("city", city.astype(str)), "category": category,
                          "price_level": price, "genres": [[c] for c in category]})
    return items


def _users(rng: np.random.Generator, districts: np.ndarray, num_users: int, cluster: np.ndarray,
           sensitivity: np.ndarray, taste: np.ndarray) -> pd.DataFrame:
    """Users table: homes near one of the home city's ``districts`` (DISTRICTS, 2), and the answer keys."""
    d = districts[rng.integers(DISTRICTS, size=num_users)]
    lat, lon = _around(rng, d[:, 0], d[:, 1], HOME_SPREAD_KM)
    return pd.DataFrame({"user_id": np.arange(num_users, dtype=np.int64), "home_lat": lat, "home_lon": lon,
                         **{f"home_geohash{p}": geohash(lat, lon, p) for p in (4, 5, 6)},
                         "cluster": cluster, "price_sensitivity": sensitivity[cluster],
                         "taste": taste[cluster].tolist()})


# -- where and when -------------------------------------------------------------------------------
def _segments(rng: np.random.Generator, counts: np.ndarray, cities: np.ndarray, users: pd.DataFrame,
              mean_length: float, trip_share: float) -> dict[str, np.ndarray]:
    """Per event (E,), grouped by user in time order: ``segment`` (index of its segment), ``trip`` (bool),
    ``lat`` / ``lon`` (where the user is) and ``ts`` (int64); per segment (S,): ``seg_user``,
    ``seg_lat``, ``seg_lon``."""
    num_events = int(counts.sum())
    starts = np.cumsum(counts) - counts  # (U,) first event of each user
    new = rng.random(num_events) < 1.0 / mean_length
    new[starts] = True
    segment = np.cumsum(new) - 1  # (E,)
    num_segments = int(segment[-1]) + 1
    seg_user = np.repeat(np.arange(len(counts)), counts)[new]  # (S,)
    trip = (rng.random(num_segments) < trip_share) & (len(cities) > 1)
    dest = rng.integers(1, max(len(cities), 2), size=num_segments)
    home_lat, home_lon = offset_km(users["home_lat"].to_numpy()[seg_user], users["home_lon"].to_numpy()[seg_user],
                                   *(HOME_JITTER_KM * rng.standard_normal((2, num_segments))))
    trip_lat, trip_lon = offset_km(cities[dest % len(cities), 0], cities[dest % len(cities), 1],
                                   *(TRIP_SPREAD_KM * rng.standard_normal((2, num_segments))))
    lat, lon = np.where(trip, trip_lat, home_lat), np.where(trip, trip_lon, home_lon)
    ts = _times(rng, counts, starts, new, trip[segment])
    return {"segment": segment, "trip": trip[segment], "lat": lat[segment], "lon": lon[segment], "ts": ts,
            "seg_user": seg_user, "seg_lat": lat, "seg_lon": lon}


def _times(rng: np.random.Generator, counts: np.ndarray, starts: np.ndarray, new: np.ndarray,
           trip: np.ndarray) -> np.ndarray:
    """(E,) int64 timestamps of events grouped by user: lognormal gaps (longer at home, a travel gap
    when a segment starts), each timeline placed at random within [T_START, T_END)."""
    normal = rng.standard_normal(len(new))
    median = np.where(trip, TRIP_GAP_MEDIAN_S, HOME_GAP_MEDIAN_S)
    gap = np.maximum(np.rint(median * np.exp(0.8 * normal)), MIN_GAP_S) + np.where(new, TRAVEL_GAP_MIN_S, 0)
    gap[starts] = 0.0
    offset = np.cumsum(gap)
    offset -= np.repeat(offset[starts], counts)
    span = offset[starts + counts - 1]  # (U,) seconds from first to last event
    window = T_END - 1 - T_START
    shrink = np.minimum(1.0, window / np.maximum(span, 1.0))  # only timelines longer than the window
    offset = np.floor(offset * np.repeat(shrink, counts))
    first = T_START + np.floor(rng.random(len(counts)) * (window - np.minimum(span, window)))
    return (np.repeat(first, counts) + offset).astype(np.int64)


# -- which place ----------------------------------------------------------------------------------
def _choose(rng: np.random.Generator, user: np.ndarray, seg: dict[str, np.ndarray], cluster: np.ndarray,
            base: np.ndarray, items: pd.DataFrame, scale_km: float) -> np.ndarray:
    """(E,) place of each event: drawn from its segment's distribution; a place the user already holds
    is redrawn, without the user's places, until every (user, place) pair is unique."""
    chooser = _Chooser(seg, cluster, base, items, scale_km)
    item = chooser.draw(np.arange(len(user)), rng.random(len(user)), None)
    num_places = base.shape[1]
    while True:
        key = user * num_places + item
        order = np.argsort(key, kind="stable")
        repeat = np.zeros(len(key), bool)
        repeat[order[1:]] = key[order[1:]] == key[order[:-1]]  # later slots of a pair (stable: first kept)
        if not repeat.any():
            return item
        sorted_key = key[order]
        held = sorted_key[~repeat[order]]  # sorted (user, place) keys kept
        pending = np.flatnonzero(repeat)
        item[pending] = chooser.draw(pending, rng.random(len(pending)), held)


class _Chooser:
    """Draws places for events from their segment's distribution (module docstring), optionally
    without the places each event's user already holds. Scores are computed once per segment.

    seg: ``_segments``' arrays; cluster (U,); base (K, I) utility before distance.
    """

    def __init__(self, seg: dict[str, np.ndarray], cluster: np.ndarray, base: np.ndarray,
                 items: pd.DataFrame, scale_km: float):
        self.seg, self.cluster, self.base, self.scale_km = seg, cluster, base, scale_km
        self.item_lat, self.item_lon = items["lat"].to_numpy(), items["lon"].to_numpy()

    def draw(self, events: np.ndarray, uniform: np.ndarray, held: np.ndarray | None) -> np.ndarray:
        """(n,) places for ``events`` (n,, increasing) from ``uniform`` (n,); ``held``: sorted
        user * I + place keys to leave out (None: none)."""
        num_places = self.base.shape[1]
        seg = self.seg["segment"][events]  # non-decreasing: events are in order and segments follow them
        first = np.r_[True, seg[1:] != seg[:-1]]
        segs, row = seg[first], np.cumsum(first) - 1  # events of one segment share a row of scores
        out = np.empty(len(events), np.int64)
        step = max(1, CHUNK_CELLS // num_places)
        for lo in range(0, len(segs), step):
            s = segs[lo:lo + step]
            weight = self._weights(s)  # (n_s, I)
            if held is not None:
                self._leave_out(weight, self.seg["seg_user"][s], held, num_places)
            mine = np.flatnonzero((row >= lo) & (row < lo + len(s)))
            out[mine] = _inverse_cdf(weight, row[mine] - lo, uniform[mine])
        return out

    def _weights(self, s: np.ndarray) -> np.ndarray:
        """(n, I) unnormalised choice weights in segments ``s`` (n,), each row's largest 1."""
        seg = self.seg
        d = pairwise_km(seg["seg_lat"][s], seg["seg_lon"][s], self.item_lat, self.item_lon)
        logit = self.base[self.cluster[seg["seg_user"][s]]]
        logit -= d / self.scale_km
        logit -= logit.max(axis=1, keepdims=True)
        return np.exp(logit, out=logit)

    @staticmethod
    def _leave_out(weight: np.ndarray, user: np.ndarray, held: np.ndarray, num_places: int) -> None:
        """Zero, in place, the weight of each row's user's held places; a row left with no weight
        (a user who holds every place with any weight) gets uniform weight on the places they lack."""
        lo = np.searchsorted(held, user * num_places)
        hi = np.searchsorted(held, (user + 1) * num_places)
        rows = np.repeat(np.arange(len(user)), hi - lo)
        cols = held[concat_ranges(lo, hi)] % num_places
        weight[rows, cols] = 0.0
        empty = weight.sum(axis=1) <= 0
        if empty.any():
            weight[empty] = 1.0
            weight[rows[empty[rows]], cols[empty[rows]]] = 0.0


def _inverse_cdf(weight: np.ndarray, row: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """(n,) columns: entry j drawn from row ``row[j]`` of ``weight`` (R, I) (non-negative, positive sums)
    by ``uniform[j]``. Row r's normalised CDF is shifted into (r, r + 1], so one searchsorted serves all."""
    num_rows, num_cols = weight.shape
    cdf = np.cumsum(weight, axis=1)
    cdf /= cdf[:, -1:]
    cdf += np.arange(num_rows)[:, None]
    cdf[:, -1] = np.arange(1, num_rows + 1)
    pos = np.searchsorted(cdf.ravel(), row + uniform, side="right") - row * num_cols
    return np.clip(pos, 0, num_cols - 1)


# -- arguments -------------------------------------------------------------------------------------
def _check_args(num_users, num_places, num_interactions, seed, num_clusters, num_cities, home_share, trip_share,
                mean_segment_length, distance_scale_km, zipf_exponent, center) -> None:
    def integer(name: str, value, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise RecfunnelError(f"generate_places: {name} must be an integer >= {low}, got {value!r}")

    def real(name: str, value, low: float, high: float = np.inf, open_low: bool = False) -> None:
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and low <= value <= high
        if not ok or (open_low and value == low):
            bounds = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
            raise RecfunnelError(f"generate_places: {name} must be a number in {bounds}, got {value!r}")

    for name, value in (("num_users", num_users), ("num_places", num_places), ("num_interactions", num_interactions),
                        ("num_clusters", num_clusters), ("num_cities", num_cities)):
        integer(name, value, 1)
    integer("seed", seed, 0)
    real("home_share", home_share, 0.0, 1.0, open_low=True)
    real("trip_share", trip_share, 0.0, 1.0)
    real("mean_segment_length", mean_segment_length, 1.0)
    real("distance_scale_km", distance_scale_km, 0.0, open_low=True)
    real("zipf_exponent", zipf_exponent, 0.0, 10.0)
    if (not hasattr(center, "__len__") or len(center) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in center)
            or not (abs(center[0]) <= 80.0 and abs(center[1]) <= 180.0)):
        raise RecfunnelError(f"generate_places: center must be [lat, lon] in degrees with |lat| <= 80, got {center!r}")
    if trip_share > 0 and num_cities < 2:
        raise RecfunnelError(f"generate_places: trip_share={trip_share} needs num_cities >= 2 (trips go to other "
                             f"cities), got num_cities={num_cities}; raise num_cities or set trip_share=0")
    cap = max(MIN_EVENTS, num_places // 4)
    if num_places < 4 * MIN_EVENTS:
        raise RecfunnelError(f"generate_places: num_places={num_places} is too small: each user needs {MIN_EVENTS} "
                             f"distinct places and visits at most a quarter of them; use num_places >= {4 * MIN_EVENTS}")
    if num_interactions < MIN_EVENTS * num_users:
        raise RecfunnelError(
            f"generate_places: num_interactions={num_interactions} is below {MIN_EVENTS} per user "
            f"({MIN_EVENTS * num_users} for num_users={num_users}); raise num_interactions or lower num_users")
    if num_interactions > num_users * cap:
        raise RecfunnelError(
            f"generate_places: num_interactions={num_interactions} is too dense for num_users={num_users} and "
            f"num_places={num_places}: a user visits at most a quarter of the places, so at most {num_users * cap} events")
