"""Entry-point decorator: user-fixable errors print one clear line and exit 2, no traceback soup.

Put it *under* ``@hydra.main`` so it runs inside Hydra's error handling::

    @hydra.main(version_base="1.3", config_path=..., config_name="train")
    @friendly_errors
    def main(cfg): ...
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

from omegaconf.errors import OmegaConfBaseException

from recfunnel.utils.errors import RecfunnelError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RecfunnelError as e:
            message = f"error: {e}"
        except OmegaConfBaseException as e:  # a missing key or broken interpolation in a config
            message = f"config error: {e}"
        logging.getLogger("recfunnel").error(message)
        print(message, file=sys.stderr)
        sys.exit(2)

    return wrapper
