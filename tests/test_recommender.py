"""The serving contract of ``Recommender`` (src/recfunnel/serving/recommender.py) for ordinary
inputs: empty and repeated candidates, id normalisation, the clamp of ``k``, argument types in Python
and on the batch CLI, and the thread count serving sets."""

from __future__ import annotations

import contextlib
import json

import faiss
import numpy as np
import pytest
import torch

from recfunnel.serving.recommender import Recommender
from recfunnel.utils.errors import RecfunnelError

from helpers import DATA_DIR, run


@contextlib.contextmanager
def kept_threads():
    """Restore torch's and faiss's process-wide thread counts afterwards."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def rec(funnel_run):
    with kept_threads():  # from_run sets 1 thread by default; later test modules get the old count back
        yield Recommender.from_run(funnel_run, data_dir=str(DATA_DIR))


def unseen(rec, n):
    """``n`` items user 196 has not seen (their personalised list), so re-ranking keeps them."""
    return rec.recommend(196, k=n)["items"]


def test_empty_candidates_give_an_empty_list(rec):
    for user in (196, "no-such-user"):
        out = rec.recommend(user, candidates=[])
        assert out["items"] == [] and out["scores"] == [], user


def test_repeated_candidates_are_ranked_once(rec):
    a, b, c = unseen(rec, 3)
    for user in (196, "no-such-user"):
        out = rec.recommend(user, k=10, candidates=[a, b, a, str(c), b, c])
        assert sorted(out["items"]) == sorted([a, b, c]) and len(out["scores"]) == 3, user


def test_user_and_item_ids_are_normalised_or_refused(rec):
    base = rec.recommend(196, k=5)
    for same in (196.0, " 196\n", "196", np.int64(196), np.float32(196)):
        out = rec.recommend(same, k=5)
        assert out["fallback"] is None and out["items"] == base["items"], repr(same)
    assert rec.recommend(196.0)["user_id"] == 196 and rec.recommend(" 196 ")["user_id"] == "196"
    json.dumps(rec.recommend(np.int64(196)))  # the response is plain Python
    for bad in (True, np.bool_(False), 196.5, float("nan"), "", "  ", None, [196], b"196"):
        with pytest.raises(RecfunnelError, match=r"^user_id: .* is not a valid user id; pass the id as in the users table"):
            rec.recommend(bad)
    a, b = unseen(rec, 2)
    assert rec.recommend(196, recent_items=[float(a), f" {b} "])["items"] == rec.recommend(196, recent_items=[a, b])["items"]
    assert rec.recommend(196, candidates=[f"{a} ", float(b)])["items"] == rec.recommend(196, candidates=[a, b])["items"]
    with pytest.raises(RecfunnelError, match=r"^candidates: True \(bool\) is not a valid item id"):
        rec.recommend(196, candidates=[a, True])
    with pytest.raises(RecfunnelError, match=r"^recent_items: 1\.5 \(float\) is not a valid item id"):
        rec.recommend(196, recent_items=[1.5])
    with pytest.raises(RecfunnelError, match=r"^recent_items must be a list of item ids"):
        rec.recommend(196, recent_items="242")


def test_k_is_clamped_to_the_retrieval_k_for_everyone(rec):
    K = rec.funnel.candidates
    for user in (196, "no-such-user"):
        out = rec.recommend(user, k=5000)
        assert len(out["items"]) == K == len(set(out["items"])), user
        assert out["note"].startswith(f"k=5000 clamped to {K} ("), user
        assert rec.recommend(user, k=K)["note"] is None and len(rec.recommend(user, k=K)["items"]) == K
    assert list(rec.recommend(196)) == ["user_id", "items", "scores", "fallback", "note"]


def test_k_must_be_a_positive_int(rec):
    for bad in ("10", 0, -3, True, 2.0, None):
        with pytest.raises(RecfunnelError, match=r"^k must be an int ≥ 1, got .*; pass e\.g\. k=10$"):
            rec.recommend(196, k=bad)
    assert len(rec.recommend(196, k=np.int64(3))["items"]) == 3
    for bad in ("abc", 1.5, True):
        with pytest.raises(RecfunnelError, match=r"^at must be unix seconds as an int"):
            rec.recommend(196, at=bad)
    assert rec.recommend(196, k=2, at=int(rec.now) + 86400)["items"]


def test_cli_refuses_bad_k_and_threads_in_one_line(funnel_run, tmp_path, capsys):
    from recfunnel.recommend import main

    users = tmp_path / "users.txt"
    users.write_text("196\nno-such-user\n")
    out = tmp_path / "recs.jsonl"
    common = (f"run_dir={funnel_run}", f"users={users}", f"out={out}")
    for args, message in ((["k=abc"], "error: k=abc is not an integer"), (["k=0"], "error: k must be an int ≥ 1"),
                          (["threads=0"], "error: threads must be an int ≥ 1"),
                          (["thread=2"], "error: unknown argument(s) ['thread=2']")):
        with kept_threads(), pytest.raises(SystemExit) as stop:  # main() as `python -m recfunnel.recommend` runs it
            main([*common, *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith(message) and err.count("\n") == 1, (args, err)
        assert not out.exists()
    proc = run("recfunnel.recommend", *common, "k=5000", "threads=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(d["note"].startswith("k=5000 clamped to") and len(d["items"]) == len(lines[0]["items"]) for d in lines)


def test_from_run_sets_the_thread_count(funnel_run):
    with kept_threads():
        torch.set_num_threads(2)
        Recommender.from_run(funnel_run, data_dir=str(DATA_DIR), threads=1)
        assert torch.get_num_threads() == 1 and faiss.omp_get_max_threads() == 1
        for bad in (0, True, "2"):
            with pytest.raises(RecfunnelError, match=r"^threads must be an int ≥ 1"):
                Recommender.from_run(funnel_run, data_dir=str(DATA_DIR), threads=bad)
