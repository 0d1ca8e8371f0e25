"""A trained two-tower run, loaded for candidate generation: user tower + FAISS index.

    retriever = Retriever.from_run("logs/train/runs/<time>")   # a finished recfunnel.train run
    vectors = retriever.query_vectors(retriever.pipeline, rows)  # (B, d) as of each event
    items, scores = retriever.search(vectors, k=100, seen=retriever.seen_before(retriever.pipeline, rows))

The index is the one the run saved (``index/``, inner product over the selected checkpoint's item
vectors); it is checked against the run's id and checkpoint, so an index copied from another run
is refused. ``seen`` items are removed from each result list (the user's earlier items), which
then still holds ``k`` items.

The run is loaded with the data it was trained on: its own data folder by default, and whatever the
folder, tables whose fingerprint (``run_info.json``'s ``data_fingerprint``) is the run's.

An ensemble: ``Retriever.from_run([RUN_A, RUN_B, ...])``, runs over the same data and features
(e.g. seeds of one configuration: the funnel's ``retriever.members``). It scores an item by the sum
of its members' scores, u·v = Σ_m u_m·v_m, so its query and item vectors are the members'
concatenated, (B, Σ_m d_m), and one inner-product index over the concatenated item vectors (of the
first member's index kind and settings) serves it exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from recfunnel.data.datamodule import RecDataModule
from recfunnel.data.dataset import SplitData
from recfunnel.features.embedding import request_texts
from recfunnel.features.pipeline import FeaturePipeline
from recfunnel.features.store import FeatureStore
from recfunnel.models.two_tower import TwoTower
from recfunnel.serving.index import ItemIndex, index_fingerprint
from recfunnel.tasks.build import build_datamodule, build_task
from recfunnel.tasks.checkpoints import check_compatible, load_checkpoint
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.progress import progress_bar
from recfunnel.utils.run_info import read_run_info

log = logging.getLogger(__name__)


def check_data(run_dir: Path, info: dict, name: str, data_dir: str, fingerprint: str, own: bool) -> None:
    """Refuse tables (``fingerprint``, read from ``data_dir``) other than those the run at ``run_dir``
    trained on (its ``run_info.json``, ``info``), in one line naming both fingerprints and folders.
    ``own``: ``data_dir`` is the run's own data folder. A run that recorded no fingerprint passes."""
    expected = info.get("data_fingerprint")
    if expected is None:
        log.debug("%s records no data fingerprint (a run from before they were recorded): its data is not checked",
                  run_dir)
        return
    if fingerprint == expected:
        return
    where = Path(data_dir).resolve()
    trained = f"{run_dir} was trained on {info.get('data_name', name)} tables with fingerprint {expected} from {info.get('data_dir')}"
    if own:
        raise RecfunnelError(f"{trained}, but that data folder ({where}) now holds {name} tables with fingerprint "
                             f"{fingerprint} (its source changed since); restore the data it was trained on, or "
                             f"train a new run on this data")
    raise RecfunnelError(f"{trained}, but {where} holds {name} tables with fingerprint {fingerprint}; load it with its "
                         f"own data (leave the data folder unset: data_dir, or the funnel's paths.data_dir) or from a "
                         f"folder holding the same tables, or train a new run on {where}")


#: what a finished ``recfunnel.funnel`` run holds that loading it again needs
FUNNEL_RUN_FILES = ("config.yaml", "retriever_run.txt", "checkpoints/best.ckpt")


def read_retriever_runs(funnel_dir: str | Path) -> list[Path]:
    """The retriever runs a finished funnel run used: its ``retriever_run.txt``, one run per line
    (several: an ensemble)."""
    path = Path(funnel_dir) / "retriever_run.txt"
    runs = [Path(line.strip()) for line in path.read_text().splitlines() if line.strip()]
    if not runs:
        raise RecfunnelError(f"{path} names no retriever run; it should hold the retriever's run directory "
                             "(one per line for an ensemble)")
    return runs


