"""MovieLens releases in their own formats (nothing else in the codebase knows these formats).

- 100K: the GroupLens layout (``u.data`` tab-separated ``user item rating timestamp``; ``u.user``
  and ``u.item`` pipe-separated, 19 genre flags) or the copy carried by the ``recbole==1.2.1``
  wheel (``ml-100k.inter``/``.user``/``.item``). Both readers give identical canonical tables.
- 1M: ``ratings.dat`` ``UserID::MovieID::Rating::Timestamp``, ``users.dat``
  ``UserID::Gender::Age::Occupation::Zip-code``, ``movies.dat`` ``MovieID::Title::Genres`` (genres
  split on ``|``, the year taken from the title's "(1995)"), latin-1 as released.
- 10M: ``ratings.dat`` and ``movies.dat`` as 1M, UTF-8; no users file (the users table holds ids).
- 20M, 25M, 32M: ``ratings.csv`` (header ``userId,movieId,rating,timestamp``) and ``movies.csv``
  (header ``movieId,title,genres``; quoted titles may hold commas; "(no genres listed)" is []), UTF-8.

Ratings files are read by pandas' C reader (tens of millions of lines); when it fails, the per-line
reader names the first bad line, as it does for the small files.

Encodings, decided per format: the GroupLens files are latin-1, as released (``u.item`` has titles
such as "Café"), and are all read as latin-1, which decodes any byte; RecBole's atomic files are
UTF-8, and a byte that is not UTF-8 is an error naming file and line. Every malformed line, bad
number (an id, age or timestamp must be an integer within 64 bits, a rating a finite number) or
id missing from the users/items file raises ``RecfunnelError`` naming file and line, and an empty
file raises one naming the file. Checks of the assembled tables (duplicates, timestamps) are
``Tables.validated``'s, for every source.
"""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.data.table import check_known, column, decode, line_of_row, parse_rows, read_fast, scan_rows
from recfunnel.data.tables import Tables, id_table
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path

log = logging.getLogger(__name__)

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_PREFIX = "recbole/dataset_example/ml-100k/"
RECBOLE_FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
GROUPLENS_FILES = ("u.data", "u.user", "u.item")
# The 19 genre flags of u.item, in the order of u.genre.
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western"]
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
HINT_100K = "Restore it from the ml-100k release, or set data.source.local_dir=null to fetch the dataset."


def _interactions(path: Path, skip_header: bool, encoding: str) -> tuple[pd.DataFrame, list[int]]:
    """The interactions of ``path`` (tab separated in both layouts) and the line number of each."""
    rows, lines = parse_rows(path, "\t", 4, skip_header, encoding, "interactions", HINT_100K)
    return pd.DataFrame({
        "user_id": column(path, rows, lines, 0, "user_id"),
        "item_id": column(path, rows, lines, 1, "item_id"),
        "ts": column(path, rows, lines, 3, "timestamp"),
        "rating": column(path, rows, lines, 2, "rating", integer=False),
    }), lines


def _users(path: Path, sep: str, skip_header: bool, encoding: str) -> pd.DataFrame:
    rows, lines = parse_rows(path, sep, 5, skip_header, encoding, "users", HINT_100K)
    return pd.DataFrame({
        "user_id": column(path, rows, lines, 0, "user_id"),
        "age": column(path, rows, lines, 1, "age"),
        "gender": [r[2] for r in rows],
        "occupation": [r[3] for r in rows],
        "zip": [r[4] for r in rows],
    })


def _year(text: str) -> float:
    return float(text) if text.isdigit() else np.nan


def _tables(folder: Path, files: tuple[str, ...], items: pd.DataFrame, sep: str, skip_header: bool,
            encoding: str) -> Tables:
    """Canonical tables from the interactions and users files of ``files`` and the parsed ``items``."""
    inter_path, users_path, items_path = (folder / f for f in files)
    interactions, lines = _interactions(inter_path, skip_header, encoding)
    users = _users(users_path, sep, skip_header, encoding)
    check_known(inter_path, lines, interactions["user_id"], users["user_id"], users_path)
    check_known(inter_path, lines, interactions["item_id"], items["item_id"], items_path)
    return Tables(interactions=interactions, users=users, items=items)


