"""Places on a map: geohash and haversine against known values, the places generator (contract,
determinism, the planted structure shows), its configs, and the geo re-ranking stage on hand-made slates."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recfunnel.data import places, synthetic
from recfunnel.data.dataset import SplitData
from recfunnel.data.places import CATEGORIES, T_END, T_START, generate_places
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema
from recfunnel.serving.pipeline import item_catalogue
from recfunnel.serving.rerank import DistanceRerank, ItemCatalogue, Reranker, Seen, Slate, build_reranker
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.geo import EARTH_RADIUS_KM, geohash, haversine_km, offset_km, pairwise_km

ROOT = Path(__file__).resolve().parents[1]
NEG = -np.inf
USERS, PLACES, EVENTS = 600, 400, 15_000
KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0


@pytest.fixture(scope="module")
def tables():
    return generate_places(USERS, PLACES, EVENTS, seed=0)


def visit_km(t) -> np.ndarray:
    """(E,) km from where the user was to the place visited."""
    it, ev = t.items, t.interactions
    return haversine_km(ev["lat"], ev["lon"], it["lat"].to_numpy()[ev["item_id"]], it["lon"].to_numpy()[ev["item_id"]])


# ----------------------------------------------------------------------------- geo helpers


def test_geohash_matches_known_cells():
    np.testing.assert_array_equal(geohash([42.6, 57.64911, 48.8566, 0.0], [-5.6, 10.40744, 2.3522, 0.0], 5),
                                  ["ezs42", "u4pru", "u09tv", "s0000"])
    assert geohash([57.64911], [10.40744], 11)[0] == "u4pruydqqvj"   # Wikipedia's example
    np.testing.assert_array_equal(geohash([90.0, -90.0], [180.0, -180.0], 3), ["zzz", "000"])  # edges
    lat, lon = np.random.default_rng(0).uniform(-90, 90, 50), np.random.default_rng(1).uniform(-180, 180, 50)
    fine = geohash(lat, lon, 8)
    for p in (1, 4, 6):   # a coarser cell is a prefix of a finer one
        np.testing.assert_array_equal(geohash(lat, lon, p), [g[:p] for g in fine])


@pytest.mark.parametrize("lat, lon, precision, match", [
    ([np.nan], [0.0], 5, "point 0"), ([91.0], [0.0], 5, "lat must be in"), ([0.0], [181.0], 5, r"lon 181.0\) is not a valid location"),
    ([0.0], [0.0], 0, "precision"), ([0.0], [0.0], 13, "precision"), ([0.0], [0.0], True, "precision"),
    ([0.0, 1.0], [0.0], 5, "one shape"),
])
def test_geohash_rejects_bad_points_and_precisions(lat, lon, precision, match):
    with pytest.raises(RecfunnelError, match=match):
        geohash(lat, lon, precision)


def test_haversine_matches_known_distances():
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=0.5)   # Paris - London
    assert haversine_km(40.7128, -74.0060, 51.5074, -0.1278) == pytest.approx(5570, abs=5)    # New York - London
    assert haversine_km(0, 0, 0, 90) == pytest.approx(math.pi * EARTH_RADIUS_KM / 2)
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM)             # antipodes
    assert haversine_km(10, 20, 11, 20) == pytest.approx(KM_PER_DEGREE)                       # 1 degree north
    assert haversine_km(48.0, 2.0, 48.0, 2.0) == 0.0
    assert np.isnan(haversine_km(np.nan, 0, 0, 0))
    d = haversine_km(np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 4)), np.arange(12.0).reshape(3, 4))
    assert d.shape == (3, 4)
    np.testing.assert_allclose(d, np.arange(12.0).reshape(3, 4) * KM_PER_DEGREE)


def test_pairwise_km_and_offset_km_agree_with_haversine():
    rng = np.random.default_rng(0)
    a, b = rng.uniform([40, -5], [55, 15], (20, 2)), rng.uniform([40, -5], [55, 15], (30, 2))
    a[1] = a[0] + [1e-5, 0]                                          # about a metre apart
    expected = haversine_km(a[:, :1], a[:, 1:], b[:, 0], b[:, 1])
    np.testing.assert_allclose(pairwise_km(a[:, 0], a[:, 1], b[:, 0], b[:, 1]), expected, atol=1e-6)
    assert pairwise_km(a[:2, 0], a[:2, 1], a[:2, 0], a[:2, 1])[0, 1] == pytest.approx(1e-5 * KM_PER_DEGREE, abs=1e-3)
    lat, lon = offset_km(48.85, 2.35, [3.0, 0.0], [4.0, -2.0])        # 5 km, 2 km
    np.testing.assert_allclose(haversine_km(48.85, 2.35, lat, lon), [5.0, 2.0], rtol=1e-3)


# ----------------------------------------------------------------------------- the generator


def test_tables_hold_the_documented_columns(tables):
    it, us, ev = tables.items, tables.users, tables.interactions
    assert list(ev.columns) == ["user_id", "item_id", "ts", "rating", "lat", "lon", "geohash5", "trip"]
    assert list(us.columns) == ["user_id", "home_lat", "home_lon", "home_geohash4", "home_geohash5", "home_geohash6",
                                "cluster", "price_sensitivity", "taste"]
    assert list(it.columns) == ["item_id", "lat", "lon", "geohash4", "geohash5", "geohash6", "city", "category",
                                "price_level", "genres", "popularity", "appeal"]
    assert len(ev) == EVENTS and len(us) == USERS and len(it) == PLACES and tables.edges is None
    np.testing.assert_array_equal(us["user_id"], np.arange(USERS))
    np.testing.assert_array_equal(it["item_id"], np.arange(PLACES))
    assert ev["ts"].is_monotonic_increasing and T_START <= ev["ts"].min() and ev["ts"].max() < T_END
    assert np.bincount(ev["user_id"], minlength=USERS).min() >= places.MIN_EVENTS
    assert not ev.duplicated(["user_id", "item_id"]).any()                   # each place once per user
    assert set(ev["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and ev["rating"].dtype == np.float32
    assert set(ev["trip"].unique()) == {0, 1}
    assert set(it["price_level"].unique()) <= {1, 2, 3, 4} and set(it["category"]) <= set(CATEGORIES)
    assert all(g == [c] for g, c in zip(it["genres"], it["category"]))
    for df, prefix, lat, lon in ((it, "", "lat", "lon"), (us, "home_", "home_lat", "home_lon")):
        for p in (4, 5, 6):
            np.testing.assert_array_equal(df[f"{prefix}geohash{p}"], geohash(df[lat], df[lon], p))
    np.testing.assert_array_equal(ev["geohash5"], geohash(ev["lat"], ev["lon"], 5))
    assert all(len(t) == len(CATEGORIES) for t in us["taste"])
    tables.validated("places")   # what every source's tables pass before they are cached


def test_same_seed_same_tables_other_seed_other_tables(tables):
    again = generate_places(USERS, PLACES, EVENTS, seed=0)
    for name in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(again, name), getattr(tables, name))
    other = generate_places(USERS, PLACES, EVENTS, seed=1)
    assert not other.interactions["item_id"].equals(tables.interactions["item_id"])


def test_most_visits_are_within_a_few_km_of_where_the_user_is(tables):
    d = visit_km(tables)
    assert np.median(d) < 3.0 and np.quantile(d, 0.9) < 8.0
    # ... and far closer than the same places are to a random user of another event
    shuffled = np.random.default_rng(0).permutation(len(d))
    ev, it = tables.interactions, tables.items
    random_km = haversine_km(ev["lat"].to_numpy()[shuffled], ev["lon"].to_numpy()[shuffled],
                             it["lat"].to_numpy()[ev["item_id"]], it["lon"].to_numpy()[ev["item_id"]])
    assert np.median(random_km) > 3 * np.median(d)


def test_trips_put_events_in_other_cities(tables):
    ev, it, us = tables.interactions, tables.items, tables.users
    trip = ev["trip"].to_numpy() == 1
    assert 0.12 < trip.mean() < 0.28                                 # trip_share 0.2 of segments
    home = us.set_index("user_id").loc[ev["user_id"], ["home_lat", "home_lon"]].to_numpy()
    from_home = haversine_km(home[:, 0], home[:, 1], ev["lat"], ev["lon"])
    assert (from_home[trip] > 100).all() and np.quantile(from_home[~trip], 0.99) < 5
    city = it["city"].to_numpy()[ev["item_id"]]
    assert (city[~trip] == "city0").mean() > 0.99 and (city[trip] != "city0").mean() > 0.99
    assert set(city[trip]) == {"city1", "city2", "city3", "city4"}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two (n,) arrays without ties."""
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def test_clusters_over_visit_the_categories_they_prefer_and_price_sensitive_ones_pay_less(tables):
    ev, it, us = tables.interactions, tables.items, tables.users
    names = list(CATEGORIES)
    category = it["category"].map(names.index).to_numpy()[ev["item_id"]]
    cluster = us["cluster"].to_numpy()[ev["user_id"]]
    clusters = np.unique(cluster)
    taste = np.array([us["taste"][us["cluster"] == c].iloc[0] for c in clusters])            # (K, C) planted
    share = np.array([np.bincount(category[cluster == c], minlength=len(names)) / np.sum(cluster == c)
                      for c in clusters])                                                    # (K, C) observed
    # relative to the other clusters, each cluster's visits follow its taste (its price sensitivity
    # blurs expensive favourites, hence ranks and a median rather than every favourite)
    for k in range(len(clusters)):
        assert spearman(taste[k] - taste.mean(0), share[k] / share.mean(0)) > 0.6
    favourite = taste.argmax(axis=1)
    lift = [share[k, f] / np.delete(share[:, f], k).mean() for k, f in enumerate(favourite)]
    assert np.median(lift) > 1.5, lift
    price = it["price_level"].to_numpy()[ev["item_id"]]
    sensitivity = us["price_sensitivity"].to_numpy()[ev["user_id"]]
    assert price[sensitivity == sensitivity.max()].mean() < price[sensitivity == sensitivity.min()].mean() - 0.2


