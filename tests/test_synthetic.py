"""The synthetic generator: contract of the tables, determinism, and that the planted structure shows."""

import numpy as np
import pandas as pd
import pytest

from recfunnel.data import synthetic
from recfunnel.data.synthetic import GENRES, OCCUPATIONS, T_END, T_START, generate_synthetic
from recfunnel.utils.errors import RecfunnelError

USERS, ITEMS, EVENTS = 2000, 1000, 50_000


@pytest.fixture(scope="module")
def tables():
    return generate_synthetic(USERS, ITEMS, EVENTS, seed=0)


def _assert_same(a, b):
    for name in ("interactions", "users", "items", "edges"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def _mode_share(labels, groups) -> float:
    """Share of rows whose label is the most common one of their group."""
    df = pd.DataFrame({"group": groups, "label": labels})
    return df.groupby("group")["label"].agg(lambda s: s.value_counts().iloc[0]).sum() / len(df)


def test_same_seed_same_tables_other_seed_differs(tables):
    _assert_same(tables, generate_synthetic(USERS, ITEMS, EVENTS, seed=0))
    other = generate_synthetic(USERS, ITEMS, EVENTS, seed=1)
    assert not other.interactions.equals(tables.interactions)
    assert not other.users.equals(tables.users)


def test_chunk_size_changes_nothing(tables, monkeypatch):
    chunk_events = []
    chunk_fn = synthetic._chunk_events

    def counting(rngs, counts, *args):
        chunk_events.append(int(counts.sum()))
        return chunk_fn(rngs, counts, *args)

    monkeypatch.setattr(synthetic, "_chunk_events", counting)
    chunked = generate_synthetic(USERS, ITEMS, EVENTS, seed=0, chunk_size=3000)
    assert len(chunk_events) > 1 and sum(chunk_events) == EVENTS
    _assert_same(tables, chunked)


def test_columns_and_dtypes(tables):
    inter, users, items, edges = tables.interactions, tables.users, tables.items, tables.edges
    assert list(inter.columns) == ["user_id", "item_id", "ts", "rating"]
    assert [str(inter[c].dtype) for c in inter.columns] == ["int64", "int64", "int64", "float32"]
    assert inter["user_id"].between(0, USERS - 1).all() and inter["item_id"].between(0, ITEMS - 1).all()
    assert inter["ts"].is_monotonic_increasing  # a log: global time order
    assert inter["ts"].min() >= T_START and inter["ts"].max() < T_END
    assert set(np.unique(inter["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}

    assert list(users.columns[:5]) == ["user_id", "age", "gender", "occupation", "zip"]
    assert (users["user_id"] == np.arange(USERS)).all() and users["age"].dtype == np.int64
    assert users["age"].between(18, 70).all()
    assert set(users["gender"]) <= {"M", "F"} and set(users["occupation"]) <= set(OCCUPATIONS)
    assert users["zip"].str.fullmatch(r"\d{5}").all()

    assert list(items.columns[:4]) == ["item_id", "title", "year", "genres"]
    assert (items["item_id"] == np.arange(ITEMS)).all() and items["title"].iloc[123] == "item 123"
    assert items["year"].between(1950, 2020).all() and (items["year"] % 1 == 0).all()
    assert all(isinstance(g, list) and 1 <= len(g) <= 3 and len(set(g)) == len(g) and set(g) <= set(GENRES)
               for g in items["genres"])

    assert list(edges.columns) == ["src", "dst"] and edges.dtypes.eq(np.int64).all()
    assert not edges.duplicated().any() and (edges["src"] != edges["dst"]).all()
    reverse = edges.rename(columns={"src": "dst", "dst": "src"})[["src", "dst"]]
    pd.testing.assert_frame_equal(edges, reverse.sort_values(["src", "dst"], ignore_index=True))


def test_exact_count_three_per_user_distinct_items_skewed_activity(tables):
    inter = tables.interactions
    per_user = np.bincount(inter["user_id"], minlength=USERS)
    assert len(inter) == EVENTS and per_user.min() >= 3
    assert per_user.max() > 5 * np.median(per_user)
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_popularity_is_skewed(tables):
    counts = np.sort(np.bincount(tables.interactions["item_id"], minlength=ITEMS))[::-1]
    assert counts[: ITEMS // 10].sum() / EVENTS > 0.4


def test_events_and_ratings_follow_taste_cluster(tables):
    inter = tables.interactions
    user_cluster = tables.users["cluster"].to_numpy()[inter["user_id"]]
    item_cluster = tables.items["cluster"].to_numpy()[inter["item_id"]]
    own = user_cluster == item_cluster
    user_share = np.bincount(tables.users["cluster"]) / USERS
    item_share = np.bincount(tables.items["cluster"]) / ITEMS
    chance = float(user_share @ item_share)
    assert own.mean() > 0.5 and own.mean() > 3 * chance
    rating = inter["rating"].to_numpy()
    assert rating[own].mean() - rating[~own].mean() > 0.5


def test_side_information_follows_cluster(tables):
    users, items = tables.users, tables.items
    ages = users.groupby("cluster")["age"].mean()
    assert ages.max() - ages.min() > 10
    for labels in (users["occupation"], users["zip"].str[:2]):
        assert _mode_share(labels, users["cluster"]) > 2 * labels.value_counts().iloc[0] / len(labels)
    first_genre = items["genres"].str[0]
    assert _mode_share(first_genre, items["cluster"]) > 2 * first_genre.value_counts().iloc[0] / ITEMS
    years = items.groupby("cluster")["year"].mean()
    assert years.max() - years.min() > 10


def test_friends_share_clusters(tables):
    cluster = tables.users["cluster"].to_numpy()
    edges = tables.edges
    same = (cluster[edges["src"]] == cluster[edges["dst"]]).mean()
    rng = np.random.default_rng(0)
    a, b = rng.integers(USERS, size=(2, 100_000))
    random_same = (cluster[a] == cluster[b]).mean()
    assert 0.75 < same < 0.85 and random_same < 0.25
    friends = np.bincount(edges["src"], minlength=USERS)
    assert 9 < friends.mean() < 11


def test_sessions(tables):
    inter = tables.interactions.sort_values(["user_id", "ts"], kind="stable")
    user = inter["user_id"].to_numpy()
    gap = np.diff(inter["ts"].to_numpy())[user[1:] == user[:-1]]
    within, between = gap < 30 * 60, gap > 60 * 60
    assert (within | between).mean() > 0.95
    assert 0.8 < within.mean() < 0.95  # mean session length 8: about 1 gap in 8 starts a session
    assert 3 * 3600 < np.median(gap[between]) < 5 * 86_400
    assert np.median(gap[within]) < 5 * 60


def test_smallest_tables_and_no_graph():
    tiny = generate_synthetic(5, 10, 15, num_clusters=10, friends_per_user=0)
    assert (np.bincount(tiny.interactions["user_id"]) == 3).all()
    assert tiny.edges.empty and list(tiny.edges.columns) == ["src", "dst"]


def test_progress_bar(capsys):
    generate_synthetic(20, 10, 100, progress=True)
    assert "synthetic events" in capsys.readouterr().err


@pytest.mark.parametrize("args, kwargs, message", [
    ((0, 100, 1000), {}, "num_users"),
    ((100, -5, 1000), {}, "num_items"),
    ((100, 100, 299), {}, "at least 3|below 3 per user"),
    ((10, 20, 101), {}, "too dense"),
    ((100, 100, 1000), {"num_clusters": 101}, "num_clusters"),
    ((100, 100, 1000), {"seed": -1}, "seed"),
    ((100, 100, 1000), {"friend_same_cluster": 1.5}, "friend_same_cluster"),
    ((100, 100, 1000), {"mean_session_length": 0.5}, "mean_session_length"),
    ((100, 100, 1000), {"chunk_size": 0}, "chunk_size"),
    ((100.0, 100, 1000), {}, "num_users"),
])
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(RecfunnelError, match=message):
        generate_synthetic(*args, **kwargs)