def read_grouplens(folder: str | Path) -> Tables:
    """Read the GroupLens release layout: ``u.data`` (tab), ``u.user`` and ``u.item`` (pipe), all latin-1."""
    folder = _require(folder, GROUPLENS_FILES)
    path = folder / "u.item"
    items_rows, lines = parse_rows(path, "|", 5 + len(GENRES), False, "latin-1", "items", HINT_100K)
    titles, years, genres = [], [], []
    for r in items_rows:
        m = _TITLE_YEAR.match(r[1])
        titles.append(m.group(1) if m else r[1])
        # The year in the title is the one RecBole keeps; fall back to the release date.
        years.append(float(m.group(2)) if m else _year(r[2][-4:]))
        genres.append([g for g, flag in zip(GENRES, r[5:]) if flag == "1"])
    items = pd.DataFrame({"item_id": column(path, items_rows, lines, 0, "item_id"),
                          "title": titles, "year": years, "genres": genres})
    return _tables(folder, GROUPLENS_FILES, items, "|", False, "latin-1")


def read_recbole(folder: str | Path) -> Tables:
    """Read RecBole's atomic files (UTF-8, tab separated, one header line)."""
    folder = _require(folder, RECBOLE_FILES)
    path = folder / "ml-100k.item"
    items_rows, lines = parse_rows(path, "\t", 4, True, "utf-8", "items", HINT_100K)
    # RecBole spells item 267's missing title and year "unkonwn"; GroupLens says "unknown" and no date.
    items = pd.DataFrame({
        "item_id": column(path, items_rows, lines, 0, "item_id"),
        "title": ["unknown" if r[1] == "unkonwn" else r[1] for r in items_rows],
        "year": [_year(r[2]) for r in items_rows],
        "genres": [r[3].split(" ") if r[3] else [] for r in items_rows],
    })
    return _tables(folder, RECBOLE_FILES, items, "\t", True, "utf-8")


def _require(folder: str | Path, files: tuple[str, ...]) -> Path:
    folder = Path(folder)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise RecfunnelError(
            f"MovieLens-100K folder {folder} lacks {', '.join(missing)}. Point data.source.local_dir at a "
            f"folder holding {', '.join(files)}, or set data.source.local_dir=null to fetch the dataset from "
            f"the {RECBOLE_WHEEL} wheel (`python -m recfunnel.data.prepare data=ml100k`).")
    return folder


def fetch_recbole(cache_dir: str | Path) -> Path:
    """Download the ``recbole==1.2.1`` wheel (no deps) and extract only the ML-100K atomic files.

    Returns the folder holding them. A second call finds them and does nothing; an interrupted
    fetch leaves nothing under the final name.
    """
    final = Path(cache_dir) / "ml-100k-recbole"
    if all((final / f).is_file() for f in RECBOLE_FILES):
        return final
    log.info("fetching MovieLens-100K from the %s wheel into %s", RECBOLE_WHEEL, final)
    with atomic_path(final) as tmp:
        wheel_dir = tmp.parent / "wheel"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", RECBOLE_WHEEL, "-d", str(wheel_dir)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("recbole-*.whl")) if wheel_dir.exists() else []
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]  # the message stays one line
            raise RecfunnelError(
                f"could not download {RECBOLE_WHEEL} with `{' '.join(cmd[2:])}` ({last[-300:]}). "
                "Fetch needs access to a PyPI mirror; without one, put u.data, u.user and u.item from the "
                "GroupLens ml-100k release in a folder and set data.source.local_dir=THAT_FOLDER.")
        tmp.mkdir()
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in RECBOLE_FILES:
                (tmp / name).write_bytes(zf.read(RECBOLE_PREFIX + name))
    return final


def load_movielens(cache_dir: str | Path, local_dir: str | Path | None = None) -> Tables:
    """ML-100K as canonical tables: from ``local_dir`` (GroupLens or RecBole layout) or fetched."""
    if local_dir:
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise RecfunnelError(
                f"data.source.local_dir={local_dir} does not exist. Put u.data, u.user and u.item from the "
                f"GroupLens ml-100k release there, or set data.source.local_dir=null to fetch from the "
                f"{RECBOLE_WHEEL} wheel.")
        if (local_dir / "ml-100k.inter").exists():
            return read_recbole(local_dir)
        return read_grouplens(local_dir)
    return read_recbole(fetch_recbole(cache_dir))


