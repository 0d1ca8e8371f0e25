"""``features=auto`` and the generic ``user.<column>`` / ``item.<column>`` sources, on a small dataset in
RecBole's atomic format with token, float, token_seq and float_seq fields on users and items and
string ids: what the built schema holds, that the pipeline serves it, that it is deterministic."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest

from recfunnel.data.atomic import load_atomic
from recfunnel.data.dataset import SplitData
from recfunnel.features.auto import auto_schema, check_item_time_features, quantile_edges, resolve_schema
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import QUERY_TOWERS, FeatureSchema
from recfunnel.utils.errors import RecfunnelError

from helpers import ROOT, run

USERS, ITEMS, EVENTS_PER_USER = 60, 40, 12
AUTO = {"name": "auto", "auto": True, "max_vocab": 10}  # city (20 values) is hashed, gender (2) is not


def write_dataset(folder, name="toy"):
    """``name.inter`` (60 users x 12 events over 40 items, string ids, times an hour apart), ``.user``
    (age:float with blanks, gender:token, city:token of 20 values, country:token constant, email:token
    different per user, tags:token_seq, blank:float all empty, activity:float named like a computed
    source) and ``.item`` (price:float, brand:token, genres:token_seq, scores:float_seq, const:float)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(USERS):
        for k, i in enumerate(rng.choice(ITEMS, EVENTS_PER_USER, replace=False)):
            inter.append(f"u{u}\tit{i}\t{rng.integers(1, 6)}\t{1_600_000_000 + 3600 * (EVENTS_PER_USER * u + k)}")
    (folder / f"{name}.inter").write_text("\n".join(inter) + "\n")
    users = ["user_id:token\tage:float\tgender:token\tcity:token\tcountry:token\temail:token\ttags:token_seq\t"
             "blank:float\tactivity:float"]
    for u in range(USERS):
        age = "" if u % 7 == 0 else str(18 + (u * 5) % 50)
        tags = " ".join(rng.choice(["a", "b", "c", "d"], rng.integers(0, 3), replace=False))
        users.append(f"u{u}\t{age}\t{'MF'[u % 2]}\tcity{u % 20}\tFR\tp{u}@x.org\t{tags}\t\t{u}")
    (folder / f"{name}.user").write_text("\n".join(users) + "\n")
    items = ["item_id:token\tprice:float\tbrand:token\tgenres:token_seq\tscores:float_seq\tconst:float"]
    for i in range(ITEMS):
        genres = " ".join(rng.choice(["Drama", "Comedy", "Action"], rng.integers(1, 3), replace=False))
        scores = " ".join(f"{s:.2f}" for s in rng.random(rng.integers(0, 3)) * 10)
        items.append(f"it{i}\t{i * 2.5:.1f}\tbrand{i % 5}\t{genres}\t{scores}\t1")
    (folder / f"{name}.item").write_text("\n".join(items) + "\n")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SplitData:
    folder = write_dataset(tmp_path_factory.mktemp("atomic"))
    return SplitData.from_tables(load_atomic(folder, "toy").validated("toy"))


def fresh(data: SplitData) -> SplitData:
    """A copy, so a test that builds a pipeline leaves the module's data as it found it."""
    return copy.deepcopy(data)


