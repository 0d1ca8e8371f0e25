"""The canonical tables' cache never serves another source's tables, and runs know the data they
trained on: ``run_info.json`` records its fingerprint, a retriever (alone, in a funnel or behind a
Recommender) is loaded with its own data, and other tables are refused naming both fingerprints."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pytest

from recfunnel.data.dataset import SplitData
from recfunnel.data.fingerprint import tables_fingerprint
from recfunnel.data.movielens import GENRES
from recfunnel.data.sources import SOURCE_JSON, load_tables
from recfunnel.data.tables import Tables
from recfunnel.serving.recommender import Recommender
from recfunnel.serving.retriever import Retriever
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, run

RECBOLE = DATA_DIR / "ml-100k-recbole"  # ML-100K's RecBole files, fetched once (conftest / make train)
FAST_RETRIEVER = ["debug=fast", "logger=csv", "features=ml100k_seq", "model.net.user_hidden=[]", "data.batch_size=256"]


def recbole_copy(folder, events: int | None = None):
    """``folder`` holding ML-100K's RecBole files; with ``events``, only the first ``events`` interactions."""
    folder.mkdir(parents=True)
    for path in RECBOLE.iterdir():
        shutil.copy(path, folder / path.name)
    if events is not None:
        lines = (RECBOLE / "ml-100k.inter").read_text().splitlines(keepends=True)
        (folder / "ml-100k.inter").write_text("".join(lines[:events + 1]))  # + the header line
    return folder


def prepare(data_dir, *overrides):
    """``recfunnel.data.prepare data=ml100k`` caching into ``data_dir``; the fetched files stay in DATA_DIR."""
    proc = run("recfunnel.data.prepare", "data=ml100k", f"paths.data_dir={data_dir}", f"data.source.cache_dir={DATA_DIR}",
               *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def interactions(stdout: str) -> int:
    """The interaction count of prepare's statistics table."""
    return int(re.search(r"interactions\s*│\s*([\d,]+)", stdout).group(1).replace(",", ""))


def fingerprint(stdout: str) -> str:
    return re.search(r"tables fingerprint ([0-9a-f]+)", stdout).group(1)


def later_mtime(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# -- the cache -------------------------------------------------------------------------------------
def test_prepare_reads_another_local_dir_instead_of_serving_the_cached_default(tmp_path):
    data, other = tmp_path / "data", recbole_copy(tmp_path / "other", events=80_000)
    cache = data / "ml100k" / "tables"
    out = prepare(data)  # what `make train` leaves behind: the default's tables cached
    assert "read ml100k from load_movielens(" in out and interactions(out) == 100_000
    default_fp = fingerprint(out)

    out = prepare(data, f"data.source.local_dir={other}")  # before: the cached default, silently
    assert f"read ml100k from {other}; cached its tables in {cache} (the source config changed: local_dir None → {other})" in out
    assert interactions(out) == 80_000 and fingerprint(out) != default_fp
    other_fp = fingerprint(out)

    out = prepare(data, f"data.source.local_dir={other}")  # unchanged: the cache, saying so
    assert f"ml100k: cached tables {cache} (source unchanged: {other})" in out
    assert interactions(out) == 80_000 and fingerprint(out) == other_fp

    lines = (other / "ml-100k.inter").read_text().splitlines(keepends=True)
    (other / "ml-100k.inter").write_text("".join(lines[:60_001]))  # a changed file
    out = prepare(data, f"data.source.local_dir={other}")
    assert f"read ml100k from {other}" in out and f"a source file changed (size or mtime): {other}/ml-100k.inter" in out
    assert interactions(out) == 60_000

    later_mtime(other / "ml-100k.user")  # touched: read again (same content, same fingerprint)
    out = prepare(data, f"data.source.local_dir={other}")
    assert f"a source file changed (size or mtime): {other}/ml-100k.user" in out and interactions(out) == 60_000

    out = prepare(data)  # and back
    assert "the source config changed: local_dir" in out and interactions(out) == 100_000 and fingerprint(out) == default_fp


def grouplens(folder, events):
    """A tiny GroupLens-layout folder: users 1-2, items 1-3, ``events`` (user, item, rating, ts)."""
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in events))
    (folder / "u.user").write_text("1|30|M|writer|10001\n2|40|F|artist|10002\n")
    flags = "|".join(["0"] * len(GENRES))
    (folder / "u.item").write_text("".join(f"{i}|Film {i} (1995)|01-Jan-1995||http://x/{i}|{flags}\n" for i in (1, 2, 3)))
    return folder


