"""Bad data is one clear error before anything is cached; duplicates and odd timestamps are handled
in one place (``Tables.validated``, called by ``load_tables``) for every source."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest

from recfunnel.data.dataset import SplitData
from recfunnel.data.movielens import GENRES
from recfunnel.data.sources import load_tables
from recfunnel.data.split import split_sizes
from recfunnel.data.tables import Tables
from recfunnel.utils.errors import RecfunnelError

from helpers import run

# user, item, rating, timestamp: 3 events per user (leave-one-out needs 3)
EVENTS = [(1, 1, 4, 100), (1, 2, 3, 200), (2, 1, 5, 150), (1, 3, 2, 300), (2, 2, 1, 250), (2, 3, 4, 350)]


def data_lines(events) -> str:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in events)


def grouplens(folder, u_data: str):
    """A GroupLens-layout folder with users 1-2, items 1-3 and ``u_data`` as its u.data."""
    folder.mkdir()
    (folder / "u.data").write_text(u_data)
    (folder / "u.user").write_text("1|30|M|writer|10001\n2|40|F|artist|10002\n")
    flags = "|".join(["0"] * len(GENRES))
    (folder / "u.item").write_text("".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x/{i}|{flags}\n"
                                           for i in (1, 2, 3)))
    return folder


def prepare(tmp_path, folder):
    return run("recfunnel.data.prepare", "data=ml100k", f"paths.data_dir={tmp_path / 'data'}",
               f"data.source.local_dir={folder}", f"hydra.run.dir={tmp_path / 'run'}")


def ml_config(tmp_path, folder) -> dict:
    return {"name": "tiny", "source": {"_target_": "recfunnel.data.movielens.load_movielens",
                                       "cache_dir": str(tmp_path / "data"), "local_dir": str(folder)}}


@pytest.mark.parametrize("u_data, message", [
    ("", "u.data has no interactions"),
    ("\n\n", "u.data has no interactions"),
    (data_lines(EVENTS).replace("\t300\n", "\t99999999999999999999\n"),
     "u.data:4: timestamp is not an integer within 64 bits: '99999999999999999999'"),
])
def test_bad_file_is_one_line_exit_2_and_nothing_cached(tmp_path, u_data, message):
    folder = grouplens(tmp_path / "gl", u_data)
    proc = prepare(tmp_path, folder)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {folder}/{message}") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "data" / "ml100k").exists()


def test_fixing_the_file_then_succeeds_no_stale_cache(tmp_path):
    folder = grouplens(tmp_path / "gl", data_lines(EVENTS + [(3, 1, 4, 400)]))  # user 3 is not in u.user
    proc = prepare(tmp_path, folder)
    assert proc.returncode == 2 and "u.data:7: user_id 3 is not in" in proc.stderr, proc.stderr
    assert not (tmp_path / "data" / "ml100k").exists()
    (folder / "u.data").write_text(data_lines(EVENTS))
    proc = prepare(tmp_path, folder)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_parquet(tmp_path / "data" / "ml100k" / "tables" / "interactions.parquet")) == len(EVENTS)


def test_exact_duplicates_dropped_once_for_every_source(tmp_path, caplog):
    dup = [EVENTS[0], EVENTS[3], (1, 2, 5, 200)]  # two exact repeats; a re-rating at the same time is kept
    folder = grouplens(tmp_path / "gl", data_lines(EVENTS[:4] + dup + EVENTS[4:]))
    with caplog.at_level(logging.WARNING):
        tables = load_tables(ml_config(tmp_path, folder), tmp_path / "data")
    expected = [e[:2] for e in EVENTS[:4]] + [(1, 2)] + [e[:2] for e in EVENTS[4:]]  # source order kept
    assert list(zip(tables.interactions["user_id"], tables.interactions["item_id"])) == expected
    assert tables.interactions.index.tolist() == list(range(len(expected)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["dataset tiny: dropped 2 duplicate interaction row(s) (same user_id, item_id, ts and "
                        "rating as an earlier row; the first kept)"]
    cached = Tables.load(tmp_path / "data" / "tiny" / "tables")  # what later runs read
    pd.testing.assert_frame_equal(cached.interactions, tables.interactions)


def test_ml100k_has_no_duplicates_so_the_split_is_unchanged(ml100k_data, caplog):
    with caplog.at_level(logging.WARNING):
        tables = ml100k_data.tables.validated("ml100k")
    assert not caplog.records and len(tables.interactions) == 100_000
    assert split_sizes(SplitData.from_tables(tables).split) == {"train": 98_114, "valid": 943, "test": 943}


def test_negative_timestamps_warn_once_and_are_kept(tmp_path, caplog):
    events = [(u, i, r, -t if u == 2 else t) for u, i, r, t in EVENTS]
    folder = grouplens(tmp_path / "gl", data_lines(events))
    with caplog.at_level(logging.WARNING):
        tables = load_tables(ml_config(tmp_path, folder), tmp_path / "data")
    assert tables.interactions["ts"].tolist() == [e[3] for e in events]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["dataset tiny: 3 interaction(s) have a negative timestamp (before 1970), "
                        "e.g. user_id 2, item_id 1, ts -150; kept as they are"]


def tiny_tables(**interactions) -> Tables:
    inter = {"user_id": [1, 1, 2], "item_id": [1, 2, 1], "ts": [1, 2, 3], "rating": [4.0, 3.0, 5.0]}
    inter.update(interactions)
    return Tables(interactions=pd.DataFrame(inter),
                  users=pd.DataFrame({"user_id": [1, 2], "age": 30, "gender": "M", "occupation": "x", "zip": "0"}),
                  items=pd.DataFrame({"item_id": [1, 2], "title": "t", "year": 2000.0, "genres": [["a"], ["b"]]}))


@pytest.mark.parametrize("tables, message", [
    (tiny_tables(user_id=[], item_id=[], ts=[], rating=[]), "dataset d has no interactions"),
    (tiny_tables(ts=[1.5, 2.0, 3.0]), "dataset d: timestamps must be integer unix seconds within int64, "
                                      "got dtype float64"),
    (tiny_tables(item_id=[1, 7, 8]), "dataset d: 2 interaction(s) reference item_id(s) absent from the items "
                                     "table, e.g. 7"),
    (Tables(interactions=tiny_tables().interactions, users=tiny_tables().users.iloc[[0, 1, 1]],
            items=tiny_tables().items), "dataset d: the users table lists user_id 2 more than once"),
])
def test_validated_rejects_what_downstream_cannot_use(tables, message):
    with pytest.raises(RecfunnelError, match=re.escape(message)):
        tables.validated("d")