class _Member(NamedTuple):
    """One loaded training run of a retriever."""

    cfg: DictConfig
    dm: RecDataModule
    net: TwoTower
    index: ItemIndex
    fingerprint: str

    @classmethod
    def load(cls, run_dir: Path, data_dir: str | None, like: _Member | None = None,
             key: str = "retriever.run_dir") -> _Member:
        """See ``Retriever.from_run``. ``like``: an ensemble's first member, whose DataModule this run
        shares when it reads the same data with the same features (built once, not once a member).
        ``key``: the config key the run was given by, for the errors."""
        cfg_path, ckpt = run_dir / "config.yaml", run_dir / "checkpoints" / "best.ckpt"
        for path in (cfg_path, ckpt, run_dir / "index"):
            if not path.exists():
                raise RecfunnelError(f"{path} is missing: {key} must be a finished `recfunnel.train` run "
                                     "of a retrieval model (model=two_tower)")
        cfg = OmegaConf.load(cfg_path)
        if not str(cfg.model.get("_target_", "")).endswith("RetrievalTask"):
            raise RecfunnelError(f"{run_dir} trained {cfg.model.get('_target_')}, not a retrieval model; "
                                 f"{key} needs a two-tower run")
        info = read_run_info(run_dir)
        own = str(cfg.paths.data_dir)
        if info.get("data_dir") and not Path(own).is_absolute():  # relative to wherever it was launched from
            own = info["data_dir"]
        used = own if data_dir is None else str(data_dir)
        if OmegaConf.select(cfg, "data.source.cache_dir") == cfg.paths.data_dir:  # the source's downloads move too
            cfg.data.source.cache_dir = used
        cfg.paths.data_dir = used
        same = like is not None and all(
            OmegaConf.to_container(cfg[k], resolve=True) == OmegaConf.to_container(like.cfg[k], resolve=True)
            for k in ("data", "features"))
        dm = like.dm if same else build_datamodule(cfg)
        fingerprint = like.fingerprint if same else dm.data.fingerprint
        check_data(run_dir, info, str(cfg.data.name), used, fingerprint, own=data_dir is None)
        task = build_task(cfg.model, dm)
        checkpoint = load_checkpoint(ckpt)
        check_compatible(task, checkpoint)
        task.load_state_dict(checkpoint["state_dict"])
        run_id = info.get("run_id")
        index = ItemIndex.load(run_dir / "index", expect_fingerprint=index_fingerprint(run_id, str(ckpt)) if run_id else None)
        if index.num_items != dm.data.num_items:
            raise RecfunnelError(f"{run_dir / 'index'} holds {index.num_items} items but the run's data has "
                                 f"{dm.data.num_items}; rebuild the index (rerun the training command)")
        return cls(cfg, dm, task.net.eval(), index, fingerprint)


def _check_joinable(run_dirs: Sequence[Path], members: Sequence[_Member], what: str) -> None:
    """The runs can serve together (``what``: e.g. "one retriever ensemble"): the same tables, features
    and items; else one error naming the first run and the one that differs."""
    first = members[0]
    for run_dir, m in zip(run_dirs[1:], members[1:]):
        differs = ("data fingerprints" if m.fingerprint != first.fingerprint else
                   "features" if OmegaConf.to_container(m.cfg.features, resolve=True) !=
                   OmegaConf.to_container(first.cfg.features, resolve=True) else
                   "item ids" if not np.array_equal(m.index.item_ids, first.index.item_ids) else None)
        if differs:
            raise RecfunnelError(f"{run_dir} cannot join {run_dirs[0]} in {what}: their {differs} differ; "
                                 "train it on the same data with the same features (e.g. the same features= override)")


def _ensemble_index(run_dirs: Sequence[Path], members: Sequence[_Member]) -> ItemIndex:
    """The index of an ensemble (module docstring) over its members' concatenated item vectors, after
    checking that the members can form one (``_check_joinable``)."""
    _check_joinable(run_dirs, members, "one retriever ensemble")
    first = members[0]
    vectors = np.concatenate([m.index.index.reconstruct_n(0, m.index.num_items) for m in members], axis=1)
    base = first.index
    index = ItemIndex.build(vectors, base.item_ids, base.kind, fingerprint="ensemble: " + ", ".join(
        m.index.fingerprint for m in members), **base.params)
    log.info("a retriever ensemble of %d runs (%s): one %s index of %d-dim vectors", len(members),
             ", ".join(map(str, run_dirs)), index.kind, index.dim)
    return index