EVENTS = [(1, 1, 4, 100), (1, 2, 3, 200), (2, 1, 5, 150), (1, 3, 2, 300), (2, 2, 1, 250), (2, 3, 4, 350)]


def tiny(folder, cache_dir) -> dict:
    return {"name": "tiny", "source": {"_target_": "recfunnel.data.movielens.load_movielens", "cache_dir": str(cache_dir),
                                       "local_dir": str(folder)}}


def test_the_key_covers_options_and_files_not_the_cache_location_and_a_bad_source_serves_nothing(tmp_path, caplog):
    folder, data = grouplens(tmp_path / "gl", EVENTS), tmp_path / "data"
    cache = data / "tiny" / "tables"
    with caplog.at_level(logging.INFO, logger="recfunnel.data.sources"):
        first = load_tables(tiny(folder, data), data)
        load_tables(tiny(folder, tmp_path / "elsewhere"), data)  # where downloads go is not the data
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"read tiny from {folder}; cached its tables in {cache} (no cache yet)",
                    f"ml100k: cached tables {cache} (source unchanged: {folder})".replace("ml100k", "tiny")]
    record = json.loads((cache / SOURCE_JSON).read_text())
    assert record["source"] == {"_target_": "recfunnel.data.movielens.load_movielens", "local_dir": str(folder)}
    assert sorted(f[0] for f in record["files"]) == [str(folder / n) for n in ("u.data", "u.item", "u.user")]
    # one fingerprint for the tables as read, as cached, and as a run holds them (users / items sorted)
    fp = tables_fingerprint(first)
    assert record["fingerprint"] == fp == tables_fingerprint(Tables.load(cache))
    assert tables_fingerprint(SplitData.from_tables(Tables.load(cache)).tables) == fp

    (folder / "notes.txt").write_text("a new file under the folder\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recfunnel.data.sources"):
        load_tables(tiny(folder, data), data)
    assert caplog.records[-1].getMessage().endswith(f"(a source file is new: {folder / 'notes.txt'})")

    # a bad file: one error, the cache as it was, and never served for the changed source
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    (folder / "u.data").write_text("1\t1\t4\n")
    for _ in range(2):
        with pytest.raises(Exception, match="u.data:1: expected 4 fields"):  # Hydra wraps the RecfunnelError
            load_tables(tiny(folder, data), data)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert not [p for p in cache.parent.iterdir() if p.name != "tables"]  # no temporary folder left

    # a cache from before source keys (no source.json) is read again once
    grouplens(folder, EVENTS[:5] + [(2, 3, 4, 400)])
    (cache / SOURCE_JSON).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recfunnel.data.sources"):
        tables = load_tables(tiny(folder, data), data)
    assert caplog.records[-1].getMessage().endswith("(the cache records no source: it predates source keys)")
    assert tables.interactions["ts"].tolist()[-1] == 400 and tables_fingerprint(tables) != fp


