"""MovieLens readers: both layouts agree, bad files fail clearly, the fetch is cached and atomic."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from recfunnel.data.movielens import GENRES, fetch_recbole, load_movielens, read_grouplens, read_recbole
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR

EVENTS = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (196, 1, 5, 881250949), (22, 267, 1, 878887116)]
USERS = [(22, 25, "M", "writer", "40206"), (186, 39, "F", "executive", "00000"), (196, 49, "M", "writer", "55105")]
ITEMS = [(1, "Toy Story", "01-Jan-1995", 1995, ["Animation", "Children's", "Comedy"]),
         (242, "Kolya", "24-Jan-1997", 1997, ["Comedy"]),
         (267, "unknown", "", None, ["unknown"]),
         (302, "L.A. Confidential", "01-Jan-1997", 1997, ["Crime", "Film-Noir", "Mystery", "Thriller"])]


def write_grouplens(folder):
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in EVENTS))
    (folder / "u.user").write_text("".join("|".join(map(str, row)) + "\n" for row in USERS))
    lines = []
    for iid, title, date, year, genres in ITEMS:
        flags = "|".join("1" if g in genres else "0" for g in GENRES)
        full_title = f"{title} ({year})" if year else title
        lines.append(f"{iid}|{full_title}|{date}||http://example/{iid}|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return folder


def write_recbole(folder):
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in EVENTS))
    (folder / "ml-100k.user").write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                                         + "".join("\t".join(map(str, row)) + "\n" for row in USERS))
    (folder / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(f"{iid}\t{'unkonwn' if title == 'unknown' else title}\t{year or 'unkonwn'}\t{' '.join(g)}\n"
                  for iid, title, _, year, g in ITEMS))
    return folder


def test_grouplens_and_recbole_readers_agree(tmp_path):
    a = read_grouplens(write_grouplens(tmp_path / "gl"))
    b = read_recbole(write_recbole(tmp_path / "rb"))
    for name in ("interactions", "users", "items"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=True)
    assert a.interactions["item_id"].tolist() == [e[1] for e in EVENTS]  # source order kept
    assert a.items.set_index("item_id").loc[302, "genres"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert pd.isna(a.items.set_index("item_id").loc[267, "year"])


def test_malformed_line_names_file_and_line(tmp_path):
    folder = write_grouplens(tmp_path / "gl")
    lines = (folder / "u.data").read_text().splitlines()
    lines[2] = "196\t1\t5"  # a field missing
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecfunnelError, match=r"u\.data:3: expected 4 fields"):
        read_grouplens(folder)
    lines[2] = "196\tabc\t5\t881250949"
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(RecfunnelError, match=r"u\.data:3: item_id is not a number"):
        read_grouplens(folder)


def test_missing_folder_says_how_to_fetch(tmp_path):
    with pytest.raises(RecfunnelError, match="does not exist.*data.local_dir=null to fetch"):
        load_movielens(tmp_path / "cache", local_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecfunnelError, match="lacks u.data, u.user, u.item.*fetch"):
        load_movielens(tmp_path / "cache", local_dir=tmp_path / "empty")


def test_fetch_is_cached(ml100k_data):
    folder = fetch_recbole(DATA_DIR)  # already fetched by the fixture
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    start = time.perf_counter()
    assert fetch_recbole(DATA_DIR) == folder
    assert time.perf_counter() - start < 0.5  # no download the second time
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]  # nothing half-written


def test_real_ml100k_shape(ml100k_data):
    t = ml100k_data.tables
    assert (len(t.interactions), len(t.users), len(t.items)) == (100_000, 943, 1682)
    assert t.interactions.groupby("user_id").size().min() >= 20
    assert set(g for gs in t.items["genres"] for g in gs) <= set(GENRES)