def test_popular_places_are_visited_more(tables):
    visits = np.bincount(tables.interactions["item_id"], minlength=PLACES)
    popularity = tables.items["popularity"].to_numpy()
    top, bottom = popularity >= np.quantile(popularity, 0.9), popularity <= np.quantile(popularity, 0.5)
    assert visits[top].mean() > 3 * visits[bottom].mean()


def test_answer_keys_are_in_the_tables_and_skipped_by_features_auto(tables):
    for key in places.ANSWER_KEY_COLUMNS:
        table, column = key.split(".")
        assert column in getattr(tables, table).columns, key
    missing = [k for k in places.ANSWER_KEY_COLUMNS if k not in synthetic.ANSWER_KEY_COLUMNS]
    assert not missing, f"features=auto would read the planted truth {missing}: add it to synthetic.ANSWER_KEY_COLUMNS"


def test_more_events_than_places_near_home_still_gives_unique_pairs():
    t = generate_places(5, 40, 50, seed=3, num_cities=2)             # 10 events per user, 40 places
    assert not t.interactions.duplicated(["user_id", "item_id"]).any() and len(t.interactions) == 50


@pytest.mark.parametrize("kwargs, match", [
    ({"num_users": 0}, "num_users must be an integer >= 1"),
    ({"num_places": 2.5}, "num_places must be an integer"),
    ({"num_places": 8}, "num_places=8 is too small"),
    ({"num_interactions": 10}, "num_interactions=10 is below 3 per user"),
    ({"num_interactions": 100_000}, "too dense"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"num_cities": 1}, "trip_share=0.2 needs num_cities >= 2"),
    ({"home_share": 0.0}, "home_share must be a number in"),
    ({"trip_share": 1.5}, "trip_share must be a number in"),
    ({"distance_scale_km": 0}, "distance_scale_km must be a number in"),
    ({"mean_segment_length": 0.5}, "mean_segment_length must be"),
    ({"center": [95.0, 0.0]}, "center must be"),
    ({"center": "paris"}, "center must be"),
])
def test_bad_generator_arguments_give_one_clear_error(kwargs, match):
    args = {"num_users": 20, "num_places": 100, "num_interactions": 200, **kwargs}
    with pytest.raises(RecfunnelError, match=match):
        generate_places(args.pop("num_users"), args.pop("num_places"), args.pop("num_interactions"), **args)


