"""The personalised requests the serving benchmarks send (``bench_serving.py``, ``serving_ab.py``).

Only numpy here: ``serving_ab.py``'s worker imports this before it imports the ``recfunnel`` of the
revision it measures.
"""

from __future__ import annotations

import numpy as np


def personalised_requests(user_ids: np.ndarray, item_ids: np.ndarray, n: int, unknown_every: int = 0
                          ) -> list[tuple[object, list]]:
    """``n`` (user, recent items) requests: user i mod U, with two random recent items on odd i
    (seed 0); with ``unknown_every`` = m > 0, every m-th request (i = 0, m, 2m, ...) is from an
    unknown user, which exercises the fallback."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        user = "unknown-user" if unknown_every and i % unknown_every == 0 else user_ids[i % len(user_ids)]
        out.append((user, list(rng.choice(item_ids, 2, replace=False)) if i % 2 else []))
    return out
