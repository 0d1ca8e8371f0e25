"""MovieLens readers: both layouts agree, bad files fail clearly, the fetch is cached and atomic."""

from __future__ import annotations

import re
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


def replace_bytes(path, old: bytes, new: bytes):
    path.write_bytes(path.read_bytes().replace(old, new))


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
    with pytest.raises(RecfunnelError, match=r"u\.data:3: item_id is not an integer"):
        read_grouplens(folder)


@pytest.mark.parametrize("field, value, message", [
    (3, "99999999999999999999", "timestamp is not an integer within 64 bits: '99999999999999999999'"),
    (3, "8.8e9", None),  # an integral float is a valid timestamp (RecBole types numbers as float)
    (3, "881250949.5", "timestamp is not an integer"),
    (0, "1e30", "user_id is not an integer within 64 bits"),
    (1, "-", "item_id is not an integer"),
    (2, "1e400", "rating is not a finite number: '1e400'"),
    (2, "nan", "rating is not a finite number"),
])
def test_bad_number_names_file_line_and_field(tmp_path, field, value, message):
    folder = write_grouplens(tmp_path / "gl")
    rows = [list(map(str, e)) for e in EVENTS]
    rows[2][field] = value
    # A blank line before the bad one: the reported line is still the file's own line number.
    lines = ["\t".join(r) + "\n" for r in rows]
    (folder / "u.data").write_text(lines[0] + "\n" + "".join(lines[1:]))
    if message is None:
        assert read_grouplens(folder).interactions["ts"].tolist()[2] == 8_800_000_000
        return
    with pytest.raises(RecfunnelError, match=r"u\.data:4: " + re.escape(message)) as err:
        read_grouplens(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layout, content", [
    ("grouplens", ""), ("grouplens", "\n  \n\n"),
    ("recbole", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"),  # a header only
])
def test_empty_interactions_file_is_an_error(tmp_path, layout, content):
    folder = (write_grouplens if layout == "grouplens" else write_recbole)(tmp_path / layout)
    name = "u.data" if layout == "grouplens" else "ml-100k.inter"
    (folder / name).write_text(content)
    with pytest.raises(RecfunnelError, match=re.escape(f"{folder / name} has no interactions")):
        load_movielens(tmp_path / "cache", local_dir=folder)


def test_unknown_item_names_file_and_line(tmp_path):
    folder = write_grouplens(tmp_path / "gl")
    with open(folder / "u.data", "a") as f:
        f.write("196\t999\t4\t881250950\n")
    with pytest.raises(RecfunnelError, match=r"u\.data:5: item_id 999 is not in .*u\.item"):
        read_grouplens(folder)


def test_grouplens_files_are_latin1(tmp_path):
    """The GroupLens release is latin-1: a byte such as 0xe9 is 'é' in u.item and in u.user alike."""
    folder = write_grouplens(tmp_path / "gl")
    replace_bytes(folder / "u.item", b"Kolya", b"Caf\xe9")
    replace_bytes(folder / "u.user", b"executive", b"cadre sup\xe9rieur")
    tables = read_grouplens(folder)
    assert tables.items.set_index("item_id").loc[242, "title"] == "Café"
    assert tables.users.set_index("user_id").loc[186, "occupation"] == "cadre supérieur"


def test_recbole_files_must_be_utf8(tmp_path):
    folder = write_recbole(tmp_path / "rb")
    replace_bytes(folder / "ml-100k.item", b"Kolya", "Café".encode())
    assert read_recbole(folder).items.set_index("item_id").loc[242, "title"] == "Café"
    replace_bytes(folder / "ml-100k.user", b"executive", b"cadre sup\xe9rieur")  # latin-1, not UTF-8
    with pytest.raises(RecfunnelError, match=r"ml-100k\.user:3: byte b'\\xe9' at column 19 is not valid utf-8; "
                                             r"re-encode the file as UTF-8") as err:
        read_recbole(folder)
    assert "\n" not in str(err.value)


def test_missing_folder_says_how_to_fetch(tmp_path):
    with pytest.raises(RecfunnelError, match=r"^data\.source\.local_dir=.* does not exist.*"
                                             r"data\.source\.local_dir=null to fetch"):
        load_movielens(tmp_path / "cache", local_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecfunnelError, match="lacks u.data, u.user, u.item.*data.source.local_dir=null to fetch"):
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