def test_data_config_builds_the_generator_and_the_schemas_fit_its_tables():
    cfg = OmegaConf.load(ROOT / "configs" / "data" / "synthetic_places.yaml")
    cfg.source.num_users, cfg.source.num_places, cfg.source.num_interactions = 50, 60, 400
    t = hydra.utils.instantiate(cfg.source)
    assert len(t.interactions) == 400 and len(t.items) == 60
    data = SplitData.from_tables(t.validated("places"))
    for name in ("places_ids", "places_geo", "synthetic_places"):
        schema = FeatureSchema.from_yaml(ROOT / "configs" / "features" / f"{name}.yaml")
        pipe = FeaturePipeline(schema, data, where=name)
        rows = np.arange(5)
        assert pipe.query(rows, "user").sparse is not None and pipe.items(np.arange(5), 0) is not None


# ----------------------------------------------------------------------------- the geo stage

# On the equator a degree of longitude is KM_PER_DEGREE km: items 0-4 lie 0, 1, 5, 30 and 100 km east
# of the origin, item 5 has unknown coordinates.
KM = [0.0, 1.0, 5.0, 30.0, 100.0]


def geo_catalogue(km=KM, unknown=1):
    lon = np.r_[np.asarray(km) / KM_PER_DEGREE, np.full(unknown, np.nan)]
    n = len(lon)
    return ItemCatalogue(np.zeros((n, 1), bool), np.full(n, np.nan), lat=np.zeros(n), lon=lon)


