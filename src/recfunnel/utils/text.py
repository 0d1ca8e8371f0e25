"""What counts as no text, for text features and the evaluation's query slice alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd


def is_missing(values: Sequence[Any]) -> np.ndarray:
    """(n,) bool: no text: None, NaN, pandas' NA, an empty or blank string, or a token list of only
    blank tokens (a RecBole ``token_seq`` title)."""
    out = np.ones(len(values), dtype=bool)
    for i, v in enumerate(values):
        if isinstance(v, str):
            out[i] = not v.strip()
        elif isinstance(v, (list, tuple, np.ndarray)):
            out[i] = not any(str(w).strip() for w in v)
        else:
            out[i] = bool(pd.isna(v))
    return out
