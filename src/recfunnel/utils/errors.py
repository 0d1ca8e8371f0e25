"""The exception types users see for mistakes they can fix (config, data, checkpoint, CLI) and for
runs stopped from outside."""


class RecfunnelError(Exception):
    """A user-fixable problem; the message names the thing at fault and what would fix it.

    Entry points catch it and print the message alone (no traceback), then exit with ``exit_code``.
    """

    exit_code = 2


class RunStopped(RecfunnelError):
    """A run stopped by SIGTERM (``kill``, a scheduler's pre-emption, a container stop) after saving
    its state; exit status 143 (128 + SIGTERM) so schedulers requeue it."""

    exit_code = 143
