"""Entry-point decorator: user-fixable errors print one clear line and exit 2 (a run stopped by
SIGTERM: 143), no traceback soup.

Wraps any entry point (argparse ones too); with Hydra, put it *under* ``@hydra.main`` so it runs
inside Hydra's error handling::

    @hydra.main(version_base="1.3", config_path=..., config_name="train")
    @friendly_errors
    def main(cfg): ...
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from omegaconf.errors import OmegaConfBaseException

from recfunnel.utils.errors import RecfunnelError, RunStopped


def user_message(error: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit status for a user-fixable error, looking through wrappers
    (Hydra's ``InstantiationException`` hides the real cause in ``__cause__``); None for a bug."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RunStopped):
            return f"stopped: {error}", error.exit_code
        if isinstance(error, RecfunnelError):
            return f"error: {error}", error.exit_code
        if isinstance(error, OmegaConfBaseException):  # a missing key or broken interpolation
            return f"config error: {error}", 2
        error = error.__cause__ or error.__context__
    return None


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised below unless the user can fix it
            found = user_message(e)
            if found is None:
                raise
        message, status = found
        print(message, file=sys.stderr)
        sys.exit(status)

    return wrapper
