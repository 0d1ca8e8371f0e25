"""Lightning DataModule: train events → per-tower inputs; valid/test targets → query-side inputs.

Every batch is built by ``FeaturePipeline`` from a list of event rows (vectorised, no per-example
collate). A training batch is a dict::

    {"user": TowerInput, "context": TowerInput, "item": TowerInput,   # item = the event's item as of its time
     "user_idx": (B,) long, "item_idx": (B,) long, "rows": (B,) long,
     "neg_item": TowerInput, "neg_idx": (N,) long}                      # only with num_negatives > 0

An evaluation batch has the query towers plus ``"eval_pos"`` (B,): positions in the split's
``EvalSet`` (whose targets and exclusions the task reads). ``catalogue()`` gives the item tower's
inputs for every item as of the end of the train split.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.data.sources import load_split
from recfunnel.eval.protocol import EvalSet
from recfunnel.features.batch import TowerInput
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.schema import FeatureSchema

log = logging.getLogger(__name__)
QUERY_TOWERS = ("user", "context")


class EventBatches(Dataset):
    """Indexed by a *list* of positions (from a BatchSampler); returns one whole batch."""

    def __init__(self, pipeline: FeaturePipeline, rows: np.ndarray, with_items: bool,
                 eval_positions: bool = False, num_negatives: int = 0):
        self.pipeline, self.rows, self.with_items, self.eval_positions = pipeline, rows, with_items, eval_positions
        self.num_negatives = num_negatives

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]) -> dict[str, Any]:
        positions = np.asarray(positions, dtype=np.int64)
        rows = self.rows[positions]
        p = self.pipeline
        batch: dict[str, Any] = {t: p.query(rows, t) for t in QUERY_TOWERS}
        batch["user_idx"] = torch.from_numpy(p.user_idx[rows])
        batch["rows"] = torch.from_numpy(rows)
        if self.with_items:
            batch["item"] = p.items(p.item_idx[rows], p.ts[rows])
            batch["item_idx"] = torch.from_numpy(p.item_idx[rows])
        if self.num_negatives:
            # uniform negatives, each as of the time of a random event of the batch (so their
            # as-of features look like the positives')
            neg = torch.randint(p.num_items, (self.num_negatives,)).numpy()
            when = p.ts[rows][torch.randint(len(rows), (self.num_negatives,)).numpy()]
            batch["neg_item"] = p.items(neg, when)
            batch["neg_idx"] = torch.from_numpy(neg)
        if self.eval_positions:
            batch["eval_pos"] = torch.from_numpy(positions)
        return batch


def _whole_batch(batch: Any) -> Any:
    return batch


class RecDataModule(pl.LightningDataModule):
    """Loads a dataset config, splits it, and serves feature batches.

    Args:
        data_cfg: the ``data`` config node (name, source, min_events).
        features_cfg: the ``features`` config node (a schema).
        data_dir: cache folder for canonical tables.
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
        num_workers: DataLoader worker processes (each receives a copy of the pipeline).
        pin_memory: pin host memory for faster GPU copies; None = when CUDA is available.
        num_negatives: uniform catalogue negatives added to each training batch (``neg_item``).
    """

    def __init__(self, data_cfg: Mapping[str, Any], features_cfg: Mapping[str, Any], data_dir: str,
                 batch_size: int = 1024, eval_batch_size: int = 2048, num_workers: int = 0,
                 pin_memory: bool | None = None, drop_last: bool = True, num_negatives: int = 0):
        super().__init__()
        self.data_cfg, self.features_cfg, self.data_dir = data_cfg, features_cfg, data_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last, self.num_negatives = drop_last, num_negatives
        self.data: SplitData | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        self.data = load_split(self.data_cfg, self.data_dir)
        self.schema = FeatureSchema.from_config(self.features_cfg, where=f"features ({self.features_cfg.get('name')})")
        self.pipeline = FeaturePipeline(self.schema, self.data, where=f"features ({self.schema.name})")
        self.train_rows = np.flatnonzero(self.data.split == TRAIN)
        self.evalsets = {name: EvalSet.build(self.data, name) for name in ("valid", "test")}
        log.info("data %s: %d users, %d items, %d train events", self.data_cfg["name"],
                 self.data.num_users, self.data.num_items, len(self.train_rows))

    # -- what models need to know ---------------------------------------------------------------
    @property
    def num_embeddings(self) -> dict[str, int]:
        return self.pipeline.num_embeddings

    def dense_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per tower (mean, std) of dense features over the train split."""
        return {t: self.pipeline.dense_stats(t, self.train_rows) for t in (*QUERY_TOWERS, "item")}

    def catalogue(self) -> TowerInput:
        """Item-tower inputs for all items, as of just after the last train event."""
        return self.pipeline.items(np.arange(self.data.num_items), self.pipeline.catalogue_time())

    # -- loaders ---------------------------------------------------------------------------------
    def _loader(self, dataset: EventBatches, batch_size: int, shuffle: bool, drop_last: bool) -> DataLoader:
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=drop_last),
                          batch_size=None, collate_fn=_whole_batch, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = EventBatches(self.pipeline, self.train_rows, with_items=True, num_negatives=self.num_negatives)
        drop = self.drop_last and len(self.train_rows) >= self.batch_size
        return self._loader(ds, self.batch_size, shuffle=True, drop_last=drop)

    def eval_dataloader(self, split: str) -> DataLoader:
        ds = EventBatches(self.pipeline, self.evalsets[split].rows, with_items=False, eval_positions=True)
        return self._loader(ds, self.eval_batch_size, shuffle=False, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