# -- runs know their data --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_on_a(tmp_path_factory):
    """A retriever run trained with ``paths.data_dir=A``, where A holds ML-100K with 80,000 events."""
    base = tmp_path_factory.mktemp("data_cache")
    a = base / "A"
    recbole_copy(a / "ml-100k-recbole", events=80_000)
    out = base / "retriever"
    proc = run("recfunnel.train", *FAST_RETRIEVER, f"paths.data_dir={a}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, a


def info(run_dir) -> dict:
    return json.loads((run_dir / "run_info.json").read_text())


def default_fingerprint() -> str:
    config = {"name": "ml100k", "source": {"_target_": "recfunnel.data.movielens.load_movielens",
                                           "cache_dir": str(DATA_DIR), "local_dir": None}}
    return tables_fingerprint(load_tables(config, DATA_DIR))


def test_a_run_records_the_fingerprint_of_the_tables_it_trained_on(trained_on_a):
    out, a = trained_on_a
    recorded = info(out)
    cached = Tables.load(a / "ml100k" / "tables")
    assert len(cached.interactions) == 80_000
    assert recorded["data_name"] == "ml100k" and recorded["data_dir"] == str(a.resolve())
    assert recorded["data_fingerprint"] == tables_fingerprint(cached) != default_fingerprint()


def test_retriever_loads_its_own_data_and_refuses_other_tables_naming_both(trained_on_a, tmp_path, caplog):
    out, a = trained_on_a
    fp = info(out)["data_fingerprint"]
    retriever = Retriever.from_run(out)  # before: paths.data_dir of the caller's choosing, unchecked
    assert retriever.data_fingerprint == fp and retriever.data_dir == str(a.resolve())
    assert len(retriever.data.tables.interactions) == 80_000

    b = tmp_path / "B"
    recbole_copy(b / "ml-100k-recbole")  # the whole of ML-100K: other tables
    with pytest.raises(RecfunnelError) as refused:
        Retriever.from_run(out, data_dir=str(b))
    other_fp = tables_fingerprint(Tables.load(b / "ml100k" / "tables"))
    message = str(refused.value)
    assert "\n" not in message and other_fp != fp
    assert f"was trained on ml100k tables with fingerprint {fp} from {a.resolve()}, but {b.resolve()} holds ml100k " \
           f"tables with fingerprint {other_fp}" in message

    # a run from before fingerprints were recorded still loads, unchecked, and says so at DEBUG
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / "run_info.json").write_text(json.dumps({k: v for k, v in info(out).items() if not k.startswith("data_")}))
    with caplog.at_level(logging.DEBUG, logger="recfunnel.serving.retriever"):
        loaded = Retriever.from_run(old, data_dir=str(b))
    assert loaded.data_fingerprint == other_fp
    assert any("records no data fingerprint" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_funnel_uses_its_retrievers_data_not_the_default_folder(trained_on_a, tmp_path):
    out, a = trained_on_a
    funnel = tmp_path / "funnel"
    # no paths.data_dir: the funnel's own is the default folder, which holds the whole of ML-100K
    proc = run("recfunnel.funnel", "debug=fast", "logger=csv", "pairs.max_events_per_user=2", "funnel.timing_users=5",
               f"retriever.run_dir={out}", f"hydra.run.dir={funnel}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = info(funnel)
    assert recorded["data_fingerprint"] == info(out)["data_fingerprint"] != default_fingerprint()
    assert recorded["data_dir"] == str(a.resolve()) and recorded["data_name"] == "ml100k"

    rec = Recommender.from_run(funnel)  # the same data by default
    assert rec.funnel.retriever.data_fingerprint == recorded["data_fingerprint"]
    assert len(rec.funnel.retriever.data.tables.interactions) == 80_000
    with pytest.raises(RecfunnelError, match=f"fingerprint {recorded['data_fingerprint']} from {a.resolve()}, but "):
        Recommender.from_run(funnel, data_dir=str(DATA_DIR))


def test_resuming_a_run_on_other_tables_is_refused(trained_on_a, tmp_path):
    out, a = trained_on_a
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    b = tmp_path / "B"
    recbole_copy(b / "ml-100k-recbole")
    # paths.* may change on a resume (a moved data folder), the tables may not
    proc = run("recfunnel.train", *FAST_RETRIEVER, f"paths.data_dir={b}", f"hydra.run.dir={copy}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and "Traceback" not in proc.stderr
    fp = info(out)["data_fingerprint"]
    assert f"trained on ml100k tables with fingerprint {fp} (data folder {a.resolve()}), but this start loaded " \
           f"ml100k tables with fingerprint " in said[0] and f"from {b.resolve()}" in said[0]
    assert info(copy)["data_fingerprint"] == fp  # the record stays the run's