# --- the built schema -------------------------------------------------------------------------------
def test_auto_schema_features_kinds_and_modes(data, caplog, monkeypatch):
    monkeypatch.setattr("recfunnel.features.auto._logged", set())  # as in a fresh process
    with caplog.at_level(logging.INFO, logger="recfunnel.features.auto"):
        schema = resolve_schema(AUTO, data, where="features (auto)")
    f = {s.name: s for s in schema.features}
    assert list(f) == ["user_id", "user_activity", "hist_items", "hist_age", "session_items", "user_age", "user_gender",
                       "user_city", "user_tags", "session_pos", "hour", "weekday", "item_id", "item_price",
                       "item_brand", "item_genres", "item_scores"]
    assert (f["user_id"].kind, f["user_id"].dim, f["item_id"].dim) == ("categorical", 32, 32)
    assert (f["hist_items"].kind, f["hist_items"].table, f["hist_items"].max_len) == ("sequence", "item_id", 50)
    assert (f["session_items"].table, f["session_items"].max_len) == ("item_id", 20)
    assert f["hist_age"].buckets == (60, 3600, 86400, 604800, 2592000)
    assert f["user_activity"].kind == "dense"
    # a ranker's auto schema (candidates read as of the query) also has the items' popularity as of the event
    ranker = resolve_schema(AUTO, data, where="features (auto)", scored_at_query_time=True)
    assert [s.name for s in ranker.features] == [*list(f)[:13], "item_pop", "item_pop_decayed", *list(f)[13:]]
    assert {s.kind for s in ranker.features if s.name.startswith("item_pop")} == {"dense"}
    # tokens: a vocabulary up to max_vocab distinct values, hashed above it
    assert (f["user_gender"].source, f["user_gender"].hash_size, f["user_gender"].buckets) == ("user.gender", None, None)
    assert (f["user_city"].kind, f["user_city"].hash_size) == ("categorical", 64)  # next power of two >= 2 x 20
    assert f["item_brand"].hash_size is None and f["user_gender"].tower == "user" and f["item_brand"].tower == "item"
    # numbers: quantile buckets, increasing
    for name in ("user_age", "item_price"):
        edges = np.array(f[name].buckets)
        assert f[name].kind == "categorical" and 2 <= len(edges) <= 7 and (np.diff(edges) > 0).all()
    # lists: multi-hot (tokens by vocabulary, numbers by buckets)
    assert (f["user_tags"].kind, f["item_genres"].kind, f["item_scores"].kind) == ("multi_hot",) * 3
    assert f["item_genres"].buckets is None and f["item_scores"].buckets is not None
    # dims by cardinality: min(32, max(4, round(1.6 * n ** 0.56)))
    assert (f["user_gender"].dim, f["user_city"].dim) == (4, round(1.6 * 20 ** 0.56))
    # skipped, each with its reason, in one log line; the schema in one message
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    skipped = messages[0].split("skipped columns: ")[1]
    for part in ("users.country (constant)", "users.email (id-like", "users.blank (every value missing)",
                 "users.activity (named like the computed source user.activity", "items.const (constant)"):
        assert part in skipped
    assert "user_city" in messages[0] and "hashed: 64 rows (20 values)" in messages[0]


def test_numeric_buckets_split_the_train_events_evenly():
    x = np.array([1.0, 2, 3, 4, np.nan, 5])
    assert quantile_edges(x, np.ones(6), 4) == [2.0, 3.0, 4.0]  # {1} {2} {3} {4, 5}; NaN apart
    assert quantile_edges(x, np.array([0, 0, 0, 0, 0, 9.0]), 4) == [5.0]  # all the weight on 5
    assert quantile_edges(np.array([7.0, 7, np.nan]), np.ones(3), 8) == [7.0]  # constant: missing or not
    assert quantile_edges(np.array([np.nan]), np.ones(1), 8) is None
    edges = quantile_edges(np.random.default_rng(0).normal(size=1000), np.ones(1000), 8)
    assert len(edges) == 7 and edges == sorted(edges)


def test_options_and_edits(data):
    cfg = {**AUTO, "numeric_buckets": 3, "id_dim": 8, "history_len": 10,
           "features": {"user_city": None,
                        "item_price": {"tower": "item", "kind": "dense", "source": "item.price", "transform": "log1p"},
                        "item_brand": {"hash_size": 16, "dim": 6}, "user_gender": {"dim": None},
                        "user_age_raw": {"tower": "user", "kind": "dense", "source": "user.age"}}}
    built = auto_schema(data, cfg)
    f = built["features"]
    assert "user_city" not in f and f["item_price"] == {"tower": "item", "kind": "dense", "source": "item.price",
                                                        "transform": "log1p"}
    assert f["item_brand"] == {"tower": "item", "kind": "categorical", "source": "item.brand", "hash_size": 16, "dim": 6}
    assert "dim" not in f["user_gender"] and list(f)[-1] == "user_age_raw"
    assert len(f["user_age"]["buckets"]) <= 2 and f["user_id"]["dim"] == 8 and f["hist_items"]["max_len"] == 10
    assert FeatureSchema.from_config(built)["user_age_raw"].kind == "dense"
    with pytest.raises(RecfunnelError, match=r"features \(auto\): unknown key\(s\) \['max_vocabulary'\] for features=auto"):
        resolve_schema({**AUTO, "max_vocabulary": 3}, data, where="features (auto)")
    with pytest.raises(RecfunnelError, match="numeric_buckets must be an integer >= 2, got 1"):
        resolve_schema({**AUTO, "numeric_buckets": 1}, data)
    with pytest.raises(RecfunnelError, match="features.nope: null drops a feature features=auto builds, but it builds "
                                             "none named 'nope'"):
        resolve_schema({**AUTO, "features": {"nope": None}}, data)