class Retriever:
    """Args:
        run_dirs: the training runs it came from (one; several for an ensemble).
        cfg: the first run's resolved config.
        dm: its DataModule (data, split, the retriever's feature pipeline), set up.
        nets: each run's two-tower model with its selected checkpoint's weights, in eval mode.
        index: the item index (a run's own; an ensemble's over the concatenated item vectors).
        data_fingerprint: the fingerprint of ``dm``'s tables (computed when not given).

    ``data_name``, ``data_dir`` (absolute) and ``data_fingerprint`` say which data it was loaded with.
    """

    def __init__(self, run_dirs: Sequence[Path], cfg: DictConfig, dm: RecDataModule, nets: Sequence[TwoTower],
                 index: ItemIndex, data_fingerprint: str | None = None):
        self.run_dirs, self.cfg, self.dm, self.index = [Path(d) for d in run_dirs], cfg, dm, index
        self.nets = nn.ModuleList(nets)
        self.data_name = str(cfg.data.name)
        self.data_dir = str(Path(cfg.paths.data_dir).resolve())
        self.data_fingerprint = data_fingerprint or dm.data.fingerprint
        self.pipeline: FeaturePipeline = dm.pipeline
        self.store: FeatureStore = dm.store  # the dataset's events, materialised: the same inputs, gathered
        self.item_vectors = index.index.reconstruct_n(0, index.num_items)  # (I, d), what the index scores

    @property
    def run_dir(self) -> Path:
        """The (first) training run."""
        return self.run_dirs[0]

    @property
    def net(self) -> TwoTower:
        """The (first) run's two-tower model."""
        return self.nets[0]

    @classmethod
    def from_run(cls, run_dir: str | Path | Sequence[str | Path], data_dir: str | None = None) -> Retriever:
        """Load a finished ``recfunnel.train`` run of a retrieval model (``config.yaml``,
        ``checkpoints/best.ckpt``, ``index/``, ``run_info.json``), or several runs as one ensemble
        (module docstring), which must have trained on the same tables with the same ``features``.

        Data: by default the run's own data folder, its config's ``paths.data_dir`` (or, when that is a
        relative path, the absolute folder ``run_info.json`` recorded); ``data_dir`` reads the run's
        dataset from another folder instead. Either way the tables must have the fingerprint the run
        recorded (``data_fingerprint``); other tables are refused with one line naming both
        fingerprints and both folders. A run from before fingerprints were recorded loads unchecked.
        """
        run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]
        if not run_dirs:
            raise RecfunnelError("retriever.run_dir names no run: give a finished `recfunnel.train` run of a "
                                 "two-tower model, or a list of them")
        first = _Member.load(run_dirs[0], data_dir)
        members = [first] + [_Member.load(d, data_dir, like=first) for d in run_dirs[1:]]
        index = first.index if len(members) == 1 else _ensemble_index(run_dirs, members)
        return cls(run_dirs, first.cfg, first.dm, [m.net for m in members], index, data_fingerprint=first.fingerprint)

    @classmethod
    def beside(cls, run_dir: str | Path, first: Retriever) -> Retriever:
        """A second retriever (a finished ``recfunnel.train`` run, e.g. of another user tower) that reads
        ``first``'s data and features, sharing its DataModule, so that both score the same event rows
        and request views; a run over other tables, features or items is refused in one line."""
        run_dir = Path(run_dir)
        like = _Member(first.cfg, first.dm, first.net, first.index, first.data_fingerprint)
        member = _Member.load(run_dir, str(first.cfg.paths.data_dir), like=like, key="second_retriever.run_dir")
        _check_joinable([first.run_dir, run_dir], [like, member], "one first stage (second_retriever)")
        return cls([run_dir], member.cfg, member.dm, [member.net], member.index, data_fingerprint=member.fingerprint)

    @property
    def data(self) -> SplitData:
        """The run's data and split."""
        return self.dm.data

    def retrieve(self, rows: np.ndarray, k: int, what: str = "events", chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Query vectors (B, d), top-``k`` lists (B, k) without the user's earlier items, and their
        scores (B, k), for event ``rows`` (B,) of this retriever's pipeline (a progress bar when long)."""
        queries, lists, scores = [], [], []
        for lo in progress_bar(range(0, len(rows), chunk), desc=f"retrieving for {what}", leave=False,
                               disable=len(rows) <= chunk):
            part = rows[lo:lo + chunk]
            q = self.query_vectors(self.store, part)
            items, s = self.search(q, k, seen=self.seen_before(self.pipeline, part))
            queries.append(q), lists.append(items), scores.append(s)
        return np.concatenate(queries), np.concatenate(lists), np.concatenate(scores)

    @torch.no_grad()
    def query_vectors(self, pipeline: FeaturePipeline | FeatureStore, rows: np.ndarray,
                      batch_size: int = 2048, beside: Sequence[Retriever] = ()) -> np.ndarray:
        """(B, d) float32 user-tower outputs as of each event row of ``pipeline`` (this retriever's
        pipeline or store, or a request view of the pipeline, whose new texts the towers read).
        ``beside``: retrievers over the same features (``Retriever.beside``) whose vectors follow,
        (B, d + Σ d_b), each batch of inputs built once for all."""
        nets = nn.ModuleList([*self.nets, *(net for r in beside for net in r.nets)])
        out = []
        with request_texts(nets, getattr(pipeline, "request_text", {})):
            for lo in range(0, len(rows), batch_size):
                batch = pipeline.queries(rows[lo:lo + batch_size])
                out.append(torch.cat([net.user_vectors(batch).float() for net in nets], 1).numpy())
        dim = self.index.dim + sum(r.index.dim for r in beside)
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    @staticmethod
    def seen_before(pipeline: FeaturePipeline, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr (B+1,), items) of the items each row's user interacted with before it."""
        events, lengths = pipeline.history_events(rows, max_len=np.iinfo(np.int64).max // 4)
        return np.r_[0, np.cumsum(lengths)].astype(np.int64), pipeline.item_idx[events]

    def search(self, queries: np.ndarray, k: int, seen: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query from the index, without each query's ``seen`` items.

        Queries are searched in groups whose seen counts lie within a factor of two (0, 1, 2, 3-4, 5-8,
        ...), each group asking the index for k plus its largest count: a chunk of train events holding
        one user with thousands of items does not make every query of the chunk ask for thousands, and
        a single query asks for k plus its own count.

        Returns items (B, k) int64 (−1 where fewer than k remain) and scores (B, k) float32 (−inf there).
        """
        B = len(queries)
        if seen is None:
            seen = (np.zeros(B + 1, np.int64), np.zeros(0, np.int64))
        ptr, seen_items = seen
        per_row = np.diff(ptr)
        wide = int(min(self.index.num_items, k + (per_row.max() if B else 0)))
        scores = np.full((B, wide), -np.inf, np.float32)
        items = np.full((B, wide), -1, np.int64)
        group = np.ceil(np.log2(np.maximum(per_row, 0.5))).astype(np.int64)  # seen counts within 2x of each other
        for g in np.unique(group):
            sel = np.flatnonzero(group == g)
            w = int(min(self.index.num_items, k + per_row[sel].max()))
            scores[sel, :w], items[sel, :w] = self.index.search(queries[sel], w)
        # drop seen items (and the padding): one vectorised membership test on (row, item) keys
        row_of_seen = np.repeat(np.arange(B), per_row)
        seen_keys = row_of_seen * self.index.num_items + seen_items
        found = items >= 0
        drop = ~found
        drop[found] = np.isin((np.arange(B)[:, None] * self.index.num_items + items)[found], seen_keys)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept ones first, in score order
        items, scores = np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)
        gone = np.take_along_axis(drop, order, 1)
        items[gone], scores[gone] = -1, -np.inf
        if items.shape[1] < k:  # a catalogue smaller than k
            pad = k - items.shape[1]
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return items, scores
