"""Batch loaders shared by both DataModules (retrieval and ranking).

A dataset here is indexed by a whole batch key and returns a whole batch (vectorised feature
building, no per-example collate). Training keys are ``(seed, epoch, batch index, positions)`` so
that a batch's random draws (negatives) depend on nothing but its key; evaluation keys are lists of
positions. ``ResumableLoader`` resumes an epoch mid-way from the trainer's own counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from recfunnel.utils.dist import rank_world


def unpack_key(key) -> tuple[np.ndarray, np.random.Generator | None]:
    """A sampler key is a list of positions, or (seed, epoch, batch index, positions) for training
    batches, whose random draws (negatives) then depend on nothing but that key."""
    if isinstance(key, tuple):
        seed, epoch, index, positions = key
        return np.asarray(positions, dtype=np.int64), np.random.default_rng((seed, epoch, index))
    return np.asarray(key, dtype=np.int64), None


def whole_batch(batch: Any) -> Any:
    """The collate function of datasets that already return whole batches."""
    return batch


class EpochBatchSampler:
    """Shuffled batches whose order depends only on (seed, epoch): epoch e of a resumed run sees
    exactly the batches it would have seen uninterrupted.

    In a multi-process run (``torch.distributed`` initialised) rank r of W trains batches r, r + W,
    r + 2W, ... of the epoch's sequence, and every rank the same number of them (the last
    ``batches % W`` are dropped), so ``batch_size`` is per process, as Lightning has it.
    """

    def __init__(self, size: int, batch_size: int, seed: int, drop_last: bool):
        self.size, self.batch_size, self.seed, self.drop_last = size, batch_size, seed, drop_last
        self.epoch, self.skip = 0, 0

    def _batches(self) -> int:
        return self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)

    def __len__(self) -> int:
        return self._batches() // rank_world()[1]

    def __iter__(self):
        rank, world = rank_world()
        perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        for local in range(self.skip, len(self)):
            index = local * world + rank
            yield (self.seed, self.epoch, index, perm[index * self.batch_size:(index + 1) * self.batch_size].tolist())


class RankBlockBatches:
    """Evaluation batches of consecutive positions. With W processes, rank r scores the r-th of W
    near-equal blocks of ``range(size)``, so every position is scored exactly once; each rank's block
    is cut into the same number of near-equal batches (at most ``batch_size`` each), since a sharded
    model's every forward is a collective call of all ranks."""

    def __init__(self, size: int, batch_size: int):
        self.size, self.batch_size = size, batch_size

    def _blocks(self) -> tuple[np.ndarray, int]:
        rank, world = rank_world()
        block = np.array_split(np.arange(self.size), world)[rank]
        largest = -(-self.size // world)
        return block, -(-largest // self.batch_size)

    def __len__(self) -> int:
        block, batches = self._blocks()
        return min(batches, len(block))

    def __iter__(self):
        block, batches = self._blocks()
        if rank_world()[1] == 1:  # one process: full batches, the last one shorter
            parts = [block[i:i + self.batch_size] for i in range(0, len(block), self.batch_size)]
        else:
            parts = np.array_split(block, batches) if len(block) else []
        for part in parts:
            if len(part):
                yield part.tolist()


class ResumableLoader(DataLoader):
    """Training DataLoader whose epochs resume mid-way.

    Each ``iter()`` asks ``progress()`` for (epoch, batches already trained in that epoch) — the
    trainer's own counters, restored from the checkpoint on resume — and yields the rest of that
    epoch of its ``EpochBatchSampler``. So a run killed mid-epoch continues on the very next batch,
    with the same batches and negatives as an uninterrupted run. Without ``progress`` epochs simply
    count up from 0.
    """

    def __init__(self, dataset: Dataset, sampler: EpochBatchSampler,
                 progress: Callable[[], tuple[int, int]] | None = None, **kw):
        # its own generator: creating an iterator must not draw from torch's global one (dropout's)
        super().__init__(dataset, sampler=sampler, batch_size=None, collate_fn=whole_batch,
                         generator=torch.Generator().manual_seed(sampler.seed), **kw)
        self.epoch_sampler, self.progress, self._epochs = sampler, progress, 0

    def __iter__(self):
        epoch, done = self.progress() if self.progress else (self._epochs, 0)
        self.epoch_sampler.epoch, self.epoch_sampler.skip = epoch, done
        self._epochs += 1
        return super().__iter__()


def trainer_progress(trainer: pl.Trainer | None) -> tuple[int, int]:
    """(epoch, batches done in it) from the attached trainer, for ``ResumableLoader``; (0, 0) without one."""
    if trainer is None:
        return 0, 0
    # "processed", not "completed": a checkpoint saved in on_train_batch_end has trained its batch
    # but not yet counted it as completed, and Lightning asks for the iterator before fixing that
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


def training_loader(dm: pl.LightningDataModule, dataset: Dataset, batch_size: int, seed: int, drop_last: bool,
                    **kw) -> ResumableLoader:
    """Shuffled, resumable training batches of ``dataset`` for the DataModule ``dm``."""
    return ResumableLoader(dataset, EpochBatchSampler(len(dataset), batch_size, seed, drop_last),
                           lambda: trainer_progress(dm.trainer), **kw)


def evaluation_loader(dataset: Dataset, batch_size: int, **kw) -> DataLoader:
    """Batches of consecutive positions of ``dataset``, in order; with several processes, each scores
    its own block (``RankBlockBatches``). Its own generator: an evaluation pass must not draw from
    torch's global one (dropout's), or how many passes a job runs would change what it trains next."""
    return DataLoader(dataset, sampler=RankBlockBatches(len(dataset), batch_size),
                      batch_size=None, collate_fn=whole_batch, generator=torch.Generator().manual_seed(0), **kw)
