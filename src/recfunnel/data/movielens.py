"""MovieLens-100K: the GroupLens layout (``u.data``, ``u.user``, ``u.item``) or the copy carried by
the ``recbole==1.2.1`` wheel (``ml-100k.inter``/``.user``/``.item``). Both readers give identical
canonical tables; nothing else in the codebase knows these file formats.
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


def _parse_rows(path: Path, sep: str, ncols: int, skip_header: bool, encoding: str) -> list[list[str]]:
    """Split every line of ``path`` into ``ncols`` fields; a malformed line names file and line."""
    rows = []
    with open(path, encoding=encoding) as f:
        for lineno, line in enumerate(f, start=1):
            if skip_header and lineno == 1:
                continue
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(sep)
            if len(fields) != ncols:
                raise RecfunnelError(
                    f"{path}:{lineno}: expected {ncols} fields separated by {sep!r}, got {len(fields)}: "
                    f"{line[:80]!r}. Fix or remove that line (or re-fetch the dataset).")
            rows.append(fields)
    return rows


def _to_int(path: Path, rows: list[list[str]], col: int, what: str, skip_header: bool) -> np.ndarray:
    try:
        return np.array([int(float(r[col])) for r in rows], dtype=np.int64)
    except ValueError:
        for i, r in enumerate(rows):
            try:
                int(float(r[col]))
            except ValueError:
                # Line numbers are approximate only if blank lines were skipped, which these files lack.
                raise RecfunnelError(f"{path}:{i + 1 + int(skip_header)}: {what} is not a number: {r[col]!r}") from None
        raise


def _interactions(path: Path, sep: str, skip_header: bool) -> pd.DataFrame:
    rows = _parse_rows(path, sep, 4, skip_header, "utf-8")
    return pd.DataFrame({
        "user_id": _to_int(path, rows, 0, "user_id", skip_header),
        "item_id": _to_int(path, rows, 1, "item_id", skip_header),
        "ts": _to_int(path, rows, 3, "timestamp", skip_header),
        "rating": _to_int(path, rows, 2, "rating", skip_header).astype(np.float32),
    })


def _users(path: Path, sep: str, skip_header: bool) -> pd.DataFrame:
    rows = _parse_rows(path, sep, 5, skip_header, "utf-8")
    return pd.DataFrame({
        "user_id": _to_int(path, rows, 0, "user_id", skip_header),
        "age": _to_int(path, rows, 1, "age", skip_header),
        "gender": [r[2] for r in rows],
        "occupation": [r[3] for r in rows],
        "zip": [r[4] for r in rows],
    })


def _year(text: str) -> float:
    return float(text) if text.isdigit() else np.nan


def read_grouplens(folder: str | Path) -> Tables:
    """Read the GroupLens release layout: ``u.data`` (tab), ``u.user`` and ``u.item`` (pipe, latin-1)."""
    folder = _require(folder, GROUPLENS_FILES)
    items_rows = _parse_rows(folder / "u.item", "|", 5 + len(GENRES), False, "latin-1")
    titles, years, genres = [], [], []
    for r in items_rows:
        m = _TITLE_YEAR.match(r[1])
        titles.append(m.group(1) if m else r[1])
        # The year in the title is the one RecBole keeps; fall back to the release date.
        years.append(float(m.group(2)) if m else _year(r[2][-4:]))
        genres.append([g for g, flag in zip(GENRES, r[5:]) if flag == "1"])
    items = pd.DataFrame({"item_id": _to_int(folder / "u.item", items_rows, 0, "item_id", False),
                          "title": titles, "year": years, "genres": genres})
    return Tables(interactions=_interactions(folder / "u.data", "\t", False),
                  users=_users(folder / "u.user", "|", False), items=items)


def read_recbole(folder: str | Path) -> Tables:
    """Read RecBole's atomic files (tab separated, one header line)."""
    folder = _require(folder, RECBOLE_FILES)
    items_rows = _parse_rows(folder / "ml-100k.item", "\t", 4, True, "utf-8")
    # RecBole spells item 267's missing title and year "unkonwn"; GroupLens says "unknown" and no date.
    items = pd.DataFrame({
        "item_id": _to_int(folder / "ml-100k.item", items_rows, 0, "item_id", True),
        "title": ["unknown" if r[1] == "unkonwn" else r[1] for r in items_rows],
        "year": [_year(r[2]) for r in items_rows],
        "genres": [r[3].split(" ") if r[3] else [] for r in items_rows],
    })
    return Tables(interactions=_interactions(folder / "ml-100k.inter", "\t", True),
                  users=_users(folder / "ml-100k.user", "\t", True), items=items)


def _require(folder: str | Path, files: tuple[str, ...]) -> Path:
    folder = Path(folder)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise RecfunnelError(
            f"MovieLens-100K folder {folder} lacks {', '.join(missing)}. Point data.local_dir at a folder "
            f"holding {', '.join(files)}, or leave data.local_dir empty to fetch the dataset from the "
            f"{RECBOLE_WHEEL} wheel (`python -m recfunnel.data.prepare data=ml100k`).")
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
            raise RecfunnelError(
                f"could not download {RECBOLE_WHEEL} with `{' '.join(cmd[2:])}`:\n{proc.stderr.strip()[-800:]}\n"
                "Fetch needs access to a PyPI mirror; without one, put u.data, u.user and u.item from the "
                "GroupLens ml-100k release in a folder and set data.local_dir=THAT_FOLDER.")
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
                f"data.local_dir={local_dir} does not exist. Put u.data, u.user and u.item from the GroupLens "
                f"ml-100k release there, or set data.local_dir=null to fetch from the {RECBOLE_WHEEL} wheel.")
        if (local_dir / "ml-100k.inter").exists():
            return read_recbole(local_dir)
        return read_grouplens(local_dir)
    return read_recbole(fetch_recbole(cache_dir))