def at(*locations):
    """Seen with no seen items and the given (lat, lon) per user."""
    return Seen.from_lists([[] for _ in locations], location=np.array(locations, dtype=float).reshape(-1, 2))


def slate(items, scores):
    return Slate(np.array(items, dtype=np.int64), np.array(scores, dtype=np.float32))


def test_distance_cut_moves_far_items_to_the_end_and_keeps_scores_per_position():
    s = slate([[3, 0, 4, 2, -1], [4, 3, -1, -1, -1]], [[5, 4, 3, 2, NEG], [2, 1, NEG, NEG, NEG]])
    out = DistanceRerank(max_km=10)(s, geo_catalogue(), at((0, 0), (0, 0)))
    np.testing.assert_array_equal(out.items, [[0, 2, 3, 4, -1], [4, 3, -1, -1, -1]])   # all far: order kept
    np.testing.assert_array_equal(out.scores, s.scores)
    out = DistanceRerank(max_km=40)(s, geo_catalogue(), at((0, 0), (0, 100 / KM_PER_DEGREE)))  # user 2 at item 4
    np.testing.assert_array_equal(out.items, [[3, 0, 2, 4, -1], [4, 3, -1, -1, -1]])
    np.testing.assert_array_equal(s.items[0], [3, 0, 4, 2, -1])                          # input untouched