def test_an_ordinary_schema_is_validated_as_it_is(data):
    cfg = {"name": "ids", "features": {"hist_items": {"tower": "user", "kind": "sequence", "source": "history.item_id",
                                                      "table": "item_id"},
                                       "item_id": {"tower": "item", "kind": "categorical", "source": "item_id"}}}
    assert resolve_schema(cfg, data) == FeatureSchema.from_config(cfg)
    assert resolve_schema({**cfg, "auto": False}, data) == FeatureSchema.from_config(cfg)
    with pytest.raises(RecfunnelError, match=r"unknown key\(s\) \['max_vocab'\]"):
        resolve_schema({**cfg, "auto": False, "max_vocab": 3}, data)


@pytest.mark.parametrize("source, within", [("item.pop_count", None), ("item.pop_decayed", None),
                                            ("item.pop_count", "brand")])
def test_a_retriever_may_not_read_item_popularity_as_of_the_event(data, source, within):
    """In-batch training reads each item at its own event's time: refused for a retriever's schema,
    whether written by hand or built; a ranker's schema (scored at the query's time) may read it."""
    pop = {"tower": "item", "kind": "dense", "source": source, **({"within": within} if within else {})}
    cfg = {"name": "pop", "features": {"item_id": {"tower": "item", "kind": "categorical", "source": "item_id"},
                                       "busy": pop}}
    with pytest.raises(RecfunnelError, match=rf"features \(pop\): feature 'busy' \(source {source}\) reads an item's "
                                             r"popularity as of each event, in a retriever's item tower.*Remove it from "
                                             r"this schema; a ranker's schema may read it"):
        resolve_schema(cfg, data, where="features (pop)")
    assert resolve_schema(cfg, data, scored_at_query_time=True).names == ["item_id", "busy"]
    with pytest.raises(RecfunnelError, match="feature 'item_pop' .* in a retriever's item tower"):
        resolve_schema({**AUTO, "features": {"item_pop": {"tower": "item", "kind": "dense", "source": "item.pop_count"}}},
                       data)
    for name in ("ml100k", "synthetic", "synthetic_query", "synthetic_places", "places_geo"):  # the retrievers' schemas
        check_item_time_features(FeatureSchema.from_yaml(ROOT / "configs" / "features" / f"{name}.yaml"))


def test_the_auto_config_file_and_determinism(tmp_path):
    """A run is reloaded by rebuilding its schema from its saved config: read from the source files the
    first time, from the parquet cache after, the data must give the same schema and the same ids."""
    from omegaconf import OmegaConf

    from recfunnel.data.sources import load_split

    cfg = OmegaConf.load(ROOT / "configs/features/auto.yaml")
    data_cfg = {"name": "atomic_toy", "source": {"_target_": "recfunnel.data.atomic.load_atomic",
                                                 "dir": str(write_dataset(tmp_path / "src")), "dataset": "toy"}}
    first = load_split(data_cfg, tmp_path / "data")  # read from the files, then cached
    cached = load_split(data_cfg, tmp_path / "data")
    schema = resolve_schema(cfg, first)
    assert resolve_schema(cfg, cached) == schema and resolve_schema(cfg, first) == schema
    a, b = FeaturePipeline(schema, first), FeaturePipeline(schema, cached)
    assert a.num_embeddings == b.num_embeddings
    assert a.static_codes.keys() == b.static_codes.keys() and all((a.static_codes[k] == b.static_codes[k]).all()
                                                                  for k in a.static_codes)
    assert schema.name == "auto" and schema["user_city"].hash_size is None  # 20 values <= max_vocab 10000


