"""The synthetic generator: contract of the tables, determinism, and that the planted structure shows."""

import numpy as np
import pandas as pd
import pytest

from recfunnel.data import synthetic
from recfunnel.data.fingerprint import tables_fingerprint
from recfunnel.data.synthetic import (
    ANSWER_KEY_COLUMNS,
    CLICKBAIT_APPEAL,
    GENRES,
    IN_SESSION_MAX_S,
    OCCUPATIONS,
    QUERY_GENERIC,
    QUERY_THEMES,
    QUERY_VOCAB_SIZE,
    T_END,
    T_START,
    expected_revenue,
    generate_synthetic,
    purchase_probability,
    query_vocabulary,
)
from recfunnel.data.tables import Tables
from recfunnel.utils.errors import RecfunnelError

USERS, ITEMS, EVENTS = 2000, 1000, 50_000


@pytest.fixture(scope="module")
def tables():
    return generate_synthetic(USERS, ITEMS, EVENTS, seed=0)  # query_share defaults to 0: no query


@pytest.fixture(scope="module")
def query_tables():
    """The tables of ``tables`` with search sessions (query_own_cluster defaults to 0.5)."""
    return generate_synthetic(USERS, ITEMS, EVENTS, seed=0, query_share=0.3)


def _assert_same(a, b):
    for name in ("interactions", "users", "items", "edges"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))


def _mode_share(labels, groups) -> float:
    """Share of rows whose label is the most common one of their group."""
    df = pd.DataFrame({"group": groups, "label": labels})
    return df.groupby("group")["label"].agg(lambda s: s.value_counts().iloc[0]).sum() / len(df)


def test_same_seed_same_tables_other_seed_differs(tables, query_tables):
    _assert_same(tables, generate_synthetic(USERS, ITEMS, EVENTS, seed=0))
    _assert_same(query_tables, generate_synthetic(USERS, ITEMS, EVENTS, seed=0, query_share=0.3))
    other = generate_synthetic(USERS, ITEMS, EVENTS, seed=1)
    assert not other.interactions.equals(tables.interactions)
    assert not other.users.equals(tables.users)
    assert not np.array_equal(other.items["price"], tables.items["price"])


# Fingerprints (recfunnel.data.fingerprint.tables_fingerprint) of the tables the generator made before
# prices and purchases existed (commit 2a6171c), restricted to the columns it made then: adding the
# purchase stream (the 4th child of SeedSequence(seed).spawn(4)) must leave them unchanged. Likewise
# the tables it made before search queries existed (commit 972156d) and the query stream (the 5th child
# of spawn(5)): at query_share=0 (the default), whatever query_own_cluster, and at query_own_cluster=1
# (every query for the user's own cluster), whatever query_share.
# Float columns are fingerprinted rounded to 6 significant digits (``_six_digits``): NumPy picks its
# SIMD kernels (exp, log, ...) by CPU, and on an AMD EPYC with AVX2 and no AVX-512 the exact
# fingerprints of the price-era columns changed (2f9669b8fb305b69 → 6ec95c3179d56df1 and
# d6706bccf25485c2 → dcdc9999da722cd4) while the code, the packages and every integer column stayed
# the same; the exact ones had matched on the machines CI ran on up to 4799a59. The anchors below are
# the rounded fingerprints of the same tables.
OLD_COLUMNS = {"interactions": ["user_id", "item_id", "ts", "rating"],
               "users": ["user_id", "age", "gender", "occupation", "zip", "cluster"],
               "items": ["item_id", "title", "year", "genres", "cluster"]}
PRE_QUERY_COLUMNS = {"interactions": ["user_id", "item_id", "ts", "rating", "purchase", "revenue"],
                     "users": ["user_id", "age", "gender", "occupation", "zip", "cluster", "price_sensitivity"],
                     "items": ["item_id", "title", "year", "genres", "price", "cluster", "popularity", "appeal"]}
SMALL = ((300, 200, 4000), {"seed": 3, "num_clusters": 5})


