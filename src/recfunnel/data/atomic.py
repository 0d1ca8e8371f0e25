"""RecBole's atomic files → canonical tables: ``DIR/NAME.inter`` and, when present, ``DIR/NAME.user``
and ``DIR/NAME.item`` (the format RecBole's dataset collection uses for dozens of datasets).

Format: UTF-8, tab-separated, one header line whose fields are ``name:type``::

    user_id:token	item_id:token	rating:float	timestamp:float
    u1	i42	4	881250949

Types: ``token`` (a string, kept as is), ``float`` (a number; an empty field is missing, NaN),
``token_seq`` (space-separated tokens → a list of str), ``float_seq`` (space-separated numbers →
a list of float). Blank lines are skipped.

Mapping: the user and item fields (``user_field``, ``item_field``) are required in ``.inter`` and
become ``user_id`` / ``item_id``, also in ``.user`` / ``.item``: integers (int64) when every token of
that id in every file is an integer written plainly ("42", not "042"), else strings; ``rating_field``
becomes ``rating`` (1.0 when the field is absent) and ``time_field`` becomes ``ts`` (integer
seconds; without the field, file order is the event order: ts = row position, and one WARNING says
so). Every other field is kept as a column under its own name. Without ``.user`` / ``.item`` the
users / items tables hold only the ids of the interactions.

Errors name the file, and the line and field where they apply: a header field without a type or of
an unknown type, a required field absent (the message lists the header's fields), a line with the
wrong number of fields, a byte that is not UTF-8, a number that does not parse, an empty id, an id
absent from ``.user`` / ``.item`` or listed there twice, a file without data lines. Large files are
read by pandas' C reader; the per-line reader runs only to name a bad line.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recfunnel.data.table import check_known, line_of_row, parse_rows, read_fast, scan_rows, whole_seconds
from recfunnel.data.tables import Tables, id_table
from recfunnel.utils.errors import RecfunnelError

log = logging.getLogger(__name__)

TYPES = ("token", "float", "token_seq", "float_seq")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def load_atomic(dir: str | Path, dataset: str, user_field: str = "user_id", item_field: str = "item_id",
                time_field: str | None = "timestamp", rating_field: str | None = "rating") -> Tables:
    """Canonical tables of RecBole dataset ``dataset`` in folder ``dir`` (see the module docstring)."""
    folder = Path(dir)
    inter_path = folder / f"{dataset}.inter"
    if not inter_path.is_file():
        found = sorted(p.name for p in folder.glob("*.inter")) if folder.is_dir() else []
        raise RecfunnelError(
            f"{inter_path} does not exist; set data.source.dir to the folder holding NAME.inter and "
            f"data.source.dataset=NAME" + (f" (that folder has {', '.join(found)})" if found else ""))
    inter, types, where = _read(inter_path, "interactions")
    _require(inter_path, types, user_field, "user_field")
    _require(inter_path, types, item_field, "item_field")
    renames = {user_field: "user_id", item_field: "item_id"}
    for field, canonical in ((rating_field, "rating"), (time_field, "ts")):
        if field and field in types:
            if types[field] not in ("float", "token"):
                raise RecfunnelError(f"{inter_path}:1: field {field!r} is {types[field]}; it must be {field}:float")
            renames[field] = canonical
    _check_clash(inter_path, types, renames)
    n = len(inter)
    if "rating" in renames.values():
        rating = _numbers(inter_path, inter[rating_field], rating_field, where, required=True)
        if (np.abs(rating) > _FLOAT32_MAX).any():
            r = int(np.argmax(np.abs(rating) > _FLOAT32_MAX))
            raise RecfunnelError(f"{where(r)}: field {rating_field} is not a finite number within float32: "
                                 f"{inter[rating_field].iat[r]!r}; fix or remove that line")
        inter[rating_field] = rating.astype(np.float32)
    else:
        inter["rating"] = np.ones(n, np.float32)
    if "ts" in renames.values():
        seconds = _numbers(inter_path, inter[time_field], time_field, where, required=True)
        if not (np.abs(seconds) < 2.0 ** 63).all():
            r = int(np.argmax(~(np.abs(seconds) < 2.0 ** 63)))
            raise RecfunnelError(f"{where(r)}: field {time_field} is not unix seconds within 64 bits: "
                                 f"{inter[time_field].iat[r]!r}; fix or remove that line")
        inter[time_field] = whole_seconds(inter_path, seconds)
    else:
        said = f"no field {time_field!r} in the header" if time_field else "data.source.time_field is null"
        log.warning("%s: %s (fields: %s); file order is the event order (ts = row position)", inter_path, said,
                    ", ".join(types))
        inter["ts"] = np.arange(n, dtype=np.int64)
    inter = inter.rename(columns=renames)
    inter = inter[["user_id", "item_id", "ts", "rating"] + [c for c in inter.columns
                                                            if c not in ("user_id", "item_id", "ts", "rating")]]
    tables = {}
    for what, field in (("user", user_field), ("item", item_field)):
        key, path = f"{what}_id", folder / f"{dataset}.{what}"
        _no_empty_ids(inter_path, inter[key], field, where)
        if not path.is_file():
            continue
        df, df_types, df_where = _read(path, f"{what}s")
        _require(path, df_types, field, f"{what}_field")
        _check_clash(path, df_types, {field: key})
        df = df.rename(columns={field: key})
        _no_empty_ids(path, df[key], field, df_where)
        repeated = df[key].duplicated().to_numpy()
        if repeated.any():
            r = int(np.argmax(repeated))
            first = int(np.argmax((df[key] == df[key].iat[r]).to_numpy()))
            raise RecfunnelError(f"{df_where(r)}: {field} {df[key].iat[r]} is listed again (first at "
                                 f"{df_where(first)}); keep one line per {what}")
        inter[key], df[key] = _id_columns(inter[key], df[key])
        check_known(inter_path, where, inter[key], df[key], path)
        tables[f"{what}s"] = df
    for what in ("user", "item"):
        key = f"{what}_id"
        if f"{what}s" not in tables:
            inter[key] = _id_columns(inter[key])[0]
            tables[f"{what}s"] = id_table(inter[key], key)
    return Tables(interactions=inter, **tables)


def _id_columns(*columns: pd.Series) -> list[pd.Series]:
    """Token id columns as int64 when every token of all of them is an integer written plainly
    ("42", not "042", "+42" or "4.2e1": the int prints back as the token), else as strings."""
    ints = []
    for c in columns:
        text = pa.array(c.astype(str).array)
        try:
            values = pc.cast(text, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return list(columns)
        if len(text) and not pc.all(pc.equal(pc.cast(values, text.type), text)).as_py():
            return list(columns)
        ints.append(pd.Series(values.to_numpy(zero_copy_only=False), index=c.index, name=c.name, dtype=np.int64))
    return ints


def _read(path: Path, what: str) -> tuple[pd.DataFrame, dict[str, str], Callable[[int], str]]:
    """One atomic file: its columns converted by type, the header's {field: type}, and a function
    giving a row's place in the file (``path:LINE``) for messages."""
    types = _header(path)
    names = list(types)
    hint = ("Add data lines below the header, or point data.source.dir and data.source.dataset at another "
            "dataset.")

    floats = [n for n in names if types[n] == "float"]
    read = dict(sep="\t", header=None, skiprows=1, names=names, quoting=csv.QUOTE_NONE, encoding="utf-8")

    def slow() -> pd.DataFrame:
        scan_rows(path, "\t", len(names), True, "utf-8", what, hint)  # a malformed line, named in O(1) memory
        # well-formed lines: a value that is not a number (named below), or lines of only whitespace
        try:
            df = pd.read_csv(path, engine="c", dtype=str, na_filter=False, **read)
        except ValueError:  # whitespace lines of other widths: the per-line reader skips them
            rows, _ = parse_rows(path, "\t", len(names), True, "utf-8", what, hint)
            return pd.DataFrame(rows, columns=names, dtype=str)
        return df[~(df == "").all(axis=1)].reset_index(drop=True)

    def check(df: pd.DataFrame) -> bool:
        # pandas pads short lines (count the tabs) and keeps lines of only tabs (the per-line reader skips them)
        blank = np.ones(len(df), bool)
        for n in names:
            blank &= (df[n].isna() if n in floats else df[n] == "").to_numpy()
        return len(df) > 0 and _count(path, b"\t") == (len(names) - 1) * (len(df) + 1) and not blank.any()

    # float fields are parsed by the C reader (an empty one is NaN); the rest stay text
    df = read_fast(path, slow, check, dtype={n: "float64" if n in floats else str for n in names},
                   keep_default_na=False, na_values={n: [""] for n in floats}, **read)
    line_of = line_of_row(path, skip_header=True, encoding="utf-8")

    def where(row: int) -> str:
        return f"{path}:{line_of(row)}"

    for name, kind in types.items():
        if kind == "float":
            df[name] = _numbers(path, df[name], name, where, required=False)
        elif kind == "token_seq":
            df[name] = [v.split() for v in df[name]]
        elif kind == "float_seq":
            df[name] = _float_lists(df[name], name, where)
    return df, types, where


