"""Progress bars written to a file (stderr not a terminal) stay a few redraws, not one per 0.1 s."""

from __future__ import annotations

import time

from recfunnel.utils import progress as progress_module
from recfunnel.utils.progress import FILE_REDRAW_S, progress_bar


def test_a_bar_written_to_a_file_redraws_at_most_once_a_minute(capsys):
    """Under pytest stderr is captured, as in a SLURM log: a 1-second loop of 400 steps draws its bar
    when it starts and when it ends (tqdm's default would redraw it about ten times)."""
    bar = progress_bar(range(400), desc="work")
    assert bar.mininterval == FILE_REDRAW_S
    for _ in bar:
        time.sleep(0.0025)
    err = capsys.readouterr().err
    assert "work" in err and err.count("\r") <= 3
    assert progress_bar(range(3), mininterval=0.5).mininterval == 0.5  # an explicit interval wins


def test_a_bar_in_a_terminal_keeps_tqdms_pace(monkeypatch):
    monkeypatch.setattr(progress_module, "interactive", lambda: True)
    assert progress_bar(range(3)).mininterval == 0.1
