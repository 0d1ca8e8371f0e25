"""Feature schema validation and the as-of-time pipeline: no feature of an event sees its future."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.dataset import SplitData
from recfunnel.data.tables import Tables
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema
from recfunnel.utils.errors import RecfunnelError

from helpers import ROOT

SCHEMA = {
    "name": "toy",
    "session_gap_s": 1800,
    "friend_items_per_friend": 2,
    "features": {
        "user_id": {"tower": "user", "kind": "categorical", "source": "user_id"},
        "gender": {"tower": "user", "kind": "categorical", "source": "user.gender"},
        "zip": {"tower": "user", "kind": "categorical", "source": "user.zip", "prefix": 1},
        "occupation": {"tower": "user", "kind": "categorical", "source": "user.occupation", "hash_size": 7},
        "activity": {"tower": "user", "kind": "dense", "source": "user.activity", "transform": "log1p"},
        "hist": {"tower": "user", "kind": "sequence", "source": "history.item_id", "table": "item_id", "max_len": 4},
        "hist_age": {"tower": "user", "kind": "sequence", "source": "history.age", "buckets": [60, 3600], "max_len": 4},
        "session": {"tower": "user", "kind": "sequence", "source": "session.item_id", "table": "item_id", "max_len": 3},
        "friends": {"tower": "user", "kind": "multi_hot", "source": "social.friend_items", "table": "item_id", "max_len": 5},
        "session_pos": {"tower": "context", "kind": "categorical", "source": "session.position", "buckets": [1, 2, 4]},
        "hour": {"tower": "context", "kind": "categorical", "source": "context.hour"},
        "item_id": {"tower": "item", "kind": "categorical", "source": "item_id"},
        "genres": {"tower": "item", "kind": "multi_hot", "source": "item.genres"},
        "year": {"tower": "item", "kind": "categorical", "source": "item.year", "buckets": [1990]},
        "pop": {"tower": "item", "kind": "dense", "source": "item.pop_count"},
        "pop_decayed": {"tower": "item", "kind": "dense", "source": "item.pop_decayed"},
        # popularity within a group of items (a map cell on places data): here the items of one year
        "pop_in_year": {"tower": "item", "kind": "dense", "source": "item.pop_count", "within": "year"},
        "decayed_in_year": {"tower": "item", "kind": "dense", "source": "item.pop_decayed", "within": "year"},
    },
}


def random_tables(seed=0, users=30, items=40, events=600) -> Tables:
    rng = np.random.default_rng(seed)
    u = np.r_[np.repeat(np.arange(users), 3), rng.integers(0, users, events - 3 * users)]
    ts = np.sort(rng.integers(0, 20 * 86400, events))
    ts[rng.random(events) < 0.2] = ts[0]  # plenty of exact ties
    inter = pd.DataFrame({"user_id": u + 1, "item_id": rng.integers(0, items, events) + 1,
                          "ts": np.sort(ts), "rating": rng.integers(1, 6, events).astype(np.float32)})
    users_df = pd.DataFrame({"user_id": np.arange(users) + 1, "age": rng.integers(18, 70, users),
                             "gender": rng.choice(["M", "F"], users), "occupation": rng.choice(["a", "b", "c"], users),
                             "zip": [f"{z:05d}" for z in rng.integers(0, 99999, users)]})
    items_df = pd.DataFrame({"item_id": np.arange(items) + 1, "title": [f"i{i}" for i in range(items)],
                             "year": rng.choice([1980.0, 1995.0, np.nan], items),
                             "genres": [list(rng.choice(["x", "y", "z"], rng.integers(0, 3), replace=False)) for _ in range(items)]})
    edges = pd.DataFrame({"src": rng.integers(1, users + 1, 60), "dst": rng.integers(1, users + 1, 60)})
    return Tables(inter, users_df, items_df, edges)


def all_features(pipe: FeaturePipeline, rows: np.ndarray) -> dict[str, list]:
    """Every feature of every row, as python lists per row (sparse) or floats (dense)."""
    out = {}
    for tower in ("user", "context"):
        ti = pipe.query(rows, tower)
        for k, jt in ti.sparse.to_dict().items():
            out[k] = [x.tolist() for x in jt.to_dense()]
        out[f"{tower}_dense"] = ti.dense.tolist()
    ti = pipe.items(pipe.item_idx[rows], pipe.ts[rows])
    for k, jt in ti.sparse.to_dict().items():
        out[k] = [x.tolist() for x in jt.to_dense()]
    out["item_dense"] = ti.dense.tolist()
    return out


def changed_after_T() -> tuple[SplitData, SplitData, np.ndarray, np.ndarray]:
    """The same random tables before and after every event at or after a time T changed (items,
    ratings, times still >= T); returns (before, after, event rows before T, rows at or after T)."""
    tables = random_tables()
    before = SplitData.from_tables(copy.deepcopy(tables))
    T = int(np.quantile(before.ts, 0.6))
    changed = copy.deepcopy(tables)
    late = changed.interactions["ts"].to_numpy() >= T
    rng = np.random.default_rng(1)
    changed.interactions.loc[late, "item_id"] = rng.integers(1, 41, late.sum())
    changed.interactions.loc[late, "rating"] = 9.0
    changed.interactions.loc[late, "ts"] = T + rng.integers(0, 5 * 86400, late.sum())
    after = SplitData.from_tables(changed)
    early = np.flatnonzero(before.ts < T)
    assert len(early) > 100
    assert (before.split[early] == after.split[early]).all()  # the event counts per user did not change
    return before, after, early, np.flatnonzero(late)


def test_no_feature_sees_the_future():
    schema = FeatureSchema.from_config(SCHEMA)
    before, after, early, late_rows = changed_after_T()
    a = all_features(FeaturePipeline(schema, before), early)
    b = all_features(FeaturePipeline(schema, after), early)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], f"feature {k} of an event before T changed when only later events changed"
    # and the check can fail: the item features of late events do change
    assert all_features(FeaturePipeline(schema, before), late_rows)["item_id"] != \
        all_features(FeaturePipeline(schema, after), late_rows)["item_id"]


def test_history_session_and_popularity_match_brute_force():
    tables = random_tables(seed=3)
    d = SplitData.from_tables(tables)
    pipe = FeaturePipeline(FeatureSchema.from_config(SCHEMA), d)
    rows = np.arange(len(d.ts))
    feats = all_features(pipe, rows)
    pos_in_file = np.arange(len(d.ts))
    years = tables.items["year"].fillna(-1).to_numpy()
    shares = 0
    for r in rows[::7]:
        u, t = d.user_idx[r], d.ts[r]
        earlier = [e for e in d.order if d.user_idx[e] == u and (d.ts[e], pos_in_file[e]) < (t, pos_in_file[r])]
        hist = [int(d.item_idx[e]) for e in earlier][-4:]
        assert [x for x in feats["hist"][r]] == hist
        # session: consecutive gaps <= 1800 s, counted back from the event itself
        chain = earlier + [r]
        start = len(chain) - 1
        while start > 0 and d.ts[chain[start]] - d.ts[chain[start - 1]] <= 1800:
            start -= 1
        assert feats["session"][r] == [int(d.item_idx[e]) for e in chain[start:-1]][-3:]
        train_same_item = (d.split == 0) & (d.item_idx == d.item_idx[r]) & (d.ts < t)
        assert feats["item_dense"][r][0] == pytest.approx(train_same_item.sum())
        # within: the item's share of the earlier train events of the items of its year (a missing year is a group)
        same_year = np.isin(d.item_idx, np.flatnonzero(years == years[d.item_idx[r]]))
        group = (d.split == 0) & same_year & (d.ts < t)
        share = train_same_item.sum() / group.sum() if group.any() else 0.0
        assert feats["item_dense"][r][2] == pytest.approx(share, rel=1e-6)
        decay = np.exp(-np.maximum(t - d.ts, 0) / pipe.tau)  # (later events are not in the group)
        decayed = (decay * train_same_item).sum() / (decay * group).sum() if group.any() else 0.0
        assert feats["item_dense"][r][3] == pytest.approx(decayed, rel=1e-5)
        shares += 0 < share < 1
        assert feats["user_dense"][r][0] == pytest.approx(np.log1p(len(earlier)), rel=1e-6)
    assert shares > 10  # the shares checked are not all 0 or 1


def test_friend_items_come_from_friends_train_events_before_ts():
    d = SplitData.from_tables(random_tables(seed=5))
    pipe = FeaturePipeline(FeatureSchema.from_config(SCHEMA), d)
    feats = all_features(pipe, np.arange(len(d.ts)))
    uid = d.tables.users["user_id"].to_numpy()
    e = d.tables.edges
    nonempty = 0
    for r in range(0, len(d.ts), 5):
        u = d.user_idx[r]
        friends = set(np.searchsorted(uid, e["dst"][e["src"] == uid[u]])) | set(np.searchsorted(uid, e["src"][e["dst"] == uid[u]]))
        allowed = set(d.item_idx[np.isin(d.user_idx, list(friends)) & (d.split == 0) & (d.ts < d.ts[r])])
        got = [x for x in feats["friends"][r]]
        assert set(got) <= allowed
        nonempty += bool(got)
    assert nonempty > 10


@pytest.mark.parametrize("patch, message", [
    ({"kind": "tensor"}, "kind='tensor' is not valid; choose one of: categorical, multi_hot, sequence, dense, text"),
    ({"source": "users.shoe_size"}, "source='users.shoe_size' is not valid; choose one of: .*user.age.*, or "
                                    "user.<column> / item.<column> / context.<column> for a column of the users / "
                                    "items / interactions table"),
    ({"source": "item.year"}, "source item.year describes the item; put it in the item tower"),
    ({"pooling": "max"}, "pooling='max' is not valid; choose one of: sum, mean"),
    ({"colour": 3}, r"unknown key\(s\) \['colour'\]"),
    ({"table": "nope"}, "shares table 'nope', which is not a feature"),
    ({"kind": "sequence"}, "kind \\(for source user.gender\\)='sequence' is not valid; choose one of: categorical, "
                           "multi_hot, dense, text"),
])
def test_schema_errors_name_the_key_and_the_choices(patch, message):
    cfg = copy.deepcopy(SCHEMA)
    cfg["features"]["gender"].update(patch)
    with pytest.raises(RecfunnelError, match=f"feature 'gender'.*{message}"):
        FeatureSchema.from_config(cfg)


def test_within_needs_a_popularity_source_and_an_items_column():
    cfg = copy.deepcopy(SCHEMA)
    cfg["features"]["activity"]["within"] = "year"
    with pytest.raises(RecfunnelError, match="feature 'activity': within='year' needs source item.pop_count or "
                                             "item.pop_decayed and the name of an items column"):
        FeatureSchema.from_config(cfg)
    cfg = copy.deepcopy(SCHEMA)
    cfg["features"]["pop_in_year"]["within"] = "geohash5"
    with pytest.raises(RecfunnelError, match="feature 'pop_in_year' has within: geohash5, which is not a column of "
                                             "the items table; its columns: item_id, title, year, genres"):
        FeaturePipeline(FeatureSchema.from_config(cfg), SplitData.from_tables(random_tables()))


def test_numeric_source_without_buckets_is_an_error():
    cfg = copy.deepcopy(SCHEMA)
    del cfg["features"]["year"]["buckets"]
    with pytest.raises(RecfunnelError, match="feature 'year' reads numeric source item.year; give it 'buckets"):
        FeaturePipeline(FeatureSchema.from_config(cfg), SplitData.from_tables(random_tables()))


def test_ml100k_schema_builds_on_real_data(ml100k_data, ml100k_schema):
    pipe = FeaturePipeline(ml100k_schema, ml100k_data)
    assert pipe.num_embeddings["item_id"] == 1682 and pipe.num_embeddings["user_id"] == 943
    assert "hist_items" not in pipe.num_embeddings  # shares the item_id table
    ranker = FeaturePipeline(FeatureSchema.from_yaml(ROOT / "configs/features/ml100k_rank.yaml"), ml100k_data)
    cat = ranker.items(np.arange(1682), ranker.catalogue_time())  # the ranker's schema reads item popularity
    assert cat.dense[:, 0].exp().sub(1).round().sum().item() == pytest.approx(98_114)  # all train events counted


def test_generic_column_sources_read_any_users_or_items_column():
    """``user.<column>`` / ``item.<column>``: any column, categorical / multi_hot (lists, also on the user
    side) / dense; a token column under a numeric name (ML-1M's age:token) takes a vocabulary."""
    tables = random_tables()
    rng = np.random.default_rng(2)
    tables.users["langs"] = [list(rng.choice(["en", "fr", "de"], rng.integers(0, 3), replace=False)) for _ in range(30)]
    tables.users["age"] = [f"{a // 10 * 10}s" for a in tables.users["age"]]
    tables.items["price"] = np.where(rng.random(40) < 0.2, np.nan, rng.random(40) * 20)
    cfg = {"name": "cols", "features": {
        "age": {"tower": "user", "kind": "categorical", "source": "user.age"},
        "langs": {"tower": "user", "kind": "multi_hot", "source": "user.langs", "pooling": "sum"},
        "item_id": {"tower": "item", "kind": "categorical", "source": "item_id"},
        "price": {"tower": "item", "kind": "dense", "source": "item.price", "transform": "log1p"},
        "price_bucket": {"tower": "item", "kind": "categorical", "source": "item.price", "buckets": [5, 10]},
        "year": {"tower": "item", "kind": "dense", "source": "item.year"},
    }}
    d = SplitData.from_tables(tables)
    pipe = FeaturePipeline(FeatureSchema.from_config(cfg), d)
    assert pipe.num_embeddings["age"] == 1 + tables.users["age"].nunique() and pipe.num_embeddings["langs"] == 4
    rows = np.arange(len(d.ts))
    user, item = pipe.query(rows, "user"), pipe.items(d.item_idx[rows], d.ts[rows])
    langs = d.tables.users["langs"]
    assert user.sparse["langs"].lengths().tolist() == [len(langs[u]) for u in d.user_idx[rows]]
    vocab = {"de": 1, "en": 2, "fr": 3}
    assert user.sparse["langs"].values().tolist() == [vocab[x] for u in d.user_idx[rows] for x in langs[u]]
    price = d.tables.items["price"].to_numpy()[d.item_idx[rows]]
    assert np.allclose(item.dense[:, 0].numpy(), np.log1p(np.nan_to_num(price)), atol=1e-6)  # NaN → 0
    assert np.allclose(item.dense[:, 1].numpy(), np.nan_to_num(d.tables.items["year"].to_numpy()[d.item_idx[rows]]))
    expected = np.where(np.isnan(price), 0, 1 + (price >= 5) + (price >= 10))
    assert (item.sparse["price_bucket"].values().numpy() == expected).all()


def test_a_column_source_is_checked_against_the_table():
    cfg = copy.deepcopy(SCHEMA)
    cfg["features"]["gender"]["source"] = "user.shoe_size"  # valid in the schema: any column may be read
    schema = FeatureSchema.from_config(cfg)
    with pytest.raises(RecfunnelError, match=r"^features: feature 'gender' reads user.shoe_size, but this dataset's "
                                             r"users table has no column 'shoe_size' \(its columns: user_id, age, gender, "
                                             r"occupation, zip\); remove the feature"):
        FeaturePipeline(schema, SplitData.from_tables(random_tables()))