def _header(path: Path) -> dict[str, str]:
    """The header line's {field name: type}; a field without a known type is an error."""
    with open(path, "rb") as f:
        first = f.readline()
    try:
        line = first.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise RecfunnelError(f"{path}:1: the header line is not valid UTF-8; re-encode the file as UTF-8") from None
    if not line.strip():
        raise RecfunnelError(f"{path}: the first line must name the fields, e.g. user_id:token<TAB>item_id:token"
                             f"<TAB>rating:float<TAB>timestamp:float; it is empty")
    types: dict[str, str] = {}
    for field in line.split("\t"):
        name, sep, kind = field.strip().rpartition(":")
        if not sep or not name:
            raise RecfunnelError(f"{path}:1: header field {field!r} has no type; write it as NAME:TYPE with TYPE one "
                                 f"of {', '.join(TYPES)}")
        if kind not in TYPES:
            raise RecfunnelError(f"{path}:1: header field {field!r} has unknown type {kind!r}; use one of "
                                 f"{', '.join(TYPES)}")
        if name in types:
            raise RecfunnelError(f"{path}:1: header field {name!r} appears twice; rename one")
        types[name] = kind
    return types


def _require(path: Path, types: dict[str, str], field: str, option: str) -> None:
    if field not in types:
        raise RecfunnelError(f"{path}:1: the header has no field {field!r} (fields: {', '.join(types)}); set "
                             f"data.source.{option} to the field that holds it")
    if types[field] != "token":
        raise RecfunnelError(f"{path}:1: field {field!r} is {types[field]}; an id field must be {field}:token")


