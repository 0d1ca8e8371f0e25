"""Dataset readers: RecBole atomic files, the MovieLens releases in their own formats, one's own
parquet / CSV tables. Each is tested on a small fixture written in exactly its format; bad inputs
are one line and exit 2 from ``prepare`` and leave no cache; string ids go all the way to training."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest

from recfunnel.data.atomic import load_atomic
from recfunnel.data.dataset import SplitData
from recfunnel.data.movielens import load_movielens, load_release, read_grouplens
from recfunnel.data.split import split_sizes
from recfunnel.data.table import load_table
from recfunnel.data.tables import Tables
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, ROOT, run

# --- RecBole atomic files -------------------------------------------------------------------------
INTER = [("u1", "i1", 4, 100), ("u2", "i2", 3.5, 90), ("u1", "i3", 2, 300), ("u2", "i1", 5, 150),
         ("u1", "i2", 1, 200), ("u2", "i3", 4, 90)]


def write_atomic(folder, name="toy", inter=INTER, header="user_id:token\titem_id:token\trating:float\ttimestamp:float",
                 user=True, item=True):
    """``folder/name.inter`` (+ ``.user`` with a float field, ``.item`` with token_seq and float_seq fields)."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.inter").write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in inter))
    if user:
        (folder / f"{name}.user").write_text("user_id:token\tage:float\tgender:token\n"
                                             "u2\t41\tF\nu1\t\tM\nu3\t30\tF\n")
    if item:
        (folder / f"{name}.item").write_text(
            "item_id:token\ttitle:token_seq\tgenres:token_seq\tyear:float\tscores:float_seq\n"
            "i1\tCafé Society\tDrama Comedy\t2016\t0.5 1.5\n"
            "i2\tHeat\t\t\t\n"
            "i3\tUp\tAnimation\t2009\t-2\n")
    return folder


def test_atomic_with_user_and_item_files(tmp_path):
    t = load_atomic(write_atomic(tmp_path / "a"), "toy")
    inter = t.interactions
    assert list(inter.columns) == ["user_id", "item_id", "ts", "rating"]
    assert list(zip(inter["user_id"], inter["item_id"])) == [r[:2] for r in INTER]  # file order kept
    assert inter["ts"].tolist() == [r[3] for r in INTER] and inter["ts"].dtype == np.int64
    assert inter["rating"].tolist() == [4.0, 3.5, 2.0, 5.0, 1.0, 4.0] and inter["rating"].dtype == np.float32
    users = t.users.set_index("user_id")
    assert users.loc["u2", "age"] == 41.0 and np.isnan(users.loc["u1", "age"]) and users.loc["u3", "gender"] == "F"
    items = t.items.set_index("item_id")
    assert items.loc["i1", "title"] == ["Café", "Society"] and items.loc["i1", "genres"] == ["Drama", "Comedy"]
    assert items.loc["i2", "genres"] == [] and np.isnan(items.loc["i2", "year"]) and items.loc["i3", "year"] == 2009.0
    assert items.loc["i1", "scores"] == [0.5, 1.5] and items.loc["i2", "scores"] == [] and items.loc["i3", "scores"] == [-2.0]