def test_distance_boost_adds_the_computed_bonus_and_resorts():
    s = slate([[3, 1, 0, -1]], [[1.0, 0.5, 0.0, NEG]])
    out = DistanceRerank(boost=2.0, scale_km=1.0)(s, geo_catalogue(), at((0, 0)))
    # 1 + 2 e^-30, 0.5 + 2 e^-1, 0 + 2 e^0
    np.testing.assert_array_equal(out.items, [[0, 1, 3, -1]])
    np.testing.assert_allclose(out.scores, [[2.0, 0.5 + 2 * math.exp(-1), 1.0, NEG]], rtol=1e-5)
    # a negative boost favours the distant
    out = DistanceRerank(boost=-2.0, scale_km=1.0)(s, geo_catalogue(), at((0, 0)))
    np.testing.assert_array_equal(out.items, [[3, 1, 0, -1]])


def test_distance_boost_then_cut():
    s = slate([[4, 3, 2, 0]], [[9.0, 8.0, 1.0, 0.0]])
    out = DistanceRerank(boost=10.0, scale_km=5.0, max_km=50)(s, geo_catalogue(), at((0, 0)))
    # boosted 9 + 10e^-20, 8 + 10e^-6, 1 + 10e^-1, 0 + 10 -> [0, 4, 3, 2]; then 4 (100 km) moves last
    np.testing.assert_array_equal(out.items, [[0, 3, 2, 4]])
    np.testing.assert_allclose(out.scores, [[10.0, 9.0, 8.0 + 10 * math.exp(-6), 1 + 10 * math.exp(-1)]], rtol=1e-5)


def test_unknown_locations_and_coordinates_are_left_alone():
    s = slate([[4, 5, 0, -1], [4, 5, 0, -1]], [[3, 2, 1, NEG], [3, 2, 1, NEG]])
    out = DistanceRerank(boost=5.0, max_km=10)(s, geo_catalogue(), at((np.nan, np.nan), (0, 0)))
    np.testing.assert_array_equal(out.items[0], s.items[0])            # user without a location: as is
    np.testing.assert_array_equal(out.scores[0], s.scores[0])
    # user at the origin: item 0 boosted by 5 to the top, item 5 (no coordinates) neither boosted nor cut
    np.testing.assert_array_equal(out.items[1], [0, 5, 4, -1])


def test_noop_and_empty_slates():
    s = slate([[2, 0, 1]], [[3, 2, 1]])
    out = DistanceRerank()(s, geo_catalogue(), at((0, 0)))             # boost 0, no cut
    np.testing.assert_array_equal(out.items, s.items)
    np.testing.assert_array_equal(out.scores, s.scores)
    stage = DistanceRerank(boost=1.0, max_km=3)
    for shape in ((0, 4), (2, 0), (0, 0)):
        empty = Slate(np.full(shape, -1), np.full(shape, NEG))
        out = stage(empty, geo_catalogue(), at(*[(0, 0)] * shape[0]))
        assert out.items.shape == shape and out.scores.shape == shape


def test_random_slates_keep_the_invariants():
    rng = np.random.default_rng(0)
    num_items, U, K = 60, 40, 25
    lat, lon = rng.uniform(48.7, 49.0, num_items), rng.uniform(2.2, 2.5, num_items)
    lat[:3] = np.nan
    cat = ItemCatalogue(np.zeros((num_items, 1), bool), np.full(num_items, np.nan), lat=lat, lon=lon)
    items = np.stack([rng.permutation(num_items)[:K] for _ in range(U)])
    length = rng.integers(0, K + 1, U)
    empty = np.arange(K) >= length[:, None]
    scores = -np.sort(-rng.normal(size=(U, K)), axis=1)
    s = Slate(np.where(empty, -1, items), np.where(empty, NEG, scores))
    where = np.c_[rng.uniform(48.7, 49.0, U), rng.uniform(2.2, 2.5, U)]
    where[0] = np.nan
    for stage in (DistanceRerank(boost=1.5, scale_km=3), DistanceRerank(max_km=10),
                  DistanceRerank(boost=0.5, scale_km=1, max_km=12)):
        out = stage(s, cat, Seen.from_lists([[]] * U, location=where))
        real = out.items >= 0
        assert (real == ~empty).all()                                   # same lengths, empty slots at the end
        for u in range(U):
            assert sorted(out.items[u][real[u]]) == sorted(s.items[u][~empty[u]])   # same items, no duplicates
        assert (np.diff(np.where(real, out.scores, -1e9), axis=1) <= 1e-6).all()   # still monotone
        assert np.isneginf(out.scores[~real]).all()


