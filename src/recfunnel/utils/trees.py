"""Nested configs as flat, dotted keys: what run comparison, the resume check and the data cache's
source key compare."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → ``{"a.b.c": leaf}``; lists and empty mappings stay whole leaves."""
    if not isinstance(tree, Mapping):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, Mapping) and v else {key: v})
    return out
