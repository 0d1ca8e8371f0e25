"""FAISS nearest-neighbour index over item-tower outputs, searched with the model's own score.

The two-tower model scores a (user, item) pair as ``dot(u, v) / temperature`` on the tower outputs
(which the model may already L2-normalise). Retrieval must rank items exactly as that score does,
so the index is built with ``METRIC_INNER_PRODUCT`` on exactly those vectors:

- An L2 index ranks by ``‖u − v‖² = ‖u‖² + ‖v‖² − 2·u·v``; the ``‖v‖²`` term penalises long item
  vectors that the trained score favours, so unless every item vector has the same norm, L2 retrieves
  a different top-K from the one the model was trained and evaluated with.
- Cosine (normalising here) throws away the item norm the model learnt, for the same reason.
- Dividing by a positive temperature does not change the order, so it is left out: the scores this
  index returns are raw inner products ``u·v``; divide by the temperature for the model's logits.

Three kinds: ``flat`` (exact, brute force), ``ivf`` (``IndexIVFFlat``: k-means lists, searches
``nprobe`` of them) and ``hnsw`` (``IndexHNSWFlat`` graph, searches with a beam of ``ef_search``).
``benchmarks/bench_index.py`` measures their recall against ``flat`` and their speed.

Items are addressed by dense index ``0 … I−1`` (row of the item matrix); ``item_ids_of`` maps them to
the caller's external ids. A saved index carries a caller-chosen ``fingerprint`` (say, the run id of
the model whose vectors it holds) so that an index built from another model can be refused on load.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import torch

from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path

KINDS = ("flat", "ivf", "hnsw")
FORMAT = "recfunnel.item_index"
FORMAT_VERSION = 1
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "item_ids.npy", "meta.json"
# Search defaults used when ``search`` is not given ``nprobe`` / ``ef_search`` (see bench_index.py).
DEFAULT_NPROBE_FRACTION, DEFAULT_MIN_NPROBE = 1 / 32, 16  # nprobe = max(nlist / 32, min(nlist, 16))
DEFAULT_EF_SEARCH = 128  # raised to 2·k for larger k
MIN_TRAIN_PER_LIST = 39  # faiss warns below this many training vectors per k-means centroid


@contextlib.contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run the block with faiss's (process-global) OpenMP thread count set to ``threads``.

    ``None`` leaves the current setting alone. The previous count is restored afterwards.
    """
    if threads is None:
        yield
        return
    if threads < 1:
        raise RecfunnelError(f"threads must be ≥ 1, got {threads}")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _as_matrix(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A C-contiguous float32 (N, D) copy-if-needed of ``x``; rejects other ranks and non-finite values."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise RecfunnelError(f"{name} must be a 2-D (N, D) matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise RecfunnelError(f"{name} contains NaN or inf values")
    return x


def index_fingerprint(run_id: str, ckpt: str | None) -> str:
    """What a run's saved index is checked against: the run and the checkpoint its vectors came from."""
    return f"{run_id}:{Path(ckpt or 'final').name}"


def default_nlist(num_items: int) -> int:
    """≈ 4·√I inverted lists, but at most I / 39 so every k-means centroid has enough training points."""
    return max(1, min(round(4 * math.sqrt(num_items)), num_items // MIN_TRAIN_PER_LIST))


class ItemIndex:
    """Top-K maximum-inner-product search over a fixed item matrix.

    Attributes:
        index: the faiss index (metric ``METRIC_INNER_PRODUCT``), holding I vectors of dimension D.
        item_ids: (I,) external id of each dense index.
        kind: one of ``KINDS``.
        fingerprint: caller-chosen string naming what the vectors came from ("" if none).
        params: the build parameters of this kind (``nlist``; ``hnsw_m``, ``ef_construction``; ``seed``).
    """

    def __init__(self, index: faiss.Index, item_ids: np.ndarray, kind: str, fingerprint: str,
                 params: dict):
        self.index = index
        self.item_ids = item_ids
        self.kind = kind
        self.fingerprint = fingerprint
        self.params = params

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def num_items(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, item_vectors: np.ndarray | torch.Tensor, item_ids: np.ndarray | None = None,
              kind: str = "flat", *, nlist: int | None = None, train_per_list: int = 64,
              hnsw_m: int = 32, ef_construction: int = 200, seed: int = 0, fingerprint: str = "",
              threads: int | None = None) -> ItemIndex:
        """Index the item-tower outputs.

        Args:
            item_vectors: (I, D) the vectors the model scores with (cast to float32).
            item_ids: (I,) external id of each row, unique, numeric or string; default ``arange(I)``.
            kind: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
            nlist: IVF: number of k-means lists; default ``default_nlist(I)``.
            train_per_list: IVF: k-means trains on a seeded subsample of at most
                ``train_per_list · nlist`` vectors (all of them if fewer).
            hnsw_m: HNSW: links per node.
            ef_construction: HNSW: beam width while building.
            seed: seeds the IVF k-means and the HNSW level draws (multi-threaded HNSW builds
                still differ slightly from run to run).
            fingerprint: stored with the index and checked by ``load(..., expect_fingerprint=)``.
            threads: faiss OpenMP threads while building; ``None`` keeps the current setting.
        """
        if kind not in KINDS:
            raise RecfunnelError(f"unknown index kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        vectors = _as_matrix(item_vectors, "item_vectors")
        num_items, dim = vectors.shape
        if num_items == 0:
            raise RecfunnelError("item_vectors is empty: there is nothing to index")
        if item_ids is None:
            ids = np.arange(num_items, dtype=np.int64)
        else:
            ids = item_ids.detach().cpu().numpy() if isinstance(item_ids, torch.Tensor) else np.asarray(item_ids)
            if ids.shape != (num_items,):
                raise RecfunnelError(f"item_ids must have shape ({num_items},) to match item_vectors, "
                                     f"got {ids.shape}")
            if ids.dtype == object:  # e.g. string ids from a pandas column: saved without pickle as fixed width
                if not all(isinstance(i, str) for i in ids):
                    raise RecfunnelError("item_ids must be numbers or strings (one kind), not mixed Python objects")
                ids = ids.astype(str)
            if len(np.unique(ids)) != num_items:
                raise RecfunnelError("item_ids contains duplicates; each row needs its own id")

        params: dict = {"seed": seed}
        with faiss_threads(threads):
            if kind == "flat":
                index = faiss.IndexFlatIP(dim)
            elif kind == "ivf":
                nlist = default_nlist(num_items) if nlist is None else nlist
                if not 1 <= nlist <= num_items:
                    raise RecfunnelError(f"nlist must be in [1, {num_items}] (number of items), got {nlist}")
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
                index.cp.seed = seed
                index.cp.max_points_per_centroid = train_per_list
                index.train(vectors)
                index.nprobe = max(round(nlist * DEFAULT_NPROBE_FRACTION), min(nlist, DEFAULT_MIN_NPROBE))
                params.update(nlist=nlist, train_per_list=train_per_list)
            else:
                index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.rng = faiss.RandomGenerator(seed)
                index.hnsw.efConstruction = ef_construction
                index.hnsw.efSearch = DEFAULT_EF_SEARCH
                params.update(hnsw_m=hnsw_m, ef_construction=ef_construction)
            index.add(vectors)
        return cls(index, ids, kind, fingerprint, params)

    def search(self, queries: np.ndarray | torch.Tensor, k: int, *, nprobe: int | None = None,
               ef_search: int | None = None, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query.

        Args:
            queries: (Q, D) user-tower outputs (cast to float32).
            k: results per query; more than I is clamped to I with a warning.
            nprobe: IVF only: lists to scan (clamped to nlist); default max(nlist / 32, min(nlist, 16)).
            ef_search: HNSW only: search beam width (recall falls off as it nears k);
                default max(128, 2·k).
            threads: faiss OpenMP threads for this call; ``None`` keeps the current setting.
        Returns:
            scores: (Q, k) float32 inner products, best first.
            indices: (Q, k) int64 dense item indices. An approximate index may find fewer than k
                items (IVF with few lists probed): those slots hold index −1 and score −inf.
        """
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise RecfunnelError(f"queries have dimension {q.shape[1]} but the index holds "
                                 f"{self.dim}-dimensional item vectors")
        if k < 1:
            raise RecfunnelError(f"k must be ≥ 1, got {k}")
        if k > self.num_items:
            warnings.warn(f"k={k} exceeds the {self.num_items} indexed items; returning k={self.num_items}",
                          stacklevel=2)
            k = self.num_items
        if nprobe is not None and self.kind != "ivf":
            raise RecfunnelError(f"nprobe applies to kind='ivf' only; this index is {self.kind!r}")
        if ef_search is not None and self.kind != "hnsw":
            raise RecfunnelError(f"ef_search applies to kind='hnsw' only; this index is {self.kind!r}")
        params = None
        if nprobe is not None:
            if nprobe < 1:
                raise RecfunnelError(f"nprobe must be ≥ 1, got {nprobe}")
            params = faiss.SearchParametersIVF(nprobe=min(nprobe, self.index.nlist))
        if ef_search is not None and ef_search < 1:
            raise RecfunnelError(f"ef_search must be ≥ 1, got {ef_search}")
        if self.kind == "hnsw":
            ef = max(self.index.hnsw.efSearch, 2 * k) if ef_search is None else ef_search
            params = faiss.SearchParametersHNSW(efSearch=ef)
        with faiss_threads(threads):
            scores, indices = self.index.search(q, k, params=params)
        scores[indices < 0] = -np.inf
        return scores, indices

    def item_ids_of(self, idx: np.ndarray) -> np.ndarray:
        """External ids of dense item indices ``idx`` (any shape; the result has the same shape).

        Raises on −1 (an empty search slot); drop those first, e.g. ``idx[idx >= 0]``.
        """
        idx = np.asarray(idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_items):
            raise RecfunnelError(f"item indices must be in [0, {self.num_items}); got values in "
                                 f"[{idx.min()}, {idx.max()}] (−1 marks an empty search slot)")
        return self.item_ids[idx]

    def save(self, folder: str | Path) -> None:
        """Write ``index.faiss``, ``item_ids.npy`` and ``meta.json`` into ``folder``, atomically
        (an existing index at ``folder`` is replaced only once the new one is complete)."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                "metric": "inner_product", "num_items": self.num_items, "fingerprint": self.fingerprint,
                "params": self.params, "faiss_version": faiss.__version__}
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, self.item_ids, allow_pickle=False)
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | Path, expect_fingerprint: str | None = None) -> ItemIndex:
        """Read an index written by ``save``.

        Args:
            expect_fingerprint: if given, the stored fingerprint must equal it (guards against
                serving an index built from another model's item vectors).
        """
        folder = Path(folder)
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise RecfunnelError(f"{folder} is not a saved ItemIndex (cannot read {META_FILE}: {e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RecfunnelError(f"{folder} is not a saved ItemIndex ({META_FILE} lacks format={FORMAT!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise RecfunnelError(f"{folder}: ItemIndex format version {meta.get('format_version')} is not "
                                 f"supported (expected {FORMAT_VERSION}); rebuild the index")
        if expect_fingerprint is not None and meta["fingerprint"] != expect_fingerprint:
            raise RecfunnelError(f"{folder} was built with fingerprint {meta['fingerprint']!r}, expected "
                                 f"{expect_fingerprint!r}: the index is from other item vectors; rebuild it")
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
            ids = np.load(folder / IDS_FILE, allow_pickle=False)
        except (OSError, RuntimeError, ValueError) as e:
            raise RecfunnelError(f"{folder}: cannot read the saved ItemIndex files: {e}") from e
        if (index.d, index.ntotal, len(ids)) != (meta["dim"], meta["num_items"], meta["num_items"]) \
                or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise RecfunnelError(f"{folder}: {INDEX_FILE} / {IDS_FILE} do not match {META_FILE} "
                                 f"(dim {index.d}, {index.ntotal} vectors, {len(ids)} ids, metric "
                                 f"{index.metric_type}); rebuild the index")
        return cls(index, ids, meta["kind"], meta["fingerprint"], meta["params"])


def ann_recall(exact_idx: np.ndarray, approx_idx: np.ndarray) -> float:
    """Recall of approximate top-K against exact top-K: mean over queries of |approx ∩ exact| / K.

    Args:
        exact_idx: (Q, K) dense item indices from an exact (``flat``) search.
        approx_idx: (Q, K) dense item indices from the approximate search; −1 slots count as misses.
    """
    exact_idx, approx_idx = np.asarray(exact_idx), np.asarray(approx_idx)
    if exact_idx.shape != approx_idx.shape or exact_idx.ndim != 2:
        raise RecfunnelError(f"ann_recall needs two (Q, K) arrays of the same shape, got "
                             f"{exact_idx.shape} and {approx_idx.shape}")
    q, k = exact_idx.shape
    if q * k == 0:
        raise RecfunnelError("ann_recall needs at least one query and K ≥ 1")
    # Make ids unique across rows (row · stride + index) so one set test covers every row at once.
    stride = int(max(exact_idx.max(), approx_idx.max())) + 1
    rows = np.arange(q, dtype=np.int64)[:, None] * stride
    valid = approx_idx >= 0
    hits = np.isin((approx_idx + rows)[valid], (exact_idx + rows).ravel()).sum()
    return float(hits) / (q * k)
