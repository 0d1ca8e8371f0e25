"""Lightning DataModule: train events → per-tower inputs; valid/test targets → query-side inputs.

Every batch is gathered from the materialised features of its events (``FeatureStore``: each
event's as-of-time features computed once by ``FeaturePipeline`` and memory-mapped from the data
cache); no per-example collate. A training batch is a dict::

    {"user": TowerInput, "context": TowerInput, "item": TowerInput,   # item = the event's item as of its time
     "user_idx": (B,) long, "item_idx": (B,) long, "rows": (B,) long,
     "neg_item": TowerInput, "neg_idx": (N,) long}                      # only with num_negatives > 0

An evaluation batch has the query towers plus ``"eval_pos"`` (B,): positions in the split's
``EvalSet`` (whose targets and exclusions the task reads). ``catalogue()`` gives the item tower's
inputs for every item as of the end of the train split.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from recfunnel.data.dataset import TRAIN, SplitData
from recfunnel.data.loaders import evaluation_loader, training_loader, unpack_key
from recfunnel.data.sources import load_split
from recfunnel.eval.protocol import EvalSet
from recfunnel.features.auto import resolve_schema
from recfunnel.features.batch import TowerInput
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.store import FeatureStore, store_key
from recfunnel.utils.arrays import concat_ranges
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.timing import timed

log = logging.getLogger(__name__)


class EventBatches(Dataset):
    """Indexed by a *list* of positions (from a BatchSampler); returns one whole batch."""

    def __init__(self, store: FeatureStore, rows: np.ndarray, with_items: bool,
                 eval_positions: bool = False, num_negatives: int = 0):
        self.store, self.rows, self.with_items, self.eval_positions = store, rows, with_items, eval_positions
        self.pipeline = store.pipeline
        self.num_negatives = num_negatives

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> dict[str, Any]:
        positions, rng = unpack_key(key)
        batch = self.batch_for_rows(self.rows[positions], rng)
        if self.eval_positions:
            batch["eval_pos"] = torch.from_numpy(positions)
        return batch

    def batch_for_rows(self, rows: np.ndarray, rng: np.random.Generator | None = None) -> dict[str, Any]:
        p = self.pipeline
        batch: dict[str, Any] = self.store.queries(rows)
        batch["user_idx"] = torch.from_numpy(p.user_idx[rows])
        batch["rows"] = torch.from_numpy(rows)
        if self.with_items:
            batch["item"] = self.store.event_items(rows)
            batch["item_idx"] = torch.from_numpy(p.item_idx[rows])
        if self.num_negatives:
            # uniform negatives, each as of the time of a random event of the batch (so their
            # as-of features look like the positives')
            rng = rng or np.random.default_rng()
            neg = rng.integers(p.num_items, size=self.num_negatives)
            when = p.ts[rows][rng.integers(len(rows), size=self.num_negatives)]
            batch["neg_item"] = p.items(neg, when)
            batch["neg_idx"] = torch.from_numpy(neg)
        return batch


class WindowBatches(EventBatches):
    """Training batches of whole windows: ``window_length`` consecutive train events of a user.

    Besides the per-event towers, a batch carries ``window = {"tokens": (W+1, L), "query_index": (B,)}``:
    for each window the L items before its last event (−1 padding at the start), plus one row of only
    padding; and for each event the flat position of the token just before it (or the last position
    of the padding row when the event has no earlier item). A causal encoder then reads every
    event's history from one pass per window. Needs L ≥ window_length.
    """

    def __init__(self, store: FeatureStore, train_rows_mask: np.ndarray, window_length: int, tokens: int,
                 num_negatives: int = 0):
        if tokens < window_length:
            raise RecfunnelError(f"data.train_windows={window_length} exceeds the history length {tokens}; "
                                 "use windows no longer than the history feature's max_len")
        p = store.pipeline
        is_train = train_rows_mask[p.order]  # per position of `order`
        counts = np.add.reduceat(is_train.astype(np.int64), p.timeline_ptr[:-1]) if len(is_train) else np.zeros(0, int)
        counts = np.where(np.diff(p.timeline_ptr) > 0, counts, 0)
        per_user = -(-counts // window_length)  # windows per user, rounded up
        user = np.repeat(np.arange(len(counts)), per_user)
        k = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
        self.win_start = p.timeline_ptr[user] + k * window_length
        self.win_end = np.minimum(self.win_start + window_length, p.timeline_ptr[user] + counts[user])
        self.user_start = p.timeline_ptr[user]
        self.tokens = tokens
        super().__init__(store, np.arange(len(user)), with_items=True, num_negatives=num_negatives)

    def __getitem__(self, key) -> dict[str, Any]:
        w, rng = unpack_key(key)
        ws, we, us, L = self.win_start[w], self.win_end[w], self.user_start[w], self.tokens
        p = self.pipeline
        event_pos = concat_ranges(ws, we)  # positions in `order`
        batch = self.batch_for_rows(p.order[event_pos], rng)
        first = we - 1 - L  # position in `order` of token slot 0 (may be before the user's start)
        tok_lo = np.maximum(us, first)
        tok_pos = concat_ranges(tok_lo, we - 1)
        win_of_tok = np.repeat(np.arange(len(w)), we - 1 - tok_lo)
        tokens = np.full((len(w) + 1, L), -1, dtype=np.int64)
        tokens[win_of_tok, tok_pos - first[win_of_tok]] = p.item_idx[p.order[tok_pos]]
        win_of_event = np.repeat(np.arange(len(w)), we - ws)
        has_history = event_pos > us[win_of_event]
        query = np.where(has_history, win_of_event * L + event_pos - 1 - first[win_of_event], len(w) * L + L - 1)
        batch["window"] = {"tokens": torch.from_numpy(tokens), "query_index": torch.from_numpy(query)}
        return batch


class RecDataModule(pl.LightningDataModule):
    """Loads a dataset, splits it by the protocol, and serves feature batches. Built from the ``data``
    config group (``_target_`` here); the run adds what the rest of the config decides
    (``recfunnel.tasks.build.build_datamodule``).

    Args:
        name: the dataset's name (its cache folder under ``data_dir``).
        source: the config of the function that reads or generates its canonical tables
            (``_target_`` + arguments), called on the first ``setup`` unless cached.
        features: the ``features`` config node (a schema).
        data_dir: cache folder for canonical tables.
        min_events: users with fewer events stay entirely in train.
        batch_size: training batch size; evaluation uses ``eval_batch_size``.
        num_workers: DataLoader worker processes (each receives a copy of the pipeline).
        pin_memory: pin host memory for faster GPU copies; None = when CUDA is available.
        num_negatives: uniform catalogue negatives added to each training batch (``neg_item``).
        train_windows: 0 for batches of shuffled events; T > 0 for batches of windows of T consecutive
            train events per user (``WindowBatches``), about ``batch_size`` events each, for causal
            history encoders; ``window_tokens`` is then the history length L they read.
    """

    def __init__(self, name: str, source: Mapping[str, Any], features: Mapping[str, Any], data_dir: str,
                 min_events: int = 3, batch_size: int = 1024, eval_batch_size: int = 2048, num_workers: int = 0,
                 pin_memory: bool | None = None, drop_last: bool = True, num_negatives: int = 0,
                 train_windows: int = 0, window_tokens: int = 50, seed: int = 0):
        super().__init__()
        self.data_cfg = {"name": name, "source": source, "min_events": min_events}
        self.features_cfg, self.data_dir = features, data_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.drop_last, self.num_negatives = drop_last, num_negatives
        self.train_windows, self.window_tokens, self.seed = train_windows, window_tokens, seed
        self.data: SplitData | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        with timed("data (tables and split)"):
            self.data = load_split(self.data_cfg, self.data_dir)
        with timed("features (schema and pipeline)"):
            self.schema = resolve_schema(self.features_cfg, self.data,
                                         where=f"features ({self.features_cfg.get('name')})")
            self.pipeline = FeaturePipeline(self.schema, self.data, where=f"features ({self.schema.name})")
        with timed("features (materialised store)"):
            key = store_key(self.pipeline, self.data.fingerprint, self.data_cfg["min_events"])
            self.store = FeatureStore.open(self.pipeline, Path(self.data_dir) / self.data_cfg["name"] / "features",
                                           key, progress=len(self.data.ts) > 1_000_000)
        self.train_rows = np.flatnonzero(self.data.split == TRAIN)
        self.evalsets = {name: EvalSet.build(self.data, name) for name in ("valid", "test")}
        log.info("data %s: %d users, %d items, %d train events", self.data_cfg["name"],
                 self.data.num_users, self.data.num_items, len(self.train_rows))

    # -- what models need to know ---------------------------------------------------------------
    @property
    def num_embeddings(self) -> dict[str, int]:
        return self.pipeline.num_embeddings

    def dense_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per tower (mean, std) of dense features over the train split (the item tower's: of each train
        event's own item as of the event), from the materialised features."""
        return self.store.dense_stats(self.train_rows)

    def catalogue(self) -> TowerInput:
        """Item-tower inputs for all items, as of just after the last train event."""
        return self.pipeline.items(np.arange(self.data.num_items), self.pipeline.catalogue_time())

    def model_inputs(self) -> dict[str, Any]:
        """What a model built for this data needs to know (``recfunnel.tasks.build.build_task``)."""
        return {"schema": self.schema, "num_embeddings": self.num_embeddings, "item_counts": self.data.item_counts(),
                "dense_stats": self.dense_stats(), "text_vectors": self.pipeline.text_vectors}

    # -- loaders ---------------------------------------------------------------------------------
    def eval_dataloader(self, split: str) -> DataLoader:
        ds = EventBatches(self.store, self.evalsets[split].rows, with_items=False, eval_positions=True)
        return evaluation_loader(ds, self.eval_batch_size, num_workers=self.num_workers, pin_memory=self.pin_memory,
                                 persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_windows:
            ds = WindowBatches(self.store, self.data.split == TRAIN, self.train_windows, self.window_tokens,
                               num_negatives=self.num_negatives)
            batch_size, drop = max(1, self.batch_size // self.train_windows), False
        else:
            ds = EventBatches(self.store, self.train_rows, with_items=True, num_negatives=self.num_negatives)
            batch_size, drop = self.batch_size, self.drop_last and len(self.train_rows) >= self.batch_size
        return training_loader(self, ds, batch_size, self.seed, drop, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
