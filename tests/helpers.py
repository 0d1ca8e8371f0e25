"""What several test files share: paths and running the real entry points as users run them.

Import from here (``from helpers import ...``), never from another test file or from conftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ML-100K is fetched once into the repo's data/ cache (as `make train` does)
DATA_DIR = Path(os.environ.get("RECFUNNEL_DATA_DIR", ROOT / "data"))


def run(*args: str, cwd: Path = ROOT, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m <args>`` in ``cwd``; returns the finished process (stdout/stderr as text)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)