def test_geo_config_and_reranker_depth():
    reranker = build_reranker(OmegaConf.load(ROOT / "configs" / "rerank" / "geo.yaml"))
    assert reranker.names == ["exclude_seen", "geo"] and isinstance(reranker.stages[1], DistanceRerank)
    s = slate([[4, 3, 2, 1, 0]], [[5, 4, 3, 2, 1]])
    seen = Seen.from_lists([[1]], location=np.array([[0.0, 0.0]]))
    out = reranker(s, geo_catalogue(), seen, n=3)
    # 1 seen; boost e^(-km/2): 0 -> 1 + 1, 2 -> 3 + e^-2.5; 4 (100 km) and 3 (30 km) cut behind, in order
    np.testing.assert_array_equal(out.items, [[2, 0, 4]])
    shallow = Reranker(dict(zip(reranker.names, reranker.stages)), depth=2)(s, geo_catalogue(), seen, n=2)
    np.testing.assert_array_equal(shallow.items, [[4, 3]])             # only the top 2 seen: both far, order kept


def test_item_catalogue_reads_coordinates_when_the_table_has_them(tables):
    genres = np.ones((PLACES, 1), np.float32)
    cat = item_catalogue(tables.items, genres, None)
    np.testing.assert_array_equal(cat.lat, tables.items["lat"])
    np.testing.assert_array_equal(cat.lon, tables.items["lon"])
    assert item_catalogue(tables.items.drop(columns="lon"), genres, None).lat is None


@pytest.mark.parametrize("kwargs, match", [
    ({"scale_km": 0}, "scale_km must be a finite number > 0"), ({"scale_km": -1.0}, "scale_km must be a finite number > 0"),
    ({"max_km": -1}, "max_km must be"), ({"max_km": float("nan")}, "max_km"),
    ({"boost": float("inf")}, "boost must be a finite number"), ({"boost": "1"}, "boost"),
])
def test_bad_stage_parameters_give_one_clear_error(kwargs, match):
    with pytest.raises(RecfunnelError, match=f"DistanceRerank: {match}"):
        DistanceRerank(**kwargs)


def test_bad_stage_inputs_give_one_clear_error():
    s, stage = slate([[0, 1]], [[2.0, 1.0]]), DistanceRerank(boost=1.0)
    plain = ItemCatalogue(np.zeros((6, 1), bool), np.full(6, np.nan))
    with pytest.raises(RecfunnelError, match=r"DistanceRerank needs the items' coordinates \(ItemCatalogue.lat"):
        stage(s, plain, at((0, 0)))
    with pytest.raises(RecfunnelError, match=r"DistanceRerank needs each user's location \(Seen.location"):
        stage(s, geo_catalogue(), None)
    with pytest.raises(RecfunnelError, match=r"Seen.location"):
        stage(s, geo_catalogue(), Seen.from_lists([[]]))
    with pytest.raises(RecfunnelError, match="seen has 2 users, the slate 1"):
        stage(s, geo_catalogue(), at((0, 0), (0, 0)))
    with pytest.raises(RecfunnelError, match=r"Seen.location must be \(1, 2\)"):
        Seen.from_lists([[]], location=np.zeros((1, 3)))
    with pytest.raises(RecfunnelError, match="lat and ItemCatalogue.lon must be given together"):
        ItemCatalogue(np.zeros((2, 1), bool), np.zeros(2), lat=np.zeros(2))
    with pytest.raises(RecfunnelError, match=r"ItemCatalogue.lon must be \(2,\)"):
        ItemCatalogue(np.zeros((2, 1), bool), np.zeros(2), lat=np.zeros(2), lon=np.zeros(3))