def test_atomic_without_user_item_files_nor_timestamp(tmp_path, caplog):
    rows = [("b", "y"), ("a", "x"), ("b", "x"), ("a", "z"), ("c", "y")]
    folder = write_atomic(tmp_path / "a", inter=rows, header="uid:token\tiid:token", user=False, item=False)
    with caplog.at_level(logging.WARNING):
        t = load_atomic(folder, "toy", user_field="uid", item_field="iid")
    assert t.interactions["ts"].tolist() == [0, 1, 2, 3, 4]  # file order is the event order
    assert t.interactions["rating"].tolist() == [1.0] * 5
    assert t.users["user_id"].tolist() == ["b", "a", "c"] and list(t.users.columns) == ["user_id"]
    assert t.items["item_id"].tolist() == ["y", "x", "z"] and list(t.items.columns) == ["item_id"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no field 'timestamp' in the header (fields: uid, iid); file order" in warnings[0]


def test_atomic_integer_tokens_become_integers_only_when_exact(tmp_path):
    rows = [(1, 10, 3, 1), (2, 10, 3, 2), (1, 20, 3, 3)]
    t = load_atomic(write_atomic(tmp_path / "a", inter=rows, user=False, item=False), "toy")
    assert t.interactions["user_id"].dtype == np.int64 and t.items["item_id"].tolist() == [10, 20]
    rows = [(1, "010", 3, 1), (2, "10", 3, 2)]  # "010" is not the integer 10 written plainly
    t = load_atomic(write_atomic(tmp_path / "b", inter=rows, user=False, item=False), "toy")
    assert t.items["item_id"].tolist() == ["010", "10"] and t.users["user_id"].tolist() == [1, 2]


def test_string_ids_and_list_columns_survive_the_cache_and_the_split(tmp_path):
    cfg = {"name": "atomic_toy", "source": {"_target_": "recfunnel.data.atomic.load_atomic",
                                            "dir": str(write_atomic(tmp_path / "a")), "dataset": "toy"}}
    from recfunnel.data.sources import load_tables

    tables = load_tables(cfg, tmp_path / "data")
    cached = Tables.load(tmp_path / "data" / "atomic_toy" / "tables")
    for name in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(cached, name), getattr(tables, name), check_dtype=False)
    assert cached.items.set_index("item_id").loc["i1", "scores"] == [0.5, 1.5]
    data = SplitData.from_tables(cached)
    assert data.tables.users["user_id"].tolist() == ["u1", "u2", "u3"]  # dense indices follow the sorted ids
    assert data.user_idx.tolist() == [0, 1, 0, 1, 0, 1] and data.item_idx.tolist() == [0, 1, 2, 0, 1, 2]
    assert split_sizes(data.split) == {"train": 2, "valid": 2, "test": 2}
    # time order, ties broken by file position: u2's events at 90 (i2 then i3) come before 150 (i1)
    assert data.split.tolist() == [0, 0, 2, 2, 1, 1]


def test_feature_on_an_absent_column_names_it_and_the_columns_there_are(tmp_path):
    data = SplitData.from_tables(load_atomic(write_atomic(tmp_path / "a", user=False), "toy").validated("toy"))
    schema = FeatureSchema.from_yaml(ROOT / "configs/features/ml100k.yaml")
    with pytest.raises(RecfunnelError) as err:
        FeaturePipeline(schema, data, where="features (ml100k)")
    assert str(err.value).startswith("features (ml100k): feature 'age' reads user.age, but this dataset's users table "
                                     "has no column 'age' (its columns: user_id); remove the feature")
    schema = FeatureSchema.from_yaml(ROOT / "configs/features/ml100k_seq.yaml")
    assert FeaturePipeline(schema, data).num_items == 3  # ids and history only: fits any dataset


# --- MovieLens releases -----------------------------------------------------------------------------
def write_ml1m(folder):
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                        "661::Café au lait (1993)::Comedy|Drama\n".encode("latin-1"))
    return folder


def test_ml1m(tmp_path):
    t = load_release("1m", write_ml1m(tmp_path / "ml-1m"))
    assert t.interactions.values.tolist() == [[1, 1193, 978300760, 5.0], [1, 661, 978302109, 3.0],
                                              [2, 1193, 978298413, 4.0]]
    assert t.users.to_dict("records") == [{"user_id": 1, "age": 1, "gender": "F", "occupation": "10", "zip": "48067"},
                                          {"user_id": 2, "age": 56, "gender": "M", "occupation": "16", "zip": "70072"}]
    assert t.items.to_dict("records") == [
        {"item_id": 1193, "title": "One Flew Over the Cuckoo's Nest", "year": 1975.0, "genres": ["Drama"]},
        {"item_id": 661, "title": "Café au lait", "year": 1993.0, "genres": ["Comedy", "Drama"]}]


@pytest.mark.parametrize("line, message", [
    ("2::1193::4\n", "ratings.dat:4: expected 4 fields separated by '::', got 3"),
    ("2::1193::4::97829841x\n", "ratings.dat:4: timestamp is not an integer within 64 bits: '97829841x'"),
    ("3::1193::4::978298413\n", "ratings.dat:4: user_id 3 is not in"),
])
def test_ml1m_bad_line_is_named(tmp_path, line, message):
    folder = write_ml1m(tmp_path / "ml-1m")
    with open(folder / "ratings.dat", "a") as f:
        f.write(line)
    with pytest.raises(RecfunnelError, match=re.escape(message)):
        load_release("1m", folder)


