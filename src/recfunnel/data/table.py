"""One's own tables as a source: an interactions file, optional users and items files, a column map.

Format: each file is parquet (``.parquet``, ``.pq``) or CSV with a header line (``.csv``, ``.tsv``
tab-separated; either may end in ``.gz``), UTF-8, read by pandas' C reader. ``columns`` maps the
canonical names to the interactions file's columns::

    columns: {user_id: user, item_id: movie, ts: time, rating: stars}

``user_id`` and ``item_id`` are required; ``ts: null`` means file order is the event order
(ts = row position, one WARNING says so) and ``rating: null`` gives every event 1.0. ``ts`` is unix
seconds (integral numbers; fractions are dropped with a WARNING), a parquet timestamp or ISO-8601
text. The users file must hold the ``user_id`` column of the map, the items file its ``item_id``
column; every other column of every file is kept. A map naming an absent column, an unreadable
row or an id absent from the users/items file is one ``RecfunnelError`` naming the file (line or
row) and what would fix it.

The second half of this module is the toolkit every text reader shares (``atomic``, ``movielens``):
per-line parsing whose errors name file, line and field, and pandas' C reader for large files,
which falls back to the per-line reader to name the first bad line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recfunnel.data.tables import Tables, id_table, read_parquet
from recfunnel.utils.errors import RecfunnelError

log = logging.getLogger(__name__)

KEYS = ("user_id", "item_id", "ts", "rating")
DEFAULT_COLUMNS = {"user_id": "user_id", "item_id": "item_id", "ts": "timestamp", "rating": "rating"}
_PARQUET = (".parquet", ".pq")
_TEXT = {".csv": ",", ".tsv": "\t"}


def load_table(interactions: str | Path, users: str | Path | None = None, items: str | Path | None = None,
               columns: Mapping[str, str | None] | None = None) -> Tables:
    """Canonical tables from an interactions file and optional users / items files (see the module)."""
    columns = _column_map(columns)
    path = Path(interactions)
    inter, rows = _read(path), _rows(path)
    if not len(inter):
        raise RecfunnelError(f"{path} has no interactions; give data.source.interactions a file with at least one row")
    for key in KEYS:
        if columns[key] is not None and columns[key] not in inter.columns:
            raise RecfunnelError(
                f"{path}: data.source.columns.{key}={columns[key]!r} is not a column of the file; its columns: "
                f"{', '.join(map(str, inter.columns))}" + (f" (or set data.source.columns.{key}=null)"
                                                           if key in ("ts", "rating") else ""))
    mapped = {columns[k]: k for k in KEYS if columns[k] is not None}
    clash = [c for c in inter.columns if c in KEYS and c not in mapped]
    if clash:
        c = clash[0]
        raise RecfunnelError(f"{path}: the file has a column {c!r}, but data.source.columns.{c}="
                             f"{'null' if columns[c] is None else repr(columns[c])}; map it (data.source.columns.{c}={c}) "
                             "or rename that column in the file")
    inter = inter.rename(columns=mapped)
    for key in ("user_id", "item_id"):
        _no_gaps(path, inter[key], columns[key], rows)
    inter["ts"] = _timestamps(path, inter["ts"], columns["ts"], rows) if columns["ts"] else _file_order(path, len(inter))
    inter["rating"] = (_ratings(path, inter["rating"], columns["rating"], rows) if columns["rating"]
                       else np.ones(len(inter), np.float32))
    inter = inter[list(KEYS) + [c for c in inter.columns if c not in KEYS]]
    tables = {}
    for what, file in (("user", users), ("item", items)):
        key = f"{what}_id"
        if file is None:
            tables[f"{what}s"] = id_table(inter[key], key)
            continue
        fpath = Path(file)
        df = _read(fpath)
        if columns[key] not in df.columns:
            raise RecfunnelError(f"{fpath}: data.source.columns.{key}={columns[key]!r} is not a column of the file; "
                                 f"its columns: {', '.join(map(str, df.columns))}")
        df = df.rename(columns={columns[key]: key})
        _no_gaps(fpath, df[key], columns[key], _rows(fpath))
        inter[key], df[key] = _same_kind(inter[key], df[key])
        check_known(path, rows, inter[key], df[key], fpath)
        tables[f"{what}s"] = df
    return Tables(interactions=inter, **tables)


def _column_map(columns: Mapping[str, str | None] | None) -> dict[str, str | None]:
    columns = dict(DEFAULT_COLUMNS if columns is None else columns)
    unknown = sorted(set(columns) - set(KEYS))
    if unknown:
        raise RecfunnelError(f"data.source.columns has unknown key(s) {unknown}; valid keys: {', '.join(KEYS)}")
    for key in KEYS:
        columns.setdefault(key, DEFAULT_COLUMNS[key])
    for key in ("user_id", "item_id"):
        if not columns[key]:
            raise RecfunnelError(f"data.source.columns.{key} is required: name the column holding the {key}s")
    return columns


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    return suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (suffixes or [""])[-1]


def _read(path: Path) -> pd.DataFrame:
    """A parquet or CSV/TSV file as a DataFrame (ids as pandas infers them: integers or strings)."""
    suffix = _suffix(path)
    if suffix not in _PARQUET and suffix not in _TEXT:
        raise RecfunnelError(f"{path}: unknown file type {suffix or '(no suffix)'!r}; use .parquet, .pq, .csv or "
                             ".tsv (optionally .gz)")
    if not path.is_file():
        raise RecfunnelError(f"{path} does not exist; point data.source at an existing file")
    try:
        if suffix in _PARQUET:
            return read_parquet(path)
        return pd.read_csv(path, sep=_TEXT[suffix], engine="c", encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise RecfunnelError(f"{path} is empty; it needs a header line naming its columns") from None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise RecfunnelError(f"{path}: cannot be read ({one_line(e)}); fix the file or convert it to parquet") from None


def _rows(path: Path) -> Callable[[int], str]:
    """Row index → where it is in ``path``, as messages say it: ``path:LINE`` (text) or ``path row N``."""
    if _suffix(path) in _PARQUET:
        return lambda r: f"{path} row {r + 1}"
    line_of = line_of_row(path, skip_header=True, encoding="utf-8")
    return lambda r: f"{path}:{line_of(r)}"


def _no_gaps(path: Path, ids: pd.Series, column: str, rows: Callable[[int], str]) -> None:
    missing = ids.isna().to_numpy()
    if missing.any():
        raise RecfunnelError(f"{rows(int(np.argmax(missing)))}: column {column!r} ({ids.name}) is empty; every row "
                             f"needs an id: fill or remove that row ({int(missing.sum())} such row(s))")


def _same_kind(a: pd.Series, b: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Two id columns as one kind: both kept when both are integers, else both as strings."""
    if pd.api.types.is_integer_dtype(a) and pd.api.types.is_integer_dtype(b):
        return a, b
    return a.astype(str), b.astype(str)