# --- the pipeline serves it ---------------------------------------------------------------------------
def test_the_pipeline_serves_every_tower_of_the_auto_schema(data):
    schema = resolve_schema(AUTO, data)
    pipe = FeaturePipeline(schema, fresh(data), where="features (auto)")
    rows = np.arange(len(data.ts))
    sizes = pipe.num_embeddings
    for tower, ti in [*pipe.queries(rows).items(), ("item", pipe.items(data.item_idx[rows], data.ts[rows]))]:
        assert ti.sparse.keys() == [s.name for s in schema.tower(tower, "sparse")]
        assert ti.dense.shape == (len(rows), len(schema.tower(tower, "dense"))) and ti.dense.isfinite().all()
        for key, jt in ti.sparse.to_dict().items():
            values = jt.values().numpy()
            assert values.min(initial=0) >= 0 and values.max(initial=0) < sizes[schema[key].table_name], key
    catalogue = pipe.items(np.arange(data.num_items), pipe.catalogue_time())
    genres = catalogue.sparse["item_genres"]
    expected = [len(g) for g in data.tables.items["genres"]]
    assert genres.lengths().tolist() == expected  # one id per genre of each item
    assert set(QUERY_TOWERS) == set(pipe.queries(rows[:3]))


def test_generic_column_sources_in_a_hand_written_schema(data):
    cfg = {"name": "columns", "features": {
        "user_id": {"tower": "user", "kind": "categorical", "source": "user_id"},
        "city": {"tower": "user", "kind": "categorical", "source": "user.city"},
        "city_hashed": {"tower": "user", "kind": "categorical", "source": "user.city", "hash_size": 8},
        "tags": {"tower": "user", "kind": "multi_hot", "source": "user.tags"},
        "age": {"tower": "user", "kind": "dense", "source": "user.age", "transform": "log1p"},
        "age_bucket": {"tower": "context", "kind": "categorical", "source": "user.age", "buckets": [30, 50]},
        "item_id": {"tower": "item", "kind": "categorical", "source": "item_id"},
        "price": {"tower": "item", "kind": "dense", "source": "item.price"},
        "scores": {"tower": "item", "kind": "multi_hot", "source": "item.scores", "buckets": [5.0]},
        "genres": {"tower": "item", "kind": "multi_hot", "source": "item.genres"},
    }}
    pipe = FeaturePipeline(FeatureSchema.from_config(cfg), fresh(data))
    users, items = data.tables.users, data.tables.items
    assert pipe.num_embeddings["city"] == 21 and pipe.num_embeddings["tags"] == 5 and pipe.num_embeddings["scores"] == 3
    rows = np.arange(0, len(data.ts), 5)
    u, i = data.user_idx[rows], data.item_idx[rows]
    q = pipe.queries(rows)
    city = q["user"].sparse["city"].values().numpy()
    assert (city == 1 + np.searchsorted(sorted(set(users["city"])), users["city"].to_numpy()[u])).all()
    assert q["user"].sparse["city_hashed"].values().max() < 8
    assert q["user"].sparse["tags"].lengths().tolist() == [len(users["tags"][k]) for k in u]
    age = users["age"].to_numpy()[u]
    assert np.allclose(q["user"].dense[:, 0].numpy(), np.log1p(np.nan_to_num(age)))  # NaN → 0
    bucket = q["context"].sparse["age_bucket"].values().numpy()
    assert (bucket == np.where(np.isnan(age), 0, 1 + (age >= 30) + (age >= 50))).all()  # NaN → row 0
    it = pipe.items(i, data.ts[rows])
    assert np.allclose(it.dense[:, 0].numpy(), items["price"].to_numpy()[i])
    scores = it.sparse["scores"]
    assert scores.values().tolist() == [1 + (s >= 5.0) for k in i for s in items["scores"][k]]
    # item.genres keeps its CSR under its historical name and codes
    assert (pipe.genre_ptr == pipe.list_ptr["item.genres"]).all() and len(pipe.static_codes["genres"]) == pipe.genre_ptr[-1]


@pytest.mark.parametrize("feature, message", [
    ({"tower": "user", "kind": "categorical", "source": "user.shoe_size"},
     r"^features \(cols\): feature 'x' reads user.shoe_size, but this dataset's users table has no column 'shoe_size' "
     r"\(its columns: user_id, age, gender, city, country, email, tags, blank, activity\); remove the feature"),
    ({"tower": "item", "kind": "multi_hot", "source": "item.brand"},
     r"feature 'x' reads item.brand, but that column does not hold lists .*; make the feature kind: categorical"),
    ({"tower": "user", "kind": "categorical", "source": "user.tags"},
     r"feature 'x' reads user.tags, whose column holds lists; make the feature kind: multi_hot"),
    ({"tower": "user", "kind": "dense", "source": "user.gender"},
     r"feature 'x' reads user.gender, whose values are not all numbers; kind: dense needs a numeric column"),
    ({"tower": "item", "kind": "categorical", "source": "item.brand", "buckets": [1, 2]},
     r"feature 'x' reads item.brand, whose values are not all numbers; buckets needs a numeric column"),
])
def test_a_column_that_does_not_fit_is_one_clear_error(data, feature, message):
    cfg = {"name": "cols", "features": {"x": feature,
                                        "item_id": {"tower": "item", "kind": "categorical", "source": "item_id"}}}
    with pytest.raises(RecfunnelError, match=message) as err:
        FeaturePipeline(FeatureSchema.from_config(cfg), fresh(data), where="features (cols)")
    assert "\n" not in str(err.value)


