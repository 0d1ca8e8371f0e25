"""Run metadata (git, versions, machine) and secret redaction."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime

import pytest

from recfunnel.utils.run_info import TRACKED_PACKAGES, redact, redact_overrides, run_metadata

KEY = "cafef00d" * 5


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_metadata_in_a_git_repo(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "init")

    meta = run_metadata(seed=7, cwd=tmp_path)
    assert len(meta["git_commit"]) == 40 and meta["git_commit"].startswith(meta["git_commit_short"])
    assert meta["git_dirty"] is False
    assert meta["seed"] == 7
    (tmp_path / "a.txt").write_text("changed\n")
    assert run_metadata(cwd=tmp_path)["git_dirty"] is True
    json.dumps(meta)  # serialisable as is


def test_metadata_outside_a_repo(tmp_path):
    meta = run_metadata(cwd=tmp_path)
    assert meta["git_commit"] is None and meta["git_commit_short"] is None
    assert meta["git_dirty"] is None and meta["seed"] is None
    assert set(meta["versions"]) == set(TRACKED_PACKAGES)
    assert meta["versions"]["torch"] and meta["versions"]["numpy"]
    assert meta["python"].count(".") == 2 and meta["host"]
    assert isinstance(meta["cuda_available"], bool)
    assert (meta["cuda_device"] is not None) == meta["cuda_available"]
    assert datetime.fromisoformat(meta["timestamp_utc"]).utcoffset().total_seconds() == 0


def test_missing_package_version_is_none(monkeypatch):
    import recfunnel.utils.run_info as run_info

    monkeypatch.setattr(run_info, "TRACKED_PACKAGES", ("numpy", "no_such_pkg_xyz"))
    versions = run_info.run_metadata()["versions"]
    assert versions["numpy"] and versions["no_such_pkg_xyz"] is None


def test_redact_secret_keys_recursively(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = {
        "api_key": "k1",
        "WANDB_API_KEY": "k2",
        "apiKey": "k3",
        "hf_token": "k4",
        "Client-Secret": {"nested": "k5"},
        "db": {"PASSWORD": "k6", "host": "localhost"},
        "runs": [{"access_token": "k7", "lr": 0.1}, ("keep", {"secret": 3})],
        "num_tokens": 512,
        "tokenizer": "bpe",
        "token": None,
    }
    out = redact(cfg)
    assert "k1" not in json.dumps(out) and "k7" not in json.dumps(out)
    assert out["api_key"] == out["WANDB_API_KEY"] == out["apiKey"] == out["hf_token"] == "***"
    assert out["Client-Secret"] == "***"
    assert out["db"] == {"PASSWORD": "***", "host": "localhost"}
    assert out["runs"] == [{"access_token": "***", "lr": 0.1}, ("keep", {"secret": "***"})]
    assert out["num_tokens"] == 512 and out["tokenizer"] == "bpe" and out["token"] is None
    assert cfg["api_key"] == "k1"  # the input is not modified


def test_redact_current_wandb_key_anywhere(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    out = redact({"note": KEY, "cmd": ["wandb", "login", KEY], "url": f"https://x?k={KEY}", "n": 1})
    assert out == {"note": "***", "cmd": ["wandb", "login", "***"], "url": "https://x?k=***", "n": 1}
    assert redact(KEY) == "***"


def test_redact_without_wandb_key_keeps_strings(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "")
    assert redact({"a": "text", "b": [1, "x"]}) == {"a": "text", "b": [1, "x"]}


def test_redact_overrides_hides_secret_values_and_keeps_the_rest(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    given = ["+logger.wandb.api_key=abc", "db_password=pw", "model.lr=0.1", "+hf_token=t", "~tags",
             "note=" + "k" * 40, "num_tokens=5"]
    assert redact_overrides(given) == ["+logger.wandb.api_key=***", "db_password=***", "model.lr=0.1", "+hf_token=***",
                                       "~tags", "note=***", "num_tokens=5"]
