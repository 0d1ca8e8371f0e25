"""What produced a run: code version, library versions, machine, seed, the data it read; and secret
redaction."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recfunnel.utils.io import write_json

#: Import names whose installed distribution versions :func:`run_metadata` records.
TRACKED_PACKAGES = (
    "torch",
    "torchrec",
    "fbgemm_gpu",
    "pytorch_lightning",
    "hydra",
    "wandb",
    "faiss",
    "numpy",
)

# A key is secret when one of its words (split on _, -, . and camelCase) is one of these.
_SECRET_KEY = re.compile(r"(?:^|_)(?:api_?key|token|secret|password|passwd)(?:_|$)")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
REDACTED = "***"
OVERRIDES_FILE = "overrides.yaml"  # in a run directory: the command-line overrides it was started with (redacted)


def run_metadata(seed: int | None = None, cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """Describe the code, environment and machine of the current run.

    Args:
        seed: The run's random seed, recorded as given.
        cwd: Directory whose git repository is described; the process cwd by default.

    Returns:
        A JSON-serialisable dict. Git fields are None outside a repository or without
        git; a version is None when the package is not installed (versions are read
        from package metadata, so nothing heavy is imported except ``torch``).
    """
    status = _git(cwd, "status", "--porcelain")
    meta: dict[str, Any] = {
        "git_commit": _git(cwd, "rev-parse", "HEAD"),
        "git_commit_short": _git(cwd, "rev-parse", "--short", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": platform.python_version(),
        "versions": _versions(TRACKED_PACKAGES),
        "host": socket.gethostname(),
        "seed": seed,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(_cuda())
    return meta


def read_run_id(run_dir: str | os.PathLike) -> str | None:
    """The id a run directory's ``run_info.json`` records (None for a new directory)."""
    return read_run_info(run_dir).get("run_id")


#: what a run records about its data once loaded (``data_info``); a run from before they were
#: recorded lacks them
DATA_KEYS = ("data_name", "data_dir", "data_fingerprint")


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A run directory's ``run_info.json`` ({} when it has none or it cannot be read)."""
    try:
        info = json.loads((Path(run_dir) / "run_info.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def data_info(name: str, data_dir: str | os.PathLike, fingerprint: str) -> dict[str, str]:
    """The ``DATA_KEYS`` of a run that loaded dataset ``name`` from the data folder ``data_dir``
    (recorded absolute) with tables of ``fingerprint`` (``recfunnel.data.fingerprint``)."""
    return {"data_name": str(name), "data_dir": str(Path(data_dir).resolve()), "data_fingerprint": str(fingerprint)}


def update_run_info(run_dir: str | os.PathLike, fields: dict[str, Any]) -> None:
    """Add ``fields`` to a run directory's ``run_info.json`` (rewritten atomically)."""
    write_json(Path(run_dir) / "run_info.json", {**read_run_info(run_dir), **fields})


def redact(obj: Any) -> Any:
    """Return a copy of ``obj`` with secrets replaced by ``"***"``.

    Recurses through dicts, lists and tuples. A non-None value under a key such as
    ``api_key``, ``WANDB_API_KEY``, ``apiKey``, ``hf_token``, ``client_secret`` or
    ``db_password`` (case-insensitive, matched on whole words so ``num_tokens`` is
    kept) is replaced whatever its type, and so is every occurrence of the current
    ``WANDB_API_KEY`` value inside any string.
    """
    return _redact(obj, os.environ.get("WANDB_API_KEY") or None)


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides (``key=value``, ``+key=value``) with the value of each secret key (those
    of :func:`redact`, e.g. ``+logger.wandb.api_key=...``) replaced by ``"***"``, and the current
    ``WANDB_API_KEY`` value replaced wherever it appears."""
    out = []
    for override in overrides:
        key, sep, _ = override.partition("=")
        out.append(f"{key}={REDACTED}" if sep and _is_secret_key(key.lstrip("+~")) else override)
    return redact(out)


def _redact(obj: Any, api_key: str | None) -> Any:
    """:func:`redact` with the API key looked up once."""
    if isinstance(obj, dict):
        return {
            k: REDACTED if v is not None and _is_secret_key(k) else _redact(v, api_key)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redact(v, api_key) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_redact(v, api_key) for v in obj)
    if isinstance(obj, str) and api_key:
        return obj.replace(api_key, REDACTED)
    return obj


def _is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (see :func:`redact`)."""
    words = _CAMEL.sub("_", str(key)).lower().replace("-", "_").replace(".", "_")
    return _SECRET_KEY.search(words) is not None


def _git(cwd: str | os.PathLike | None, *args: str) -> str | None:
    """Stripped stdout of ``git *args`` in ``cwd``, or None if git fails or is absent."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _versions(import_names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of the distribution providing each import name, or None."""
    providers = importlib.metadata.packages_distributions()
    versions: dict[str, str | None] = {}
    for name in import_names:
        versions[name] = None
        for dist in providers.get(name, ()):
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def _cuda() -> dict[str, Any]:
    """CUDA availability, device name and CUDA build of torch (None without torch)."""
    try:
        import torch
    except ImportError:
        return {"cuda_available": None, "cuda_device": None, "cuda_version": None}
    available = torch.cuda.is_available()
    return {
        "cuda_available": available,
        "cuda_device": torch.cuda.get_device_name(0) if available else None,
        "cuda_version": torch.version.cuda,
    }
