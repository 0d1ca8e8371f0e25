"""What the feature pipeline hands to models: per tower, a ``KeyedJaggedTensor`` and a dense tensor."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclasses.dataclass
class TowerInput:
    """Inputs of one tower for a batch of B rows.

    sparse: KJT with the tower's sparse features as keys (stride B; values are embedding-row ids).
    dense: (B, F) float32, the tower's dense features in schema order, *not yet* normalised.
    """

    sparse: KeyedJaggedTensor
    dense: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.dense.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TowerInput:
        return TowerInput(self.sparse.to(device, non_blocking=non_blocking),
                          self.dense.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TowerInput:
        return TowerInput(self.sparse.pin_memory(), self.dense.pin_memory())


def make_kjt(keys: list[str], values: list[np.ndarray], lengths: list[np.ndarray]) -> KeyedJaggedTensor:
    """KJT from per-key values (ids) and lengths (each of length B), given as numpy arrays."""
    if not keys:
        return KeyedJaggedTensor.empty(values_dtype=torch.int64, lengths_dtype=torch.int32)
    return KeyedJaggedTensor(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32, copy=False)))
