"""MovieLens-100K: the GroupLens layout (``u.data``, ``u.user``, ``u.item``) or the copy carried by
the ``recbole==1.2.1`` wheel (``ml-100k.inter``/``.user``/``.item``). Both readers give identical
canonical tables; nothing else in the codebase knows these file formats.

Encodings, decided per format: the GroupLens files are latin-1, as released (``u.item`` has titles
such as "Café"), and are all read as latin-1, which decodes any byte; RecBole's atomic files are
UTF-8, and a byte that is not UTF-8 is an error naming file and line. Every malformed line, bad
number (an id, age or timestamp must be an integer within 64 bits, a rating a finite number) or
id missing from the users/items file raises ``RecfunnelError`` naming file and line, and an empty
file raises one naming the file. Checks of the assembled tables (duplicates, timestamps) are
``Tables.validated``'s, for every source.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from recfunnel.data.tables import Tables
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


def _parse_rows(path: Path, sep: str, ncols: int, skip_header: bool, encoding: str,
                what: str) -> tuple[list[list[str]], list[int]]:
    """Split every non-blank line of ``path`` into ``ncols`` fields; also return their line numbers.

    Lines are decoded one at a time, so a byte the encoding rejects (only UTF-8 can reject one) names
    its line. A file without a data line is an error: ``what`` says what it should hold.
    """
    rows, lines = [], []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if skip_header and lineno == 1:
                continue
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise RecfunnelError(
                    f"{path}:{lineno}: byte {raw[e.start:e.start + 1]!r} at column {e.start + 1} is not valid "
                    f"{encoding}; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) != ncols:
                raise RecfunnelError(
                    f"{path}:{lineno}: expected {ncols} fields separated by {sep!r}, got {len(fields)}: "
                    f"{line[:80]!r}. Fix or remove that line (or re-fetch the dataset).")
            rows.append(fields)
            lines.append(lineno)
    if not rows:
        raise RecfunnelError(
            f"{path} has no {what}{' below its header line' if skip_header else ''}. Restore it from the "
            f"ml-100k release, or set data.source.local_dir=null to fetch the dataset.")
    return rows, lines


_INT64 = np.iinfo(np.int64)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _number(text: str, integer: bool) -> int | float | None:
    """``text`` as an int within int64 (``integer``) or a finite float within float32; else None.

    RecBole types every number as float, so "3.0" is a valid integer; "3.5" is not.
    """
    try:
        value = float(text)
    except ValueError:
        return None
    if not integer:
        return value if abs(value) <= _FLOAT32_MAX else None  # False for inf and nan
    if not value.is_integer():
        return None
    try:
        value = int(text)  # exact, where float() rounds long digit strings
    except ValueError:
        value = int(value)
    return value if _INT64.min <= value <= _INT64.max else None


def _column(path: Path, rows: list[list[str]], lines: list[int], col: int, what: str,
            integer: bool = True) -> np.ndarray:
    """Field ``col`` of every row as int64 (``integer``) or float32; a bad field names file and line."""
    values = []
    for r, lineno in zip(rows, lines):
        value = _number(r[col], integer)
        if value is None:
            kind = "an integer within 64 bits" if integer else "a finite number"
            raise RecfunnelError(f"{path}:{lineno}: {what} is not {kind}: {r[col][:40]!r}. "
                                 "Fix or remove that line (or re-fetch the dataset).")
        values.append(value)
    return np.array(values, dtype=np.int64 if integer else np.float32)


def _interactions(path: Path, skip_header: bool, encoding: str) -> tuple[pd.DataFrame, list[int]]:
    """The interactions of ``path`` (tab separated in both layouts) and the line number of each."""
    rows, lines = _parse_rows(path, "\t", 4, skip_header, encoding, "interactions")
    return pd.DataFrame({
        "user_id": _column(path, rows, lines, 0, "user_id"),
        "item_id": _column(path, rows, lines, 1, "item_id"),
        "ts": _column(path, rows, lines, 3, "timestamp"),
        "rating": _column(path, rows, lines, 2, "rating", integer=False),
    }), lines


def _users(path: Path, sep: str, skip_header: bool, encoding: str) -> pd.DataFrame:
    rows, lines = _parse_rows(path, sep, 5, skip_header, encoding, "users")
    return pd.DataFrame({
        "user_id": _column(path, rows, lines, 0, "user_id"),
        "age": _column(path, rows, lines, 1, "age"),
        "gender": [r[2] for r in rows],
        "occupation": [r[3] for r in rows],
        "zip": [r[4] for r in rows],
    })


def _check_known(path: Path, lines: list[int], ids: pd.Series, known: pd.Series, table: Path) -> None:
    """Every id of ``ids`` (a column of the interactions in ``path``) must be listed in ``table``."""
    unknown = ~ids.isin(known).to_numpy()
    if unknown.any():
        i = int(np.argmax(unknown))
        raise RecfunnelError(
            f"{path}:{lines[i]}: {ids.name} {ids.iat[i]} is not in {table} ({int(unknown.sum())} line(s) "
            f"of {path.name} name such ids). Add them to {table.name} or remove those lines.")


def _year(text: str) -> float:
    return float(text) if text.isdigit() else np.nan


def _tables(folder: Path, files: tuple[str, ...], items: pd.DataFrame, sep: str, skip_header: bool,
            encoding: str) -> Tables:
    """Canonical tables from the interactions and users files of ``files`` and the parsed ``items``."""
    inter_path, users_path, items_path = (folder / f for f in files)
    interactions, lines = _interactions(inter_path, skip_header, encoding)
    users = _users(users_path, sep, skip_header, encoding)
    _check_known(inter_path, lines, interactions["user_id"], users["user_id"], users_path)
    _check_known(inter_path, lines, interactions["item_id"], items["item_id"], items_path)
    return Tables(interactions=interactions, users=users, items=items)


def read_grouplens(folder: str | Path) -> Tables:
    """Read the GroupLens release layout: ``u.data`` (tab), ``u.user`` and ``u.item`` (pipe), all latin-1."""
    folder = _require(folder, GROUPLENS_FILES)
    path = folder / "u.item"
    items_rows, lines = _parse_rows(path, "|", 5 + len(GENRES), False, "latin-1", "items")
    titles, years, genres = [], [], []
    for r in items_rows:
        m = _TITLE_YEAR.match(r[1])
        titles.append(m.group(1) if m else r[1])
        # The year in the title is the one RecBole keeps; fall back to the release date.
        years.append(float(m.group(2)) if m else _year(r[2][-4:]))
        genres.append([g for g, flag in zip(GENRES, r[5:]) if flag == "1"])
    items = pd.DataFrame({"item_id": _column(path, items_rows, lines, 0, "item_id"),
                          "title": titles, "year": years, "genres": genres})
    return _tables(folder, GROUPLENS_FILES, items, "|", False, "latin-1")


def read_recbole(folder: str | Path) -> Tables:
    """Read RecBole's atomic files (UTF-8, tab separated, one header line)."""
    folder = _require(folder, RECBOLE_FILES)
    path = folder / "ml-100k.item"
    items_rows, lines = _parse_rows(path, "\t", 4, True, "utf-8", "items")
    # RecBole spells item 267's missing title and year "unkonwn"; GroupLens says "unknown" and no date.
    items = pd.DataFrame({
        "item_id": _column(path, items_rows, lines, 0, "item_id"),
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
