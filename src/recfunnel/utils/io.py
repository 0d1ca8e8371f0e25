"""Atomic writes: nothing half-written is ever left under a final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Works for files and for directories (the block may create either at the yielded path). A directory
    already at ``final`` is first renamed out of the way (and removed afterwards), so a reader sees
    the old one or the new one, never neither; if another process publishes ``final`` between the two
    renames, its directory is kept (writers of one path write the same thing).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            os.replace(final, tmp / ".old")
        try:
            os.replace(target, final)
        except OSError:
            if not (target.is_dir() and final.is_dir()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