# --- the other MovieLens releases, in their own formats ----------------------------------------------

VERSIONS = ("100k", "1m", "10m", "20m", "25m", "32m")
RELEASE_FILES = {"1m": ("ratings.dat", "users.dat", "movies.dat"), "10m": ("ratings.dat", "movies.dat")}
NO_GENRES = "(no genres listed)"


def load_release(version: str, dir: str | Path | None = None, cache_dir: str | Path = "data") -> Tables:
    """A MovieLens release as canonical tables, read from the unzipped release folder ``dir``.

    ``100k``: as ``load_movielens`` (``dir`` null fetches it). ``1m``: ``ratings.dat``, ``users.dat``,
    ``movies.dat`` (latin-1). ``10m``: ``ratings.dat``, ``movies.dat`` (UTF-8; no users file, so the
    users table holds ids only). ``20m``, ``25m``, ``32m``: ``ratings.csv``, ``movies.csv`` (UTF-8).
    """
    version = str(version).lower()
    if version not in VERSIONS:
        raise RecfunnelError(f"data.source.version={version} is not a MovieLens release this reads; choose one of "
                             f"{', '.join(VERSIONS)}")
    if version == "100k":
        try:
            return load_movielens(cache_dir, local_dir=dir)
        except RecfunnelError as e:  # its messages name ml100k.yaml's option; this config calls it dir
            raise RecfunnelError(str(e).replace("data.source.local_dir", "data.source.dir")) from None
    files = RELEASE_FILES.get(version, ("ratings.csv", "movies.csv"))
    folder = Path(dir) if dir else None
    missing = files if folder is None else [f for f in files if not (folder / f).is_file()]
    if missing:
        raise RecfunnelError(
            f"MovieLens-{version.upper()} needs {', '.join(files)}" + (f"; {folder} lacks {', '.join(missing)}"
                                                                     if folder else "") +
            f". Download ml-{version}.zip from https://grouplens.org/datasets/movielens/, unzip it and set "
            "data.source.dir to the folder holding those files.")
    hint = f"Restore it from the ml-{version} release (https://grouplens.org/datasets/movielens/)."
    if version in RELEASE_FILES:
        return read_dat(folder, version, hint)
    return read_csv_release(folder, hint)


def _title_year(text: str) -> tuple[str, float]:
    """"Toy Story (1995)" → ("Toy Story", 1995.0); a title without a year keeps it NaN."""
    m = _TITLE_YEAR.match(text)
    return (m.group(1), float(m.group(2))) if m else (text.strip(), np.nan)


def _genres(text: str) -> list[str]:
    return [] if text in ("", NO_GENRES) else text.split("|")


def _items(ids: np.ndarray, titles: list[str], genres: list[str]) -> pd.DataFrame:
    split = [_title_year(t) for t in titles]
    return pd.DataFrame({"item_id": ids, "title": [t for t, _ in split], "year": [y for _, y in split],
                         "genres": [_genres(g) for g in genres]})


def _ratings(path: Path, sep: str, skip_header: bool, encoding: str, hint: str) -> tuple[pd.DataFrame, Callable]:
    """``user_id, item_id, rating, timestamp`` lines of ``path`` (separated by ``sep``), read by pandas'
    C reader; a bad line is named (file, line, field) by the per-line reader."""
    def slow() -> pd.DataFrame:
        # the first bad line without holding the file's lines in memory (tens of millions of them)
        scan_rows(path, sep, 4, skip_header, encoding, "ratings", hint,
                  {0: ("user_id", True), 1: ("item_id", True), 2: ("rating", False), 3: ("timestamp", True)})
        rows, lines = parse_rows(path, sep, 4, skip_header, encoding, "ratings", hint)  # none: pandas was too strict
        return pd.DataFrame({"user_id": column(path, rows, lines, 0, "user_id"),
                             "item_id": column(path, rows, lines, 1, "item_id"),
                             "ts": column(path, rows, lines, 3, "timestamp"),
                             "rating": column(path, rows, lines, 2, "rating", integer=False)})

    # "::" is two pandas separators (":") with an empty field between them
    names = ["user_id", "item_id", "rating", "ts"]
    if sep == "::":
        names = ["user_id", "_1", "item_id", "_2", "rating", "_3", "ts"]
    dtype = {n: "str" if n.startswith("_") else "float64" if n == "rating" else "int64" for n in names}

    def check(df: pd.DataFrame) -> bool:
        rating = df["rating"].to_numpy()
        gaps = all((df[n] == "").all() for n in names if n.startswith("_"))
        return len(df) > 0 and gaps and bool((np.abs(rating) <= _FLOAT32_MAX).all())

    df = read_fast(path, slow, check, sep=sep[0], header=None, names=names, dtype=dtype, skiprows=int(skip_header),
                   quoting=csv.QUOTE_NONE, na_filter=False, encoding=encoding)
    df = df[["user_id", "item_id", "ts", "rating"]].reset_index(drop=True)
    df["rating"] = df["rating"].astype(np.float32)
    line_of = line_of_row(path, skip_header, encoding)
    return df, lambda r: f"{path}:{line_of(r)}"