def test_ml10m(tmp_path):
    folder = tmp_path / "ml-10m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::122::5::838985046\n1::185::4.5::838983525\n\n7::122::0.5::838983421\n")
    (folder / "movies.dat").write_text("122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action\n"
                                       "186::Ночной дозор (2004)::(no genres listed)\n", encoding="utf-8")
    t = load_release("10m", folder)
    assert t.interactions["rating"].tolist() == [5.0, 4.5, 0.5] and t.interactions["user_id"].tolist() == [1, 1, 7]
    assert t.users.to_dict("records") == [{"user_id": 1}, {"user_id": 7}]  # no users.dat: ids only
    items = t.items.set_index("item_id")
    assert items.loc[186, "title"] == "Ночной дозор" and items.loc[186, "genres"] == []
    assert items.loc[185, "title"] == "Net, The" and items.loc[185, "year"] == 1995.0


def write_ml20m(folder, ratings="1,2,3.5,1112486027\n1,29,3.5,1112484676\n2,29,5.0,974820889\n"):
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    (folder / "movies.csv").write_text('movieId,title,genres\n2,Jumanji (1995),Adventure|Children|Fantasy\n'
                                       '29,"City of Lost Children, The (Cité des enfants perdus, La) (1995)",Drama\n'
                                       '99,Babylon 5,(no genres listed)\n', encoding="utf-8")
    return folder


@pytest.mark.parametrize("version", ["20m", "25m", "32m"])
def test_ml20m_and_later_csv(tmp_path, version):
    t = load_release(version, write_ml20m(tmp_path / f"ml-{version}"))
    assert t.interactions.values.tolist() == [[1, 2, 1112486027, 3.5], [1, 29, 1112484676, 3.5],
                                              [2, 29, 974820889, 5.0]]
    items = t.items.set_index("item_id")
    assert items.loc[29, "title"] == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert items.loc[29, "year"] == 1995.0 and items.loc[2, "genres"] == ["Adventure", "Children", "Fantasy"]
    assert items.loc[99, "genres"] == [] and items.loc[99, "title"] == "Babylon 5" and np.isnan(items.loc[99, "year"])
    assert t.users["user_id"].tolist() == [1, 2]


@pytest.mark.parametrize("ratings, message", [
    ("1,2,3.5,1112486027\n1,29,x,1112484676\n", "ratings.csv:3: rating is not a finite number: 'x'"),
    ("1,2,3.5,1112486027\n\n1,29,3.5\n", "ratings.csv:4: expected 4 fields separated by ',', got 3"),
    ("1,2,3.5,1112486027\n1,7,3.5,1112484676\n", "ratings.csv:3: item_id 7 is not in"),
])
def test_ml20m_bad_ratings_line_is_named(tmp_path, ratings, message):
    with pytest.raises(RecfunnelError, match=re.escape(message)):
        load_release("20m", write_ml20m(tmp_path / "ml-20m", ratings))


def test_ml100k_through_the_release_config_and_release_errors(tmp_path, ml100k_data):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t2\t3\t881250949\n2\t1\t5\t881250950\n")
    (folder / "u.user").write_text("1|30|M|writer|10001\n2|40|F|artist|10002\n")
    flags = "|".join(["0"] * 18)
    (folder / "u.item").write_text(f"1|Film 1 (1995)|01-Jan-1995||http://x/1|1|{flags}\n"
                                   f"2|Film 2 (1996)|01-Jan-1996||http://x/2|0|{flags}\n")
    a, b = load_release("100k", folder), read_grouplens(folder)
    for name in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    fetched = load_release("100k", None, cache_dir=DATA_DIR)  # dir null: the recbole wheel's copy, as data=ml100k
    pd.testing.assert_frame_equal(fetched.interactions, load_movielens(DATA_DIR).interactions)
    with pytest.raises(RecfunnelError, match="data.source.version=2m is not a MovieLens release"):
        load_release("2m", folder)
    with pytest.raises(RecfunnelError, match=r"MovieLens-1M needs ratings.dat, users.dat, movies.dat\. Download"):
        load_release("1m", None)
    with pytest.raises(RecfunnelError, match=r"^data\.source\.dir=.* does not exist"):
        load_release("100k", tmp_path / "nowhere")


