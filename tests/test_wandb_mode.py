"""W&B mode decision: fast offline fallback, no key leaks, and a real offline run."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time

import pytest
import wandb
from pytorch_lightning.loggers import WandbLogger

from recfunnel.utils.wandb_mode import decide_wandb_mode, make_wandb_logger

FAKE_KEY = "deadbeef" * 5  # 40 hex characters: well formed, never valid


@pytest.fixture(autouse=True)
def isolated_wandb(tmp_path, monkeypatch):
    """Keep W&B state, credentials and every file it writes inside ``tmp_path``."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in [
        ("WANDB_DIR", "wandb_dir"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
        ("XDG_CACHE_HOME", "xdg_cache"),
        ("XDG_CONFIG_HOME", "xdg_config"),
        ("XDG_DATA_HOME", "xdg_data"),
    ]:
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.chdir(tmp_path)
    wandb.teardown()  # the wandb singleton caches env vars; start from a fresh one
    yield
    wandb.teardown()


@pytest.fixture
def closed_port():
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A loopback port that completes TCP handshakes but never sends a byte."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.fixture
def http_port():
    """A loopback HTTP server that answers every request with 404."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    """404 for everything, without writing to stderr."""

    def do_GET(self):  # noqa: N802 (http.server API)
        self.send_error(404)

    def log_message(self, *args):
        pass


def _timed(**kw):
    start = time.monotonic()
    mode, reason = decide_wandb_mode(**kw)
    return mode, reason, time.monotonic() - start


@pytest.mark.parametrize("requested", ["offline", "disabled"])
def test_explicit_modes_pass_through(requested, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    mode, reason, seconds = _timed(requested=requested, base_url="http://127.0.0.1:9")
    assert mode == requested and reason and seconds < 0.5


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="auto"):
        decide_wandb_mode("sometimes")


def test_auto_honours_wandb_mode_env(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    mode, reason = decide_wandb_mode("auto", base_url="http://127.0.0.1:9")
    assert mode == "offline" and "WANDB_MODE" in reason


def test_no_key_is_offline_at_once(http_port):
    mode, reason, seconds = _timed(requested="auto", base_url=f"http://127.0.0.1:{http_port}")
    assert mode == "offline"
    assert "no W&B API key" in reason and "wandb sync" in reason and "offline-run-*" in reason
    assert seconds < 0.5


@pytest.mark.parametrize("bad_key", ["abc", "x" * 39, "not hex!" * 6])
def test_malformed_key_is_offline_not_a_crash(bad_key, monkeypatch, http_port):
    monkeypatch.setenv("WANDB_API_KEY", bad_key)
    mode, reason = decide_wandb_mode("online", base_url=f"http://127.0.0.1:{http_port}")
    assert mode == "offline" and "malformed" in reason and bad_key not in reason


def test_key_with_reachable_host_is_online(monkeypatch, http_port):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    mode, reason = decide_wandb_mode("auto", base_url=f"http://127.0.0.1:{http_port}")
    assert mode == "online" and "WANDB_API_KEY" in reason and "HTTP 404" in reason
    assert FAKE_KEY not in reason


def test_key_from_netrc_is_found(tmp_path, http_port):
    (tmp_path / "home" / ".netrc").write_text(
        f"machine 127.0.0.1:{http_port}\n  login user\n  password {FAKE_KEY}\n"
    )
    mode, reason = decide_wandb_mode("auto", base_url=f"http://127.0.0.1:{http_port}")
    assert mode == "online" and "netrc" in reason and FAKE_KEY not in reason


@pytest.mark.parametrize("requested", ["auto", "online"])
def test_closed_port_is_offline_fast_and_key_never_leaks(
    requested, monkeypatch, caplog, capfd, closed_port
):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    mode, reason, seconds = _timed(
        requested=requested, timeout_s=2.0, base_url=f"http://127.0.0.1:{closed_port}"
    )
    assert mode == "offline" and "unreachable" in reason and "wandb sync" in reason
    assert seconds < 2.0 + 1.0
    out, err = capfd.readouterr()
    assert FAKE_KEY not in reason + caplog.text + out + err


def test_silent_server_is_offline_within_timeout(monkeypatch, caplog, capfd, silent_port):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    mode, reason, seconds = _timed(
        requested="online", timeout_s=1.0, base_url=f"http://127.0.0.1:{silent_port}"
    )
    assert mode == "offline" and "unreachable" in reason
    assert 0.9 < seconds < 1.0 + 1.0
    out, err = capfd.readouterr()
    assert FAKE_KEY not in reason + caplog.text + out + err


def test_offline_logger_writes_a_syncable_run(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # must not leak even when unused
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    logger = make_wandb_logger(
        project="recfunnel-test",
        name="offline-smoke",
        group="tests",
        tags=["smoke"],
        save_dir=tmp_path / "runs",
        mode="offline",
        config={"lr": 0.1, "wandb": {"api_key": FAKE_KEY}},
    )
    assert isinstance(logger, WandbLogger)
    logger.log_metrics({"loss": 0.5}, step=1)
    artifact_file = tmp_path / "table.txt"
    artifact_file.write_text("hello\n")
    artifact = wandb.Artifact("smoke-file", type="dataset")
    artifact.add_file(str(artifact_file))
    logger.experiment.log_artifact(artifact)
    assert logger.experiment.config["wandb"]["api_key"] == "***"
    logger.experiment.finish()
    seconds = time.monotonic() - start

    runs = list((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert list(run_dir.glob("run-*.wandb")) and (run_dir / "files").is_dir()
    assert "W&B mode offline" in caplog.text and str(tmp_path / "runs") in caplog.text
    out, err = capfd.readouterr()
    assert FAKE_KEY not in caplog.text + out + err
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert seconds < 10.0