def read_dat(folder: Path, version: str, hint: str) -> Tables:
    """ML-1M / ML-10M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat``
    (``MovieID::Title::Genres``, genres split on ``|``, the year taken from the title) and, for 1m,
    ``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``). 1m is latin-1, 10m UTF-8."""
    encoding = "latin-1" if version == "1m" else "utf-8"
    inter_path, items_path = folder / "ratings.dat", folder / "movies.dat"
    interactions, where = _ratings(inter_path, "::", False, encoding, hint)
    rows, lines = parse_rows(items_path, "::", 3, False, encoding, "movies", hint)
    items = _items(column(items_path, rows, lines, 0, "item_id"), [r[1] for r in rows], [r[2] for r in rows])
    if version == "1m":
        users_path = folder / "users.dat"
        rows, lines = parse_rows(users_path, "::", 5, False, encoding, "users", hint)
        users = pd.DataFrame({"user_id": column(users_path, rows, lines, 0, "user_id"),
                              "age": column(users_path, rows, lines, 2, "age"),
                              "gender": [r[1] for r in rows], "occupation": [r[3] for r in rows],
                              "zip": [r[4] for r in rows]})
        check_known(inter_path, where, interactions["user_id"], users["user_id"], users_path)
    else:
        users = id_table(interactions["user_id"], "user_id")
    check_known(inter_path, where, interactions["item_id"], items["item_id"], items_path)
    return Tables(interactions=interactions, users=users, items=items)


def read_csv_release(folder: Path, hint: str) -> Tables:
    """ML-20M / 25M / 32M: ``ratings.csv`` (header ``userId,movieId,rating,timestamp``) and
    ``movies.csv`` (header ``movieId,title,genres``; titles may be quoted and hold commas; genres
    split on ``|``, "(no genres listed)" is none), both UTF-8. The users table holds ids only."""
    inter_path, items_path = folder / "ratings.csv", folder / "movies.csv"
    _check_header(inter_path, "userId,movieId,rating,timestamp")
    interactions, where = _ratings(inter_path, ",", True, "utf-8", hint)
    _check_header(items_path, "movieId,title,genres")
    rows, lines = [], []
    with open(items_path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode(items_path, lineno, raw, "utf-8").rstrip("\r\n")
            if lineno == 1 or not line.strip():
                continue
            fields = next(csv.reader([line]))
            if len(fields) != 3:
                raise RecfunnelError(f"{items_path}:{lineno}: expected 3 comma-separated fields (movieId,title,genres; "
                                     f"a title with commas in double quotes), got {len(fields)}: {line[:80]!r}. "
                                     "Fix or remove that line (or re-fetch the dataset).")
            rows.append(fields)
            lines.append(lineno)
    if not rows:
        raise RecfunnelError(f"{items_path} has no movies below its header line. {hint}")
    items = _items(column(items_path, rows, lines, 0, "item_id"), [r[1] for r in rows], [r[2] for r in rows])
    check_known(inter_path, where, interactions["item_id"], items["item_id"], items_path)
    return Tables(interactions=interactions, users=id_table(interactions["user_id"], "user_id"), items=items)


def _check_header(path: Path, expected: str) -> None:
    with open(path, "rb") as f:
        header = decode(path, 1, f.readline(), "utf-8-sig").strip()
    if header != expected:
        raise RecfunnelError(f"{path}:1: header is {header[:80]!r}, expected {expected!r}; is this file from the "
                             "MovieLens release data.source.version names?")