def test_schema_checks_generic_sources_strictly():
    base = {"item_id": {"tower": "item", "kind": "categorical", "source": "item_id"}}
    for source, message in [("users.age", r"source='users.age' is not valid; choose one of: .*user.age.*, or "
                                          r"user.<column> / item.<column>"),
                            ("user.", "source='user.' is not valid"),
                            ("item.price", r"source item.price describes the item; put it in the item tower")]:
        cfg = {"features": {**base, "x": {"tower": "user", "kind": "categorical", "source": source}}}
        with pytest.raises(RecfunnelError, match=message):
            FeatureSchema.from_config(cfg)
    cfg = {"features": {**base, "x": {"tower": "item", "kind": "sequence", "source": "item.genres2"}}}
    with pytest.raises(RecfunnelError, match=r"kind \(for source item.genres2\)='sequence' is not valid; choose one of: "
                                             r"categorical, multi_hot, dense"):
        FeatureSchema.from_config(cfg)
    cfg = {"features": {**base, "x.y": {"tower": "item", "kind": "dense", "source": "item.price"}}}
    with pytest.raises(RecfunnelError, match="feature 'x.y': a feature name must be non-empty and without '.'"):
        FeatureSchema.from_config(cfg)


def test_the_synthetic_answer_keys_and_labels_are_never_features(caplog, monkeypatch):
    """The generator's planted truth (ANSWER_KEY_COLUMNS) and its event labels (purchase, revenue) would
    leak what a model should learn; price is an ordinary visible column. A feature written in
    ``features`` with a kind and source still reads an answer key, deliberately."""
    from recfunnel.data.synthetic import ANSWER_KEY_COLUMNS, generate_synthetic

    synthetic = SplitData.from_tables(generate_synthetic(200, 100, 2000, seed=0))
    monkeypatch.setattr("recfunnel.features.auto._logged", set())
    with caplog.at_level(logging.INFO, logger="recfunnel.features.auto"):
        schema = resolve_schema({"auto": True}, synthetic)
    sources = {f.source for f in schema.features}
    assert "item.price" in sources and {"user.age", "item.genres"} <= sources
    # auto reads the users and items tables (the interactions' answer key, query_cluster, never); the
    # places generator's users.taste is not in these tables
    tables = synthetic.tables
    table_keys = [key for key in ANSWER_KEY_COLUMNS
                  if key.split(".")[0] in ("users", "items") and key.split(".")[1] in getattr(tables, key.split(".")[0])]
    keys = {key.replace("users.", "user.").replace("items.", "item.") for key in table_keys}
    assert len(keys) == 5 and not keys & sources
    assert not any(word in source for source in sources for word in ("purchase", "revenue", "rating", "query"))
    for key in table_keys:
        assert f"{key} (answer key of the synthetic generator, not a feature)" in caplog.text
    edit = {"truth": {"tower": "item", "kind": "dense", "source": "item.appeal"}}
    assert "item.appeal" in {f.source for f in resolve_schema({"auto": True, "features": edit}, synthetic).features}


# --- end to end ---------------------------------------------------------------------------------------
def test_train_the_retriever_with_auto_features_on_atomic_files(tmp_path):
    """Needs RecDataModule.setup to call ``resolve_schema``."""
    write_dataset(tmp_path / "src")
    out = tmp_path / "run"
    proc = run("recfunnel.train", "data=atomic", f"data.source.dir={tmp_path / 'src'}", "data.source.dataset=toy",
               "features=auto", "debug=fast", "logger=csv", "data.batch_size=64", f"paths.data_dir={tmp_path / 'data'}",
               f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test/ndcg@10"] <= 1 and "valid/recall@10" in metrics
    assert "features=auto built schema 'auto'" in proc.stdout + proc.stderr