def _six_digits(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with its float columns rounded to 6 significant digits (the same on every CPU)."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: float(f"{v:.6g}"))
    return out


@pytest.mark.parametrize("columns, args, kwargs, fingerprint", [
    (OLD_COLUMNS, (USERS, ITEMS, EVENTS), {"seed": 0}, "01a8e4d7debe1c7b"),
    (OLD_COLUMNS, *SMALL, "08226a340d9afa3f"),
    (PRE_QUERY_COLUMNS, (USERS, ITEMS, EVENTS), {"seed": 0}, "100df3e7553b20c1"),
    (PRE_QUERY_COLUMNS, *SMALL, "6abf9514cea5620c"),
    (PRE_QUERY_COLUMNS, SMALL[0], {**SMALL[1], "query_share": 0.0}, "6abf9514cea5620c"),
    (PRE_QUERY_COLUMNS, SMALL[0], {**SMALL[1], "query_share": 0.0, "query_own_cluster": 0.0}, "6abf9514cea5620c"),
    (PRE_QUERY_COLUMNS, SMALL[0], {**SMALL[1], "query_share": 1.0, "query_own_cluster": 1.0}, "6abf9514cea5620c"),
])
def test_new_streams_leave_the_earlier_columns_unchanged(tables, columns, args, kwargs, fingerprint):
    t = tables if kwargs == {"seed": 0} else generate_synthetic(*args, **kwargs)
    old = Tables(**{name: _six_digits(getattr(t, name)[cols]) for name, cols in columns.items()}, edges=t.edges)
    assert tables_fingerprint(old) == fingerprint
    if not kwargs.get("query_share"):  # by default no query at all
        assert t.interactions["query"].isna().all() and (t.interactions["query_cluster"] == -1).all()


def test_query_sessions_change_only_the_items_and_what_follows_from_them(tables, query_tables):
    """With query_share > 0 the items of search sessions change by design; the events' users and
    times (hence the row order and the sessions), the users, items and edges stay."""
    old, new = tables.interactions, query_tables.interactions
    for name in ("user_id", "ts"):
        np.testing.assert_array_equal(new[name].to_numpy(), old[name].to_numpy())
    for name in ("users", "items", "edges"):
        pd.testing.assert_frame_equal(getattr(query_tables, name), getattr(tables, name))
    has = new["query_cluster"].to_numpy() >= 0
    changed = new["item_id"].to_numpy() != old["item_id"].to_numpy()
    assert changed[has].mean() > 0.5  # 3 in 4 of their draws come from the query's cluster ...
    assert changed[has].mean() > changed[~has].mean()  # ... others change through redraws of repeats
    price = query_tables.items["price"].to_numpy()[new["item_id"]]
    assert np.array_equal(new["revenue"].to_numpy(), (price * new["purchase"].to_numpy()).astype(np.float32))


@pytest.mark.parametrize("query_share", [0.0, 0.3])
def test_chunk_size_changes_nothing(tables, query_tables, monkeypatch, query_share):
    chunk_events = []
    chunk_fn = synthetic._chunk_events

    def counting(rngs, counts, *args):
        chunk_events.append(int(counts.sum()))
        return chunk_fn(rngs, counts, *args)

    monkeypatch.setattr(synthetic, "_chunk_events", counting)
    chunked = generate_synthetic(USERS, ITEMS, EVENTS, seed=0, chunk_size=3000, query_share=query_share)
    assert len(chunk_events) > 1 and sum(chunk_events) == EVENTS
    _assert_same(query_tables if query_share else tables, chunked)


def test_columns_and_dtypes(tables):
    inter, users, items, edges = tables.interactions, tables.users, tables.items, tables.edges
    assert list(inter.columns) == ["user_id", "item_id", "ts", "rating", "purchase", "revenue", "query",
                                   "query_cluster"]
    assert [str(inter[c].dtype) for c in inter.columns] == ["int64", "int64", "int64", "float32", "float32",
                                                            "float32", "str", "int64"]
    assert inter["user_id"].between(0, USERS - 1).all() and inter["item_id"].between(0, ITEMS - 1).all()
    assert inter["ts"].is_monotonic_increasing  # a log: global time order
    assert inter["ts"].min() >= T_START and inter["ts"].max() < T_END
    assert set(np.unique(inter["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}

    assert list(users.columns[:5]) == ["user_id", "age", "gender", "occupation", "zip"]
    assert (users["user_id"] == np.arange(USERS)).all() and users["age"].dtype == np.int64
    assert users["age"].between(18, 70).all()
    assert set(users["gender"]) <= {"M", "F"} and set(users["occupation"]) <= set(OCCUPATIONS)
    assert users["zip"].str.fullmatch(r"\d{5}").all()
    assert list(users.columns[5:]) == ["cluster", "price_sensitivity"]

    assert list(items.columns) == ["item_id", "title", "year", "genres", "price", "cluster", "popularity", "appeal"]
    assert {f"{t}.{c}" for t, df in (("users", users), ("items", items), ("interactions", inter)) for c in df.columns
            if c in ("cluster", "price_sensitivity", "popularity", "appeal", "query_cluster")} == (
        set(ANSWER_KEY_COLUMNS) - {"users.taste"})  # users.taste: the places generator's answer key
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
    ((100, 100, 1000), {"query_share": 1.5}, r"query_share must be a number in \[0.0, 1.0\], got 1.5"),
    ((100, 100, 1000), {"query_share": -0.1}, "query_share"),
    ((100, 100, 1000), {"query_share": "0.3"}, "query_share"),
    ((100, 100, 1000), {"query_share": float("nan")}, "query_share"),
    ((100, 100, 1000), {"query_own_cluster": 1.5}, r"^query_own_cluster must be a number in \[0.0, 1.0\], got 1.5$"),
    ((100, 100, 1000), {"query_own_cluster": -0.1}, r"^query_own_cluster must be a number in \[0.0, 1.0\], got -0.1$"),
    ((100, 100, 1000), {"query_share": 0.3, "query_own_cluster": "0.5"}, "^query_own_cluster must"),
    ((100, 100, 1000), {"query_own_cluster": float("nan")}, "^query_own_cluster must"),
    ((100, 100, 1000), {"query_own_cluster": True}, "^query_own_cluster must"),
    ((100.0, 100, 1000), {}, "num_users"),
])
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(RecfunnelError, match=message):
        generate_synthetic(*args, **kwargs)


# --- purchases and revenue ------------------------------------------------------------------------
def test_prices_purchases_and_revenue(tables):
    inter, users, items = tables.interactions, tables.users, tables.items
    price = items["price"].to_numpy()
    assert items["price"].dtype == np.float64 and price.min() >= 0.99 and price.max() <= 999.99
    assert np.array_equal(price, np.round(price, 2)) and 5 < np.median(price) < 50
    assert items.groupby("cluster")["price"].median().agg(lambda m: m.max() / m.min()) > 2  # cluster medians
    purchase, revenue = inter["purchase"].to_numpy(), inter["revenue"].to_numpy()
    assert set(np.unique(purchase)) == {0.0, 1.0}
    assert np.array_equal(revenue, (price[inter["item_id"]] * purchase).astype(np.float32))
    assert 0.1 < purchase.mean() < 0.3
    assert (users.groupby("cluster")["price_sensitivity"].nunique() == 1).all()
    w = items["popularity"].to_numpy()
    assert np.isclose(w.max(), 1.0) and np.allclose(np.sort(w)[::-1], np.arange(1, ITEMS + 1) ** -1.1)


def _log_odds(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_purchase_rate_falls_with_price_in_price_sensitive_clusters(tables):
    inter, users, items = tables.interactions, tables.users, tables.items
    cluster = users["cluster"].to_numpy()[inter["user_id"]]
    log_price = np.log(items["price"].to_numpy()[inter["item_id"]])
    bought = inter["purchase"].to_numpy() == 1
    sensitivity = users.groupby("cluster")["price_sensitivity"].first()
    drop = {}
    for c in (sensitivity.idxmax(), sensitivity.idxmin()):
        mine = cluster == c
        cheap = log_price[mine] <= np.median(log_price[mine])
        drop[c] = _log_odds(bought[mine][cheap].mean()) - _log_odds(bought[mine][~cheap].mean())
    most, least = drop[sensitivity.idxmax()], drop[sensitivity.idxmin()]
    assert most > 1.5 and most > least + 1.0


def test_clickbait_is_clicked_not_bought(tables):
    inter, items = tables.interactions, tables.items
    bait = items["appeal"].to_numpy() == CLICKBAIT_APPEAL
    top = items["popularity"].rank(ascending=False).to_numpy() <= 0.2 * ITEMS
    assert bait.sum() == round(0.15 * top.sum()) and top[bait].all()
    clicked = bait[inter["item_id"]]
    bought = inter["purchase"].to_numpy() == 1
    click_share, purchase_share = clicked.mean(), clicked[bought].mean()
    assert click_share > 0.05 and click_share > 5 * purchase_share


def test_purchase_probability_is_calibrated_on_the_events(tables):
    inter = tables.interactions
    users, items = inter["user_id"].to_numpy(), inter["item_id"].to_numpy()[:, None]
    p = purchase_probability(tables, users, items)[:, 0]
    assert p.shape == (EVENTS,) and abs(p.mean() - inter["purchase"].mean()) < 0.01
    order = np.argsort(p)
    low, high = inter["purchase"].to_numpy()[order[: EVENTS // 10]], inter["purchase"].to_numpy()[order[-EVENTS // 10:]]
    assert abs(low.mean() - p[order[: EVENTS // 10]].mean()) < 0.02 and abs(high.mean() - p[order[-EVENTS // 10:]].mean()) < 0.03


def test_expected_revenue_ranks_the_realised_revenue(tables):
    """Over every (user, item) pair, the oracle's top decile realises far more revenue than its bottom
    decile; a random oracle gives both the mean."""
    inter = tables.interactions
    realised = np.zeros((USERS, ITEMS))
    np.add.at(realised, (inter["user_id"].to_numpy(), inter["item_id"].to_numpy()), inter["revenue"].to_numpy())
    users = np.arange(USERS)
    score = expected_revenue(tables, users, np.broadcast_to(np.arange(ITEMS), (USERS, ITEMS)))
    assert score.shape == (USERS, ITEMS) and (score > 0).all()
    # a per-draw expectation: over all pairs it sums to the revenue of one draw per user
    assert np.isclose(score.sum(axis=1).mean(), inter["revenue"].mean(), rtol=0.25)
    order = np.argsort(score, axis=None)
    decile = score.size // 10
    mean = realised.mean()
    top, bottom = realised.flat[order[-decile:]].mean(), realised.flat[order[:decile]].mean()
    assert top > 5 * mean and bottom < 0.2 * mean
    shuffled = np.random.default_rng(0).permutation(realised.ravel())[: decile]
    assert shuffled.mean() < 2 * mean  # what the assertion above would see from a random oracle

    empty = expected_revenue(tables, users[:3], np.array([[0, -1], [-1, -1], [5, 7]]))
    assert empty[0, 1] == empty[1, 0] == empty[1, 1] == 0.0 and empty[0, 0] == score[0, 0]
    assert np.array_equal(empty[2], score[2, [5, 7]])
    with pytest.raises(RecfunnelError, match="items"):
        expected_revenue(tables, users, np.arange(ITEMS))
    with pytest.raises(RecfunnelError, match="num_clusters=3"):
        expected_revenue(tables, users[:1], np.zeros((1, 1), np.int64), num_clusters=3)
    with pytest.raises(RecfunnelError, match="lacks"):
        expected_revenue(Tables(inter, tables.users, tables.items.drop(columns="appeal")), users[:1],
                         np.zeros((1, 1), np.int64))


def test_tables_and_oracle_survive_the_parquet_cache(tables, tmp_path):
    tables.save(tmp_path / "tables")
    loaded = Tables.load(tmp_path / "tables")
    _assert_same(tables, loaded)
    users, items = np.arange(50), np.tile(np.arange(-1, 30), (50, 1))
    assert np.array_equal(expected_revenue(loaded, users, items), expected_revenue(tables, users, items))


# --- search queries -------------------------------------------------------------------------------
def _sessions(inter: pd.DataFrame) -> np.ndarray:
    """(N,) session number of each event, rebuilt from the log: a user's events in time order, a gap
    over IN_SESSION_MAX_S starting a session (in-session gaps are at most that, others over an hour)."""
    by_user = inter.sort_values(["user_id", "ts"], kind="stable")
    user, ts = by_user["user_id"].to_numpy(), by_user["ts"].to_numpy()
    new = np.r_[True, (user[1:] != user[:-1]) | (np.diff(ts) > IN_SESSION_MAX_S)]
    session = np.empty(len(inter), np.int64)
    session[by_user.index.to_numpy()] = np.cumsum(new) - 1
    return session


def _session_table(tables: Tables) -> pd.DataFrame:
    """One row per session of ``tables``: its query, query_cluster, user cluster, its events' item
    clusters (most common first) and the share of its items in the query's cluster (0 without one)."""
    inter = tables.interactions
    df = inter.assign(session=_sessions(inter), item_cluster=tables.items["cluster"].to_numpy()[inter["item_id"]],
                      user_cluster=tables.users["cluster"].to_numpy()[inter["user_id"]])
    df["in_query_cluster"] = df["item_cluster"] == df["query_cluster"]
    grouped = df.groupby("session")
    assert grouped["query"].nunique(dropna=False).eq(1).all()  # all events of a session share the query
    assert grouped["query_cluster"].nunique().eq(1).all()
    return grouped.agg(query=("query", "first"), query_cluster=("query_cluster", "first"),
                       user_cluster=("user_cluster", "first"), events=("item_cluster", "size"),
                       top_cluster=("item_cluster", lambda s: s.value_counts().index[0]),
                       in_query_cluster=("in_query_cluster", "mean"))


@pytest.fixture(scope="module")
def sessions(query_tables):
    return _session_table(query_tables)


def test_a_share_of_sessions_has_a_query(query_tables, sessions):
    has = sessions["query"].notna()
    assert len(sessions) > 5000 and abs(has.mean() - 0.3) < 0.03  # query_share=0.3
    assert ((sessions["query_cluster"] >= 0) == has).all() and (sessions["query_cluster"][~has] == -1).all()
    inter = query_tables.interactions
    assert (inter["query"].isna() == (inter["query_cluster"] == -1)).all()
    assert sessions["query"][has].str.fullmatch(r"[a-z]+( [a-z]+){1,3}").all()  # 2-4 lowercase words
    assert set(sessions["query"][has].str.split().str.len()) == {2, 3, 4}


def test_query_words_come_mostly_from_the_cluster_vocabulary(query_tables, sessions):
    """The words describe the query's cluster, also when it is not the user's."""
    vocab = query_vocabulary(query_tables.items)
    queries = sessions[sessions["query"].notna()]
    words = queries["query"].str.split()
    own = np.array([sum(w in vocab[c] for w in ws) / len(ws) for ws, c in zip(words, queries["query_cluster"])])
    assert 0.65 < own.mean() < 0.85 and (own > 0).all()  # noise, yet every query has an own word
    assert all(len(set(ws) & set(vocab[c])) == sum(w in vocab[c] for w in ws)  # own words are distinct
               for ws, c in zip(words, queries["query_cluster"]))
    generic = np.mean([sum(w in QUERY_GENERIC for w in ws) / len(ws) for ws in words])
    assert 0.05 < generic < 0.2
    # the planted structure is recoverable from the text alone: the cluster with most words in the query
    guess = np.array([np.argmax([len(set(ws) & set(v)) for v in vocab]) for ws in words])
    assert (guess == queries["query_cluster"].to_numpy()).mean() > 0.85
    elsewhere = (queries["query_cluster"] != queries["user_cluster"]).to_numpy()
    assert elsewhere.sum() > 500 and (guess[elsewhere] == queries["query_cluster"].to_numpy()[elsewhere]).mean() > 0.85
    assert (guess[elsewhere] == queries["user_cluster"].to_numpy()[elsewhere]).mean() < 0.1
    # and without knowing the vocabularies: a cluster's most frequent query words are its vocabulary
    for c, v in enumerate(vocab):
        counts = words[queries["query_cluster"] == c].explode().value_counts()
        assert set(counts.index[:QUERY_VOCAB_SIZE]) == set(v)


def test_query_cluster_is_the_user_cluster_or_a_uniform_other(sessions):
    queries = sessions[sessions["query"].notna()]
    elsewhere = queries["query_cluster"] != queries["user_cluster"]
    assert abs(elsewhere.mean() - 0.5) < 0.05  # 1 - query_own_cluster (default 0.5)
    offset = (queries["query_cluster"] - queries["user_cluster"])[elsewhere] % 8  # 8 clusters
    share = np.bincount(offset, minlength=8) / elsewhere.sum()
    assert share[0] == 0 and np.abs(share[1:] - 1 / 7).max() < 0.04  # any other cluster, uniformly


def test_search_sessions_follow_their_query(sessions):
    """The planted structure: a search session's items come from its query's cluster, not its
    user's, so the query tells what the history cannot."""
    queries = sessions[sessions["query"].notna()]
    elsewhere = queries[queries["query_cluster"] != queries["user_cluster"]]
    for s in (queries, elsewhere):
        assert s["in_query_cluster"].mean() > 0.6  # 75% of draws, less redraws of repeats
        matches = s["top_cluster"] == s["query_cluster"]
        assert matches.mean() > 0.75 and matches[s["events"] >= 3].mean() > 0.85
    assert elsewhere["in_query_cluster"].mean() > 0.7
    assert (elsewhere["top_cluster"] == elsewhere["user_cluster"]).mean() < 0.1


def test_sessions_without_a_query_keep_their_distribution(tables, query_tables):
    """The same events (users and times do not change) without a query draw as before queries: a
    slightly higher own-cluster share (search sessions elsewhere leave more of the user's cluster
    free for them) and the same popularity skew."""
    old, new = tables.interactions, query_tables.interactions
    plain = new["query_cluster"].to_numpy() == -1
    user_cluster = tables.users["cluster"].to_numpy()[new["user_id"]][plain]
    item_cluster = tables.items["cluster"].to_numpy()
    old_items, new_items = old["item_id"].to_numpy()[plain], new["item_id"].to_numpy()[plain]
    old_own, new_own = (item_cluster[old_items] == user_cluster).mean(), (item_cluster[new_items] == user_cluster).mean()
    assert 0 <= new_own - old_own < 0.03

    def top_decile_share(items):
        counts = np.sort(np.bincount(items, minlength=ITEMS))[::-1]
        return counts[: ITEMS // 10].sum() / len(items)

    assert abs(top_decile_share(new_items) - top_decile_share(old_items)) < 0.02
    rating = new["rating"].to_numpy()[plain]
    assert abs(rating.mean() - old["rating"].to_numpy()[plain].mean()) < 0.05


@pytest.mark.parametrize("own, elsewhere", [(1.0, 0.0), (0.0, 1.0), (0.8, 0.2)])
def test_query_own_cluster(own, elsewhere):
    t = generate_synthetic(300, 200, 4000, seed=3, query_share=1.0, query_own_cluster=own)
    s = _session_table(t)
    assert s["query"].notna().all()
    share = (s["query_cluster"] != s["user_cluster"]).mean()
    assert share == elsewhere if own in (0.0, 1.0) else abs(share - elsewhere) < 0.05
    assert s["in_query_cluster"].mean() > 0.5  # 25 items a cluster: repeats of own-cluster draws are redrawn


def test_query_vocabularies_are_themes_matching_the_genres(tables):
    assert list(QUERY_THEMES)[:len(GENRES)] == GENRES
    words = [w for theme in QUERY_THEMES.values() for w in theme] + list(QUERY_GENERIC)
    assert len(words) == len(set(words)) and all(len(t) == QUERY_VOCAB_SIZE for t in QUERY_THEMES.values())
    vocab = query_vocabulary(tables.items)
    assert len(vocab) == 8 and len({w for v in vocab for w in v}) == 8 * QUERY_VOCAB_SIZE  # disjoint
    theme_genre = {theme: genre for genre, theme in QUERY_THEMES.items()}
    genres = tables.items.explode("genres")
    overall = genres["genres"].value_counts(normalize=True)
    for c, v in enumerate(vocab):
        mine = genres.loc[genres["cluster"] == c, "genres"].value_counts(normalize=True)
        genre = theme_genre[v]
        assert genre in mine.index[:3] and mine[genre] > 2 * overall[genre]
    assert query_vocabulary(tables.items.iloc[::-1]) == vocab  # row order does not matter


def test_query_vocabulary_with_more_clusters_than_themes():
    items = pd.DataFrame({"cluster": np.arange(300) % 30, "genres": [[GENRES[i % len(GENRES)]] for i in range(300)]})
    vocab = query_vocabulary(items)
    assert len(vocab) == 30 and len(set(vocab)) == 30 and all(len(set(v)) == QUERY_VOCAB_SIZE for v in vocab)
    assert len({w for v in vocab[:len(QUERY_THEMES)] for w in v}) == len(QUERY_THEMES) * QUERY_VOCAB_SIZE
    t = generate_synthetic(60, 300, 1000, num_clusters=30, query_share=1.0, seed=1)
    assert t.interactions["query"].notna().all() and t.interactions["query_cluster"].between(0, 29).all()


@pytest.mark.parametrize("num_clusters", [1, 2])
def test_queries_with_few_clusters(num_clusters):
    t = generate_synthetic(40, 20, 400, num_clusters=num_clusters, query_share=1.0, seed=2)
    vocab = query_vocabulary(t.items)
    inter = t.interactions
    assert inter["query"].notna().all() and set(inter["query_cluster"]) == set(range(num_clusters))
    allowed = {w for v in vocab for w in v} | set(QUERY_GENERIC)
    assert set(inter["query"].str.split().explode()) <= allowed
    if num_clusters == 1:  # noise can only be generic
        assert set(inter["query"].str.split().explode()) <= set(vocab[0]) | set(QUERY_GENERIC)


def test_query_share_zero_and_one_and_the_parquet_cache(tmp_path):
    none = generate_synthetic(300, 200, 4000, seed=3, query_share=0.0)
    _assert_same(none, generate_synthetic(300, 200, 4000, seed=3))  # the default
    _assert_same(none, generate_synthetic(300, 200, 4000, seed=3, query_own_cluster=0.0))
    assert none.interactions["query"].isna().all() and (none.interactions["query_cluster"] == -1).all()
    assert str(none.interactions["query"].dtype) == "str"
    every = generate_synthetic(300, 200, 4000, seed=3, query_share=1.0)
    assert every.interactions["query"].notna().all() and (every.interactions["query_cluster"] >= 0).all()
    some = generate_synthetic(300, 200, 4000, seed=3, query_share=0.5)
    assert 0.4 < some.interactions["query"].notna().mean() < 0.6
    none.save(tmp_path / "none")
    _assert_same(none, Tables.load(tmp_path / "none"))
    assert not generate_synthetic(300, 200, 4000, seed=4, query_share=0.3).interactions["query"].equals(
        generate_synthetic(300, 200, 4000, seed=3, query_share=0.3).interactions["query"])
    every.save(tmp_path / "every")
    _assert_same(every, Tables.load(tmp_path / "every"))