def _timestamps(path: Path, ts: pd.Series, column: str, rows: Callable[[int], str]) -> np.ndarray:
    """Unix seconds (int64) from numbers, a datetime column or ISO-8601 text."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        bad = ts.isna().to_numpy()
        seconds = None if bad.any() else ts.to_numpy("datetime64[s]").astype(np.int64)
    elif pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
        values = ts.to_numpy(np.float64, na_value=np.nan)
        bad = ~(np.abs(values) < 2.0 ** 63)  # NaN too
        seconds = None if bad.any() else whole_seconds(path, ts.to_numpy())
    else:
        parsed = pd.to_datetime(ts, format="ISO8601", utc=True, errors="coerce")
        bad = parsed.isna().to_numpy()
        seconds = None if bad.any() else parsed.to_numpy("datetime64[s]").astype(np.int64)
    if seconds is None:
        r = int(np.argmax(bad))
        raise RecfunnelError(f"{rows(r)}: column {column!r} (ts) is not unix seconds or an ISO-8601 time: "
                             f"{str(ts.iat[r])[:40]!r}; fix that row, or set data.source.columns.ts=null for file order")
    return seconds


def _ratings(path: Path, rating: pd.Series, column: str, rows: Callable[[int], str]) -> np.ndarray:
    values = pd.to_numeric(rating, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        r = int(np.argmax(bad))
        raise RecfunnelError(f"{rows(r)}: column {column!r} (rating) is not a finite number: {str(rating.iat[r])[:40]!r}; "
                             "fix that row, or set data.source.columns.rating=null to rate every event 1.0")
    return values.astype(np.float32)


def _file_order(path: Path, n: int) -> np.ndarray:
    log.warning("%s: no timestamp column; file order is the event order (ts = row position)", path)
    return np.arange(n, dtype=np.int64)


def whole_seconds(path: Path, ts: np.ndarray) -> np.ndarray:
    """Finite numeric timestamps as int64 seconds; fractions are dropped, with one WARNING."""
    if np.issubdtype(ts.dtype, np.integer):
        return ts.astype(np.int64)
    seconds = np.floor(ts)
    fractional = int((seconds != ts).sum())
    if fractional:
        log.warning("%s: %d timestamp(s) have fractions of a second, dropped (events within one second keep "
                    "file order)", path, fractional)
    return seconds.astype(np.int64)


# --- the toolkit the text readers share ------------------------------------------------------------

def one_line(error: BaseException) -> str:
    """The first line of an exception's message (pandas' messages can run over several)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def parse_rows(path: Path, sep: str, ncols: int, skip_header: bool, encoding: str, what: str,
               hint: str) -> tuple[list[list[str]], list[int]]:
    """Split every non-blank line of ``path`` on ``sep`` into ``ncols`` fields; also return their line numbers.

    Lines are decoded one at a time, so a byte the encoding rejects (only UTF-8 can reject one) names
    its line. A file without a data line is an error: ``what`` says what it should hold, ``hint`` how to
    get it back.
    """
    rows, lines = [], []
    for lineno, fields in _split_lines(path, sep, ncols, skip_header, encoding):
        rows.append(fields)
        lines.append(lineno)
    if not rows:
        raise RecfunnelError(f"{path} has no {what}{' below its header line' if skip_header else ''}. {hint}")
    return rows, lines


