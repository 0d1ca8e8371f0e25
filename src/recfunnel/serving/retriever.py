"""A trained two-tower run, loaded for candidate generation: user tower + FAISS index.

    retriever = Retriever.from_run("logs/train/runs/<time>")   # a finished recfunnel.train run
    vectors = retriever.query_vectors(retriever.pipeline, rows)  # (B, d) as of each event
    items, scores = retriever.search(vectors, k=100, seen=retriever.seen_before(retriever.pipeline, rows))

The index is the one the run saved (``index/``, inner product over the selected checkpoint's item
vectors); it is checked against the run's id and checkpoint, so an index copied from another run
is refused. ``seen`` items are removed from each result list (the user's earlier items), which
then still holds ``k`` items.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from recfunnel.data.datamodule import RecDataModule
from recfunnel.data.dataset import SplitData
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.models.two_tower import TwoTower
from recfunnel.serving.index import ItemIndex, index_fingerprint
from recfunnel.tasks.build import build_datamodule, build_task
from recfunnel.tasks.checkpoints import check_compatible, load_checkpoint
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.run_info import read_run_id

log = logging.getLogger(__name__)


class Retriever:
    """Args:
        run_dir: the training run it came from.
        cfg: that run's resolved config.
        dm: its DataModule (data, split, the retriever's feature pipeline), set up.
        net: the two-tower model with the selected checkpoint's weights, in eval mode.
        index: the run's item index.
    """

    def __init__(self, run_dir: Path, cfg: DictConfig, dm: RecDataModule, net: TwoTower, index: ItemIndex):
        self.run_dir, self.cfg, self.dm, self.net, self.index = run_dir, cfg, dm, net, index
        self.pipeline: FeaturePipeline = dm.pipeline
        self.item_vectors = index.index.reconstruct_n(0, index.num_items)  # (I, d), what the index scores

    @classmethod
    def from_run(cls, run_dir: str | Path, data_dir: str | None = None) -> Retriever:
        """Load a finished ``recfunnel.train`` run of a retrieval model (``config.yaml``,
        ``checkpoints/best.ckpt``, ``index/``, ``run_info.json``)."""

        run_dir = Path(run_dir)
        cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoints" / "best.ckpt"
        for path in (cfg_path, ckpt, run_dir / "index"):
            if not path.exists():
                raise RecfunnelError(f"{path} is missing: retriever.run_dir must be a finished `recfunnel.train` run "
                                     "of a retrieval model (model=two_tower)")
        cfg = OmegaConf.load(cfg_path)
        if not str(cfg.model.get("_target_", "")).endswith("RetrievalTask"):
            raise RecfunnelError(f"{run_dir} trained {cfg.model.get('_target_')}, not a retrieval model; "
                                 "retriever.run_dir needs a two-tower run")
        if data_dir is not None:
            cfg.paths.data_dir = data_dir
        dm = build_datamodule(cfg)
        task = build_task(cfg.model, dm)
        checkpoint = load_checkpoint(ckpt)
        check_compatible(task, checkpoint)
        task.load_state_dict(checkpoint["state_dict"])
        run_id = read_run_id(run_dir)
        index = ItemIndex.load(run_dir / "index", expect_fingerprint=index_fingerprint(run_id, str(ckpt)) if run_id else None)
        if index.num_items != dm.data.num_items:
            raise RecfunnelError(f"{run_dir / 'index'} holds {index.num_items} items but the run's data has "
                                 f"{dm.data.num_items}; rebuild the index (rerun the training command)")
        return cls(run_dir, cfg, dm, task.net.eval(), index)

    @property
    def data(self) -> SplitData:
        """The run's data and split."""
        return self.dm.data

    def retrieve(self, rows: np.ndarray, k: int, what: str = "events", chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query vectors (B, d), top-``k`` lists (B, k) without the user's earlier items, and their
        scores (B, k), for event ``rows`` (B,) of this retriever's pipeline (a progress bar when long)."""
        queries, lists, scores = [], [], []
        for lo in tqdm(range(0, len(rows), chunk), desc=f"retrieving for {what}", leave=False,
                       disable=len(rows) <= chunk):
            part = rows[lo:lo + chunk]
            q = self.query_vectors(self.pipeline, part)
            items, s = self.search(q, k, seen=self.seen_before(self.pipeline, part))
            queries.append(q), lists.append(items), scores.append(s)
        return np.concatenate(queries), np.concatenate(lists), np.concatenate(scores)

    @torch.no_grad()
    def query_vectors(self, pipeline: FeaturePipeline, rows: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """(B, d) float32 user-tower outputs as of each event row of ``pipeline`` (this retriever's
        pipeline or a request view of it)."""
        out = []
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            batch = pipeline.queries(chunk)
            out.append(self.net.user_vectors(batch).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.index.dim), np.float32)

    @staticmethod
    def seen_before(pipeline: FeaturePipeline, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr (B+1,), items) of the items each row's user interacted with before it."""
        events, lengths = pipeline.history_events(rows, max_len=np.iinfo(np.int64).max // 4)
        return np.r_[0, np.cumsum(lengths)].astype(np.int64), pipeline.item_idx[events]

    def search(self, queries: np.ndarray, k: int, seen: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query from the index, without each query's ``seen`` items.

        Returns items (B, k) int64 (−1 where fewer than k remain) and scores (B, k) float32 (−inf there).
        """
        B = len(queries)
        if seen is None:
            seen = (np.zeros(B + 1, np.int64), np.zeros(0, np.int64))
        ptr, seen_items = seen
        per_row = np.diff(ptr)
        wide = int(min(self.index.num_items, k + (per_row.max() if B else 0)))
        scores, items = self.index.search(queries, wide) if B else (np.zeros((0, wide), np.float32),
                                                                      np.zeros((0, wide), np.int64))
        # drop seen items: one vectorised membership test on (row, item) keys
        row_of_seen = np.repeat(np.arange(B), per_row)
        seen_keys = row_of_seen * self.index.num_items + seen_items
        keys = np.arange(B)[:, None] * self.index.num_items + items
        drop = np.isin(keys, seen_keys) | (items < 0)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept ones first, in score order
        items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        gone = np.take_along_axis(drop, order, 1)
        items[gone], scores[gone] = -1, -np.inf
        if items.shape[1] < k:  # a catalogue smaller than k
            pad = k - items.shape[1]
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return items, scores