def test_the_ranker_reads_the_distance_from_where_the_user_is_to_each_candidate():
    """log(1 + km) and its bucket from the event's own location for rows of the data; from the user's
    home for a request; from where the request says it is when it says so."""
    from recfunnel.data.ranking import DISTANCE_BUCKETS_KM, DISTANCE_FEATURES, ranker_inputs

    data = SplitData.from_tables(generate_places(60, 40, 600, seed=1, num_cities=2))
    vectors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    ids = {"name": "ids", "features": {"item_id": {"tower": "item", "kind": "categorical", "source": "item_id"}}}
    _, pipe, _, pairs = ranker_inputs(data, vectors, ids)
    d = len(DISTANCE_FEATURES)
    assert pairs.names[-d:] == DISTANCE_FEATURES and DISTANCE_FEATURES[1:3] == ("km<0.5", "km<1")
    it, us = data.tables.items, data.tables.users

    def expect(lat, lon) -> np.ndarray:  # (B, 5, d): log1p(km), then the one-hot bucket
        km = haversine_km(np.asarray(lat)[:, None], np.asarray(lon)[:, None],
                          it["lat"].to_numpy()[None, :5], it["lon"].to_numpy()[None, :5])
        onehot = np.eye(len(DISTANCE_BUCKETS_KM) + 1)[np.digitize(km, DISTANCE_BUCKETS_KM)]
        return np.concatenate([np.log1p(km)[..., None], onehot], axis=2)

    rows, cands = np.arange(6), np.tile(np.arange(5), (6, 1))
    got = pairs(pipe, rows, vectors[:6], cands, cands)[:, :, -d:]
    ev = data.tables.interactions
    want = expect(ev["lat"].to_numpy()[rows], ev["lon"].to_numpy()[rows])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert (got[:, :, 1:].sum(2) == 1).all() and len(np.unique(got[:, :, 1:].argmax(2))) > 1  # one bucket each, several used
    view, row = pipe.for_request(4, np.zeros(0, np.int64), np.zeros(0, np.int64), int(data.ts.max()) + 1)
    served = pairs(view, np.array([row]), vectors[:1], cands[:1], cands[:1])[:, :, -d:]
    np.testing.assert_allclose(served, expect([us["home_lat"][4]], [us["home_lon"][4]]), rtol=1e-5)
    told = pairs(view, np.array([row]), vectors[:1], cands[:1], cands[:1], here=np.array([[48.0, 2.0]]))[:, :, -d:]
    np.testing.assert_allclose(told, expect([48.0], [2.0]), rtol=1e-5)
    unknown = pairs(view, np.array([row]), vectors[:1], cands[:1], cands[:1], here=np.array([[np.nan, np.nan]]))
    assert (unknown[:, :, -d:] == 0).all()  # no location: no distance, no bucket
    _, _, _, plain = ranker_inputs(SplitData.from_tables(synthetic.generate_synthetic(30, 40, 600, seed=0)), vectors, ids)
    assert "log_distance_km" not in plain.names  # no coordinates, no such feature


def test_the_places_funnel_experiment_composes_geo_features_and_geo_reranking():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "configs"), version_base="1.3"):
        cfg = compose("funnel", overrides=["experiment=places_funnel"])
    assert cfg.features.name == "places_geo" and cfg.features.features.here_cell5.source == "context.geohash5"
    assert cfg.rerank.stages.geo._target_.endswith("DistanceRerank")
    assert "data=synthetic_places" in cfg.retriever.overrides and "features=places_geo" in cfg.retriever.overrides