def _check_clash(path: Path, types: dict[str, str], renames: dict[str, str]) -> None:
    """No field other than the ones ``renames`` maps may already bear a canonical column's name."""
    for name in types:
        if name in ("user_id", "item_id", "ts", "rating") and renames.get(name) != name and name not in renames:
            source = {v: k for k, v in renames.items()}.get(name)
            raise RecfunnelError(
                f"{path}:1: field {name!r} clashes with the canonical column {name}" +
                (f" read from field {source!r}" if source else "") + f"; rename it in the header, or set "
                f"data.source.{'time' if name == 'ts' else name.split('_')[0]}_field={name} if it is that column")


def _numbers(path: Path, text: pd.Series, field: str, where: Callable[[int], str], required: bool) -> np.ndarray:
    """A field as float64: empty fields are NaN (an error when ``required``), anything else must parse."""
    if text.dtype.kind == "f":  # parsed already (a float field)
        values = text.to_numpy(np.float64)
        empty = np.isnan(values)
        if np.isinf(values).any():
            r = int(np.argmax(np.isinf(values)))
            raise RecfunnelError(f"{where(r)}: field {field} is not a finite number: {values[r]}; fix or remove "
                                 "that line")
    else:
        text = text.astype(str)
        values = pd.to_numeric(text, errors="coerce").to_numpy(np.float64, na_value=np.nan, copy=True)
        empty = (text.str.strip() == "").to_numpy()
        bad = ~np.isfinite(values) & ~empty
        if bad.any():
            r = int(np.argmax(bad))
            raise RecfunnelError(f"{where(r)}: field {field} is not a finite number: {text.iat[r][:40]!r}; fix or "
                                 "remove that line")
        values[empty] = np.nan
    if required and empty.any():
        r = int(np.argmax(empty))
        raise RecfunnelError(f"{where(r)}: field {field} is empty; every line needs one (fix or remove that line)")
    return values


def _float_lists(text: pd.Series, field: str, where: Callable[[int], str]) -> list[list[float]]:
    out = []
    for r, v in enumerate(text):
        try:
            values = [float(x) for x in v.split()]
        except ValueError:
            values = [np.nan]
        if not np.isfinite(values).all():
            raise RecfunnelError(f"{where(r)}: field {field} (float_seq) holds something that is not a finite "
                                 f"number: {v[:40]!r}; fix or remove that line")
        out.append(values)
    return out


def _no_empty_ids(path: Path, ids: pd.Series, field: str, where: Callable[[int], str]) -> None:
    empty = (ids.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        raise RecfunnelError(f"{where(int(np.argmax(empty)))}: field {field} is empty; every line needs an id")


def _count(path: Path, byte: bytes, chunk: int = 1 << 24) -> int:
    """Occurrences of ``byte`` in the file, read in chunks."""
    total = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            total += block.count(byte)
    return total