def scan_rows(path: Path, sep: str, ncols: int, skip_header: bool, encoding: str, what: str, hint: str,
              numbers: Mapping[int, tuple[str, bool]] | None = None) -> None:
    """``parse_rows``' checks, and of the fields ``numbers`` ({column: (name, integer)}) ``column``'s,
    line by line without keeping the lines: the first bad line of a file of any size, in O(1) memory."""
    numbers = numbers or {}
    seen = False
    for lineno, fields in _split_lines(path, sep, ncols, skip_header, encoding):
        seen = True
        for col, (name, integer) in numbers.items():
            if number(fields[col], integer) is None:
                column(path, [fields], [lineno], col, name, integer)  # raises, with its message
    if not seen:
        raise RecfunnelError(f"{path} has no {what}{' below its header line' if skip_header else ''}. {hint}")


def _split_lines(path: Path, sep: str, ncols: int, skip_header: bool, encoding: str):
    """(line number, fields) of every non-blank line; a line of another width is an error naming it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if skip_header and lineno == 1:
                continue
            line = decode(path, lineno, raw, encoding).rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split(sep)
            if len(fields) != ncols:
                raise RecfunnelError(
                    f"{path}:{lineno}: expected {ncols} fields separated by {sep!r}, got {len(fields)}: "
                    f"{line[:80]!r}. Fix or remove that line (or re-fetch the dataset).")
            yield lineno, fields


def decode(path: Path, lineno: int, raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise RecfunnelError(
            f"{path}:{lineno}: byte {raw[e.start:e.start + 1]!r} at column {e.start + 1} is not valid "
            f"{encoding}; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


_INT64 = np.iinfo(np.int64)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def number(text: str, integer: bool) -> int | float | None:
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


def column(path: Path, rows: list[list[str]], lines: list[int], col: int, what: str,
           integer: bool = True) -> np.ndarray:
    """Field ``col`` of every row as int64 (``integer``) or float32; a bad field names file and line."""
    values = []
    for r, lineno in zip(rows, lines):
        value = number(r[col], integer)
        if value is None:
            kind = "an integer within 64 bits" if integer else "a finite number"
            raise RecfunnelError(f"{path}:{lineno}: {what} is not {kind}: {r[col][:40]!r}. "
                                 "Fix or remove that line (or re-fetch the dataset).")
        values.append(value)
    return np.array(values, dtype=np.int64 if integer else np.float32)


def check_known(path: Path, where: Sequence[int] | Callable[[int], str], ids: pd.Series, known: pd.Series,
                table: Path) -> None:
    """Every id of ``ids`` (a column of the interactions in ``path``) must be listed in ``table``.

    ``where`` gives each row's line number (a list) or its place as messages say it (a function).
    """
    unknown = ~ids.isin(known).to_numpy()
    if unknown.any():
        i = int(np.argmax(unknown))
        at = where(i) if callable(where) else f"{path}:{where[i]}"
        raise RecfunnelError(
            f"{at}: {ids.name} {ids.iat[i]} is not in {table} ({int(unknown.sum())} line(s) "
            f"of {path.name} name such ids). Add them to {table.name} or remove those lines.")


def line_of_row(path: Path, skip_header: bool, encoding: str) -> Callable[[int], int]:
    """Row index (data rows, blank lines skipped) → line number in ``path``; reads the file only when called."""
    def line_of(row: int) -> int:
        seen = -1
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if (skip_header and lineno == 1) or not raw.strip():
                    continue
                seen += 1
                if seen == row:
                    return lineno
        return lineno
    return line_of


def read_fast(path: Path, slow: Callable[[], pd.DataFrame], check: Callable[[pd.DataFrame], bool] | None = None,
              **read_csv: Any) -> pd.DataFrame:
    """``path`` read by pandas' C reader (``read_csv`` arguments); if that fails, or ``check`` of the
    result is False, ``slow()`` — a per-line reader of the same format — reads it instead and names
    the first bad line (file, line, field) when there is one."""
    try:
        df = pd.read_csv(path, engine="c", **read_csv)
    except (ValueError, OverflowError, UnicodeDecodeError):  # pandas' ParserError is a ValueError
        return slow()
    return df if check is None or check(df) else slow()