# --- one's own tables --------------------------------------------------------------------------------
def test_table_from_parquet(tmp_path):
    pd.DataFrame({"user": ["a", "b", "a"], "movie": [10, 20, 20], "stars": [4, 5, 3],
                  "when": pd.to_datetime(["2020-01-01 00:00:10", "2020-01-01 00:00:00", "2020-01-02 00:00:00"]),
                  "device": ["tv", "phone", "tv"]}).to_parquet(tmp_path / "inter.parquet")
    pd.DataFrame({"movie": [10, 20, 30], "genres": [["x"], [], ["y", "z"]]}).to_parquet(tmp_path / "items.parquet")
    t = load_table(tmp_path / "inter.parquet", items=tmp_path / "items.parquet",
                   columns={"user_id": "user", "item_id": "movie", "ts": "when", "rating": "stars"})
    assert t.interactions.to_dict("records") == [
        {"user_id": "a", "item_id": 10, "ts": 1577836810, "rating": 4.0, "device": "tv"},
        {"user_id": "b", "item_id": 20, "ts": 1577836800, "rating": 5.0, "device": "phone"},
        {"user_id": "a", "item_id": 20, "ts": 1577923200, "rating": 3.0, "device": "tv"}]
    assert t.items["genres"].tolist() == [["x"], [], ["y", "z"]] and t.users["user_id"].tolist() == ["a", "b"]


def test_table_from_csv_without_time_or_rating(tmp_path, caplog):
    (tmp_path / "inter.csv").write_text("u,i\n7,x\n3,y\n7,y\n")
    (tmp_path / "users.csv").write_text('u,city\n3,"Paris, FR"\n7,Oslo\n')
    with caplog.at_level(logging.WARNING):
        t = load_table(tmp_path / "inter.csv", users=tmp_path / "users.csv",
                       columns={"user_id": "u", "item_id": "i", "ts": None, "rating": None})
    assert t.interactions.values.tolist() == [[7, "x", 0, 1.0], [3, "y", 1, 1.0], [7, "y", 2, 1.0]]
    assert t.users.to_dict("records") == [{"user_id": 3, "city": "Paris, FR"}, {"user_id": 7, "city": "Oslo"}]
    assert any("file order is the event order" in r.getMessage() for r in caplog.records)


# --- bad inputs: one line, exit 2, no cache -----------------------------------------------------------
def _atomic(tmp_path, **kw):
    folder = write_atomic(tmp_path / "src", **kw)
    return [f"data.source.dir={folder}", "data.source.dataset=toy"], "atomic_toy"


def _table(tmp_path):
    (tmp_path / "inter.csv").write_text("user_id,item_id,time\n1,2,3\n")
    return [f"data.source.interactions={tmp_path / 'inter.csv'}"], "table"


