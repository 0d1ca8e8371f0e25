"""Choose a W&B mode that never makes a run wait on an unreachable server.

W&B in ``online`` mode with an API key but no network blocks for about 100 s and
then raises ``CommError``; ``offline`` mode writes ``<dir>/wandb/offline-run-*`` with no
network calls, to be uploaded later with ``wandb sync``. :func:`decide_wandb_mode`
picks ``online`` only when credentials exist and the W&B host answers within a few
seconds, and :func:`make_wandb_logger` builds a Lightning ``WandbLogger`` with that
mode (Hydra: ``_target_: recfunnel.utils.wandb_mode.make_wandb_logger``).

The API key never leaves this module: it is not sent by the reachability probe and
is scrubbed from every reason string.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from recfunnel.utils.run_info import redact

if TYPE_CHECKING:
    from pytorch_lightning.loggers import WandbLogger

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")

_RUN_DIR = "<run dir>"
_SYNC_HINT = f"upload later with `wandb sync {_RUN_DIR}/wandb/offline-run-*`"


def decide_wandb_mode(
    requested: str = "auto", timeout_s: float = 3.0, base_url: str | None = None
) -> tuple[str, str]:
    """Return ``(mode, reason)`` for ``wandb.init(mode=...)``.

    Args:
        requested: ``"auto"``, ``"online"``, ``"offline"`` or ``"disabled"``.
            ``"offline"`` and ``"disabled"`` are returned as is. ``"auto"`` first
            honours ``WANDB_MODE=offline|dryrun|disabled`` from the environment.
            ``"auto"`` and ``"online"`` give ``"online"`` only when a well-formed
            credential is configured (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``
            or a ``.netrc`` entry for the W&B host, found as wandb itself finds them)
            and the host answers an HTTP(S) request within ``timeout_s``; otherwise
            ``"offline"``, whose reason says why and how to upload the run later.
        timeout_s: Hard bound on the network check (DNS included).
        base_url: W&B server to check; defaults to the URL wandb would use
            (``WANDB_BASE_URL``, ``wandb login --host``, or wandb's default).

    Returns:
        The mode and a one-line reason that never contains the API key.

    Raises:
        ValueError: If ``requested`` is not one of :data:`MODES`.
    """
    if requested not in MODES:
        raise ValueError(f"wandb mode must be one of {MODES}, got {requested!r}")
    if requested == "offline":
        return "offline", f"mode 'offline' requested; {_SYNC_HINT}"
    if requested == "disabled":
        return "disabled", "mode 'disabled' requested; nothing is logged to W&B"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if requested == "auto" and env_mode in ("offline", "dryrun", "disabled"):
        mode = "disabled" if env_mode == "disabled" else "offline"
        hint = _SYNC_HINT if mode == "offline" else "nothing is logged to W&B"
        return mode, f"WANDB_MODE={env_mode} is set in the environment; {hint}"

    secret = ""
    try:
        url = base_url or _default_base_url()
        secret, source, problem = _find_credential(url)
        host = _display_host(url)
    except Exception as e:  # wandb internals moved, or a bad URL/.netrc: never crash here
        reason = f"could not read W&B settings ({type(e).__name__}: {e})"
        return "offline", _scrub(f"{reason}; {_SYNC_HINT}", secret)
    if source is None:
        reason = "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    elif problem:
        reason = f"W&B API key from {source} is malformed ({problem.rstrip('.')})"
    else:
        answered, detail = _probe(url, timeout_s)
        if answered:
            return "online", _scrub(f"credentials from {source}; {host} {detail}", secret)
        reason = f"credentials from {source} but {host} is unreachable ({detail})"
    return "offline", _scrub(f"{reason}; {_SYNC_HINT}", secret)


def make_wandb_logger(
    project: str,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    save_dir: str | os.PathLike = ".",
    mode: str = "auto",
    log_model: bool | str = True,
    config: Mapping[str, Any] | None = None,
    probe_timeout_s: float = 3.0,
    init_timeout_s: float = 30.0,
    **kw: Any,
) -> WandbLogger:
    """Build a Lightning ``WandbLogger`` whose mode comes from :func:`decide_wandb_mode`.

    Logs one line with the decision and its reason. ``config`` (a dict or an OmegaConf
    node) is resolved and passed through :func:`recfunnel.utils.run_info.redact`
    before it reaches W&B. Unless ``settings`` is given in ``kw``,
    ``wandb.Settings(init_timeout=init_timeout_s)`` caps how long ``wandb.init`` may
    wait on a server that answered the probe but then stalls (wandb's default is 90 s;
    on expiry ``wandb.init`` raises ``CommError``).
    The run directory is ``<save_dir>/wandb/``. Other ``kw`` go to ``WandbLogger`` (e.g.
    ``checkpoint_name``) and on to ``wandb.init`` (e.g. ``job_type``).

    ``recfunnel.runs`` calls it once per stage with that stage's ``name``, ``group`` and
    ``job_type`` (the attribute ``starts_wandb_run`` tells it so).
    """
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    decided, reason = decide_wandb_mode(mode, timeout_s=probe_timeout_s)
    save_dir = os.fspath(save_dir)
    reason = reason.replace(_RUN_DIR, str(Path(save_dir).resolve()))
    fell_back = mode in ("auto", "online") and decided != "online"
    (log.warning if fell_back else log.info)("W&B mode %s: %s", decided, reason)
    kw.setdefault("settings", wandb.Settings(init_timeout=init_timeout_s))
    # checkpoints are uploaded from the run directory, not copied to W&B's staging folder first
    kw.setdefault("add_file_policy", "immutable")
    return WandbLogger(
        project=project,
        name=name,
        group=group,
        tags=list(tags) if tags is not None else None,
        save_dir=save_dir,
        log_model=log_model,
        config=redact(_plain(config)) if config is not None else None,
        mode=decided,
        **kw,
    )


make_wandb_logger.starts_wandb_run = True  # type: ignore[attr-defined]


def _default_base_url() -> str:
    """The server URL wandb will use: its global settings (env, settings file, default)."""
    from wandb.sdk import wandb_setup

    return wandb_setup.singleton().settings.base_url


def _find_credential(base_url: str) -> tuple[str, str | None, str | None]:
    """Return ``(secret, source, problem)``, looking where ``wandb.login`` looks.

    ``source`` is None when no credential is configured; ``problem`` is wandb's own
    description of a malformed key (it never quotes the key).
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib import wbauth

    if key := os.environ.get("WANDB_API_KEY"):
        return key, "WANDB_API_KEY", wbauth.check_api_key(key)
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return "", "WANDB_IDENTITY_TOKEN_FILE", None
    try:
        key = wbauth.read_netrc_auth(host=base_url)
    except AuthenticationError as e:  # a malformed key in .netrc
        return "", "netrc", str(e)
    return (key, "netrc", None) if key else ("", None, None)


def _probe(url: str, timeout_s: float) -> tuple[bool, str]:
    """Whether ``url`` gives any HTTP answer within ``timeout_s`` (DNS included).

    Any HTTP status counts as an answer. No credentials are sent. The request runs in
    a daemon thread so a stuck resolver cannot hold the caller past ``timeout_s``.
    """
    outcome: list[tuple[bool, str]] = []
    start = time.monotonic()

    def attempt() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except Exception as e:
            cause = getattr(e, "reason", e)
            outcome.append((False, f"{type(cause).__name__}: {cause}"))
            return
        outcome.append((True, f"answered HTTP {status} in {time.monotonic() - start:.2f}s"))

    thread = threading.Thread(target=attempt, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else (False, f"no answer within {timeout_s:g}s")


def _display_host(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, without any user:password part."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _scrub(text: str, secret: str) -> str:
    """``text`` with ``secret`` and the ``WANDB_API_KEY`` value replaced by ``***``."""
    for value in (secret, os.environ.get("WANDB_API_KEY")):
        if value:
            text = text.replace(value, "***")
    return text


def _plain(config: Any) -> Any:
    """Resolve an OmegaConf node to plain containers; return anything else unchanged."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config
