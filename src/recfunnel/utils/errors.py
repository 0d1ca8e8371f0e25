"""The one exception type users see for mistakes they can fix (config, data, checkpoint, CLI)."""


class RecfunnelError(Exception):
    """A user-fixable problem; the message names the thing at fault and what would fix it.

    Entry points catch it and print the message alone (no traceback), then exit with status 2.
    """