BAD = {
    "missing required field": (lambda p: _atomic(p, inter=[r[:1] + r[2:] for r in INTER],
                                                 header="user_id:token\trating:float\ttimestamp:float"),
                               r"toy.inter:1: the header has no field 'item_id' \(fields: user_id, rating, timestamp\); "
                               r"set data.source.item_field"),
    "unknown field type": (lambda p: _atomic(p, header="user_id:token\titem_id:token\trating:int\ttimestamp:float"),
                           r"toy.inter:1: header field 'rating:int' has unknown type 'int'; use one of token, float, "
                           r"token_seq, float_seq"),
    "empty interactions": (lambda p: _atomic(p, inter=[]), r"toy.inter has no interactions below its header line"),
    "unparsable number": (lambda p: _atomic(p, inter=INTER[:2] + [("u1", "i3", "five", 300)]),
                          r"toy.inter:4: field rating is not a finite number: 'five'"),
    "wrong field count": (lambda p: _atomic(p, inter=INTER[:3] + [("u1", "i3", 2)]),
                          r"toy.inter:5: expected 4 fields separated by '\\t', got 3"),
    "unknown item": (lambda p: _atomic(p, inter=INTER + [("u1", "i9", 2, 400)]),
                     r"toy.inter:8: item_id i9 is not in .*toy.item"),
    "absent mapped column": (_table, r"inter.csv: data.source.columns.ts='timestamp' is not a column of the file; "
                                     r"its columns: user_id, item_id, time \(or set data.source.columns.ts=null\)"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_cached(tmp_path, case):
    make, message = BAD[case]
    overrides, name = make(tmp_path)
    data = "table" if case == "absent mapped column" else "atomic"
    proc = run("recfunnel.data.prepare", f"data={data}", *overrides, f"paths.data_dir={tmp_path / 'data'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "data" / name / "tables").exists()


def test_prepare_prints_the_statistics_of_an_atomic_dataset(tmp_path):
    folder = write_atomic(tmp_path / "src")
    proc = run("recfunnel.data.prepare", "data=atomic", f"data.source.dir={folder}", "data.source.dataset=toy",
               f"paths.data_dir={tmp_path / 'data'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dataset atomic_toy" in proc.stdout
    stats = {m.group(1).strip(): m.group(2) for m in re.finditer(r"│ ([^│]+?)\s*│\s*([\d.,]+) │", proc.stdout)}
    assert (stats["users"], stats["items"], stats["interactions"]) == ("3", "3", "6")
    assert (stats["split train"], stats["split valid"], stats["split test"]) == ("2", "2", "2")
    assert (tmp_path / "data" / "atomic_toy" / "tables" / "interactions.parquet").exists()


def test_prepare_with_the_movielens_and_table_configs(tmp_path):
    data = tmp_path / "data"
    proc = run("recfunnel.data.prepare", "data=movielens", "data.source.version=1m",
               f"data.source.dir={write_ml1m(tmp_path / 'ml-1m')}", f"paths.data_dir={data}")
    assert proc.returncode == 0 and "dataset ml1m" in proc.stdout, proc.stderr[-2000:]
    assert len(pd.read_parquet(data / "ml1m" / "tables" / "interactions.parquet")) == 3
    (tmp_path / "events.tsv").write_text("who\twhat\twhen\nann\tx\t2\nbob\tx\t1\n")
    proc = run("recfunnel.data.prepare", "data=table", "data.name=mine", f"data.source.interactions={tmp_path / 'events.tsv'}",
               "data.source.columns.user_id=who", "data.source.columns.item_id=what", "data.source.columns.ts=when",
               "data.source.columns.rating=null", f"paths.data_dir={data}")
    assert proc.returncode == 0 and "dataset mine" in proc.stdout, proc.stderr[-2000:]
    assert pd.read_parquet(data / "mine" / "tables" / "interactions.parquet")["ts"].tolist() == [2, 1]


# --- end to end: train on one's own atomic dataset ----------------------------------------------------
def write_big_atomic(folder, item_token: str) -> None:
    """60 users x 12 events over 40 items (tokens ``item_token % i``), times increasing per user."""
    rng = np.random.default_rng(0)
    rows = [(f"user{u}", item_token % int(i), int(rng.integers(1, 6)), 1_000_000 + 3600 * (12 * u + k))
            for u in range(60) for k, i in enumerate(rng.choice(40, 12, replace=False))]
    write_atomic(folder, inter=rows, user=False, item=False)


def train_atomic(tmp_path, item_token: str):
    write_big_atomic(tmp_path / "src", item_token)
    out = tmp_path / "run"
    proc = run("recfunnel.train", "data=atomic", f"data.source.dir={tmp_path / 'src'}", "data.source.dataset=toy",
               "features=ml100k_seq", "debug=fast", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
               f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test/ndcg@10"] <= 1 and "valid/recall@10" in metrics


def test_train_on_an_atomic_dataset(tmp_path):
    train_atomic(tmp_path, "%d")


def test_train_on_an_atomic_dataset_with_string_item_tokens(tmp_path):
    train_atomic(tmp_path, "item%d")


def test_the_whole_funnel_on_an_atomic_dataset_without_item_attributes(tmp_path):
    """No .item file: no genres, no years. The ranker reads ids and history; re-ranking's genre and
    freshness stages find nothing to act on and pass the lists through."""
    write_big_atomic(tmp_path / "src", "item%d")
    out = tmp_path / "funnel"
    retriever = ["data=atomic", f"data.source.dir={tmp_path / 'src'}", "data.source.dataset=toy", "features=ml100k_seq"]
    proc = run("recfunnel.funnel", "features=ml100k_seq", "debug=fast", "logger=csv", f"paths.data_dir={tmp_path / 'data'}",
               "funnel.timing_users=3", "pairs.candidates=20", "pairs.hard_pool=20",
               "retriever.overrides=[" + ",".join(f"'{o}'" for o in retriever) + "]", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test/final/ndcg@10"] <= metrics["test/final/recall@10"] <= 1
