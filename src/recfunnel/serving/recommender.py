"""Recommendations from a finished funnel run, in Python or in batch (``recommend_file``).

Real time::

    from recfunnel.serving.recommender import Recommender
    rec = Recommender.from_run("logs/funnel/runs/<time>")   # threads=1: torch / faiss threads of this process
    rec.recommend(196, k=10, recent_items=[242, 302])
    # {"user_id": 196, "items": [...], "scores": [...], "fallback": None, "note": None}

The request is served as of ``at`` (default: just after the newest event in the data): the user's
known events, then ``recent_items`` (newest last), are their history; features are computed by the
same pipelines as in training. An unknown user gets the popular-and-fresh list (train interactions
weighted by recency) with ``fallback`` saying so — not an exception. ``candidates=[...]`` ranks a
caller's list instead of retrieving one. ``location=(lat, lon)`` says where the user is, for a
location-aware re-ranking stage (``rerank=geo``; default: the user's home, where the data has one).

Batch (one user id per line in FILE; ``#`` comments and blank lines skipped)::

    python -m recfunnel.recommend run_dir=DIR users=FILE out=FILE.jsonl k=10 threads=1
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

from recfunnel.data.dataset import TRAIN
from recfunnel.data.objectives import parse_objectives, predicted
from recfunnel.data.ranking import ranker_inputs
from recfunnel.models.multitask import ObjectiveMix
from recfunnel.serving.fusion import RankFusion
from recfunnel.serving.pipeline import Funnel, item_catalogue
from recfunnel.serving.rerank import build_reranker
from recfunnel.serving.retriever import FUNNEL_RUN_FILES, Retriever, read_retriever_runs
from recfunnel.tasks.checkpoints import check_compatible, load_checkpoint
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path
from recfunnel.utils.progress import progress_bar
from recfunnel.utils.run_info import read_run_info


class Recommender:
    """Serves one funnel run. Build with ``from_run``.

    Every request answers ``{"user_id", "items", "scores", "fallback", "note"}``:

    - ``user_id``: the id as normalised (see ids below), e.g. ``196`` for ``196.0``, ``"196"`` for ``" 196"``;
    - ``items`` / ``scores``: external item ids, best first, never repeated, and their scores (the ranker's
      logits after re-ranking; for the fallback the popularity weights);
    - ``fallback``: None, or why the list is not personalised (an unknown user);
    - ``note``: None, or what was adjusted in the request (``k`` clamped).

    Ids: user ids and item ids (``recent_items``, ``candidates``) are matched as strings, so ``196``,
    ``"196"`` and ``np.int64(196)`` name the same user. A string is stripped of surrounding whitespace;
    a float is accepted only when integral and the table's ids are integers (``196.0`` → ``196``).
    Bools, other floats (``196.5``, NaN), empty strings and other types raise ``RecfunnelError``.

    ``k`` (an int ≥ 1) is clamped for every request, known user or not, to the most a personalised
    request can return: the funnel's retrieval K (``pairs.candidates`` of the run), and ``note`` says so.
    """

    def __init__(self, funnel: Funnel, ranker_pipeline, popularity: np.ndarray, now: int):
        self.funnel, self.ranker_pipeline = funnel, ranker_pipeline
        data = funnel.retriever.dm.data
        self.user_ids = data.tables.users["user_id"].to_numpy()
        self.item_ids = data.tables.items["item_id"].to_numpy()
        self._user_index = {_key(u): i for i, u in enumerate(self.user_ids)}
        self._item_index = {_key(v): i for i, v in enumerate(self.item_ids)}
        self.popularity = popularity  # (num_items,) fallback score of each item
        self.fallback = np.argsort(-popularity, kind="stable")
        self.max_k = min(funnel.candidates, len(self.item_ids))
        self.now = now

    @classmethod
    def from_run(cls, run_dir: str | Path, data_dir: str | None = None, threads: int | None = 1) -> Recommender:
        """Load a finished ``recfunnel.funnel`` run: its retriever, ranker and re-ranking stages.

        ``threads``: torch intra-op and faiss threads, set process-wide (``set_threads``). The default,
        1 per worker process, keeps single-request latency steady on a busy machine (several threads
        per request split latencies into a slow and a fast population); scale out with processes.
        None leaves the process's settings alone.

        ``data_dir``: None (the default) loads the data the funnel's retriever run was trained on (its own
        data folder); a folder reads that dataset from there instead. Either way the tables must have
        the fingerprint the retriever run and this run recorded (``data_fingerprint`` in their
        ``run_info.json``); other tables are refused with one line naming both fingerprints and folders
        (see ``Retriever.from_run``).
        """
        set_threads(threads)
        run_dir = Path(run_dir)
        for name in FUNNEL_RUN_FILES:
            if not (run_dir / name).exists():
                raise RecfunnelError(f"{run_dir / name} is missing: run_dir must be a finished `recfunnel.funnel` run")
        cfg = OmegaConf.load(run_dir / "config.yaml")
        retriever = Retriever.from_run(read_retriever_runs(run_dir), data_dir=data_dir)
        trained_on = read_run_info(run_dir)
        if trained_on.get("data_fingerprint") not in (None, retriever.data_fingerprint):
            raise RecfunnelError(
                f"{run_dir} was trained on {trained_on.get('data_name')} tables with fingerprint "
                f"{trained_on['data_fingerprint']} from {trained_on.get('data_dir')}, but its retriever run "
                f"{retriever.run_dir} loads {retriever.data_name} tables with fingerprint {retriever.data_fingerprint} "
                f"from {retriever.data_dir}; point retriever_run.txt at the retriever it was trained with, or pass "
                "data_dir=a folder holding the tables it was trained on")
        fusion = RankFusion.of_funnel_run(retriever, run_dir, cfg)
        schema, pipeline, genres, pairs = ranker_inputs(retriever.data, retriever.item_vectors, cfg.features,
                                                        cfg.pairs.profile_len, fusion.cooccurrence if fusion else None)
        net = hydra.utils.instantiate(cfg.model.net)(schema=schema, num_embeddings=pipeline.num_embeddings,
                                                      num_pair_dense=len(pairs.names), text_vectors=pipeline.text_vectors,
                                                      objectives=predicted(parse_objectives(cfg.get("objectives"))))
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        try:
            check_compatible(net, {"state_dict": state})
        except RecfunnelError as e:
            raise RecfunnelError(f"{run_dir}: the ranker checkpoint does not fit features '{schema.name}' / model "
                                 f"config of {run_dir / 'config.yaml'}: {e}") from None
        net.load_state_dict(state)
        net.mix = ObjectiveMix.from_config(net.objectives, cfg.funnel)
        catalogue = item_catalogue(retriever.dm.data.tables.items, genres, retriever.item_vectors)
        funnel = Funnel(retriever, net, pairs, build_reranker(cfg.rerank), catalogue, cfg.pairs.candidates,
                        cfg.funnel.top_n, fusion)
        data = retriever.dm.data
        now = int(data.ts.max()) + 1
        train = data.split == TRAIN
        tau = schema.popularity_half_life_days * 86400 / np.log(2)
        weight = np.exp(-(now - data.ts[train]) / tau)  # popular *and* fresh: recent interactions count more
        return cls(funnel, pipeline, np.bincount(data.item_idx[train], weights=weight, minlength=data.num_items), now)

    def _items(self, ids: Iterable[Any], what: str) -> np.ndarray:
        """Dense indices of external item ids ``ids`` (normalised as the class says), in order."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise RecfunnelError(f"{what} must be a list of item ids, got {ids!r}")
        integer = np.issubdtype(self.item_ids.dtype, np.integer)
        ids = [_normalise_id(i, integer, what, "item") for i in ids]
        unknown = [i for i in ids if _key(i) not in self._item_index]
        if unknown:
            raise RecfunnelError(f"{what} reference unknown item id(s) {unknown[:5]}; items must be ids of the "
                                 f"catalogue ({len(self.item_ids)} items, e.g. {list(self.item_ids[:3])})")
        return np.array([self._item_index[_key(i)] for i in ids], dtype=np.int64)

    def recommend(self, user_id: Any, k: int = 10, recent_items: Sequence[Any] = (),
                  candidates: Sequence[Any] | None = None, at: int | None = None,
                  location: Sequence[float] | None = None, context: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
        """Top ``k`` items for one user: {"user_id", "items", "scores", "fallback", "note"} (see the class).

        Args:
            user_id: an external user id (as in the users table); an unknown one gets the fallback list.
            k: items wanted, an int ≥ 1; above the retrieval K it is clamped to K and ``note`` says so.
            recent_items: external item ids the user interacted with after the known data, oldest first.
            candidates: external item ids to rank instead of retrieving (all must be known). Repeats are
                dropped (first occurrence kept) before ranking; ``[]`` gives empty ``items`` / ``scores``.
                An unknown user gets them in fallback (popularity) order.
            at: request time (unix seconds); default just after the newest event in the data.
            location: (lat, lon) in degrees, where the user is now, for location-aware re-ranking; default
                the user's home (``home_lat`` / ``home_lon`` of the users table) where the data has one.
            context: the request's own context, {interactions column: value}, for the schemas'
                ``context.<column>`` features, e.g. ``{"query": "thai noodles"}`` (a text the data never
                had is encoded now by the schema's text encoder) or ``{"geohash5": "u09tq"}``; a column
                not given has no value (the features' "unknown" row), as in training data without it.
        """
        k = _positive_int("k", k, 10)
        user_id = _normalise_id(user_id, np.issubdtype(self.user_ids.dtype, np.integer), "user_id", "user")
        recent = self._items(recent_items, "recent_items")
        cands = None if candidates is None else _first_occurrences(self._items(candidates, "candidates"))
        where = None if location is None else _location(location)
        note = None
        if k > self.max_k:
            note = (f"k={k} clamped to {self.max_k} (the funnel retrieves K={self.funnel.candidates} candidates "
                    f"per request, pairs.candidates of the run)")
            k = self.max_k
        out = {"user_id": user_id, "items": [], "scores": [], "fallback": None, "note": note}
        u = self._user_index.get(_key(user_id))
        if u is None:
            pool = self.fallback if cands is None else cands[np.argsort(-self.popularity[cands], kind="stable")]
            top = pool[:k]
            out.update(items=self.item_ids[top].tolist(), scores=self.popularity[top].round(4).tolist(),
                       fallback=f"unknown user {user_id!r}: popular-and-fresh items (train interactions weighted "
                                "by recency), not personalised")
            return out
        if cands is not None and not len(cands):
            return out
        if at is not None and (isinstance(at, bool) or not isinstance(at, numbers.Integral)):
            raise RecfunnelError(f"at must be unix seconds as an int (or None for now), got {at!r} ({type(at).__name__})")
        now = self.now if at is None else int(at)
        when = np.full(len(recent), now, dtype=np.int64)
        f = self.funnel
        if context is not None and not isinstance(context, Mapping):
            raise RecfunnelError(f"context must be a mapping {{interactions column: value}}, got {context!r}")
        context = dict(context or {})
        pipes = (f.retriever.pipeline, self.ranker_pipeline)
        read = {c for p in pipes for c in p.context_columns}
        if set(context) - read:
            raise RecfunnelError(f"context has key(s) {sorted(set(context) - read)} that neither the retriever's nor the "
                                 f"ranker's features read; the context columns they read: {sorted(read) or 'none'}")
        ret_view, row = pipes[0].for_request(u, recent, when, now, _only(context, pipes[0].context_columns))
        rank_view, _ = pipes[1].for_request(u, recent, when, now, _only(context, pipes[1].context_columns))
        final = f(ret_view, rank_view, np.array([row]), candidates=None if cands is None else cands[None, :],
                  top_n=k, locations=where)["final"]
        keep = final.items[0] >= 0
        out.update(items=self.item_ids[final.items[0][keep]].tolist(),
                   scores=final.scores[0][keep].astype(float).round(4).tolist())
        return out


def _only(mapping: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    keys = set(keys)
    return {k: v for k, v in mapping.items() if k in keys}


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op and faiss's OpenMP thread counts to ``threads`` (process-wide); None: leave them."""
    if threads is not None:
        threads = _positive_int("threads", threads, 1)
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)


def _positive_int(name: str, value: Any, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise RecfunnelError(f"{name} must be an int ≥ 1, got {value!r} ({type(value).__name__}); "
                             f"pass e.g. {name}={example}")
    return int(value)


def _normalise_id(value: Any, integer_ids: bool, what: str, kind: str) -> int | str:
    """``value`` as a table id (see ``Recommender``): a stripped non-empty str or an int; else RecfunnelError."""
    given = value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and integer_ids and value.is_integer():
        return int(value)
    floats = ", or an integral float such as 196.0 for 196" if integer_ids else ""
    raise RecfunnelError(f"{what}: {given!r} ({type(given).__name__}) is not a valid {kind} id; pass the id as in the "
                         f"{kind}s table: an int or a non-empty str{floats}")


def _location(value: Any) -> np.ndarray:
    """(1, 2) float64 of a request's ``location`` (lat, lon) in degrees; anything else is an error."""
    pair = [] if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else list(value)
    ok = len(pair) == 2 and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair)
    lat, lon = (float(v) for v in pair) if ok else (float("nan"), float("nan"))
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise RecfunnelError(f"location must be (lat, lon) in degrees, lat in [-90, 90] and lon in [-180, 180], "
                             f"got {value!r}")
    return np.array([[lat, lon]])


def _first_occurrences(idx: np.ndarray) -> np.ndarray:
    """``idx`` without repeats, each item kept at its first position."""
    return idx[np.sort(np.unique(idx, return_index=True)[1])]


def _key(value: Any) -> str:
    """Ids compare as strings, so 196, "196" and np.int64(196) name the same user."""
    return str(value.item() if isinstance(value, np.generic) else value)


def recommend_file(run_dir: str, users: str, out: str, k: int = 10, threads: int | None = 1) -> int:
    """Write one JSON line per user id of ``users`` to ``out`` (atomically); returns the count.

    ``k`` and ``threads`` as in ``Recommender.recommend`` / ``Recommender.from_run``."""
    k = _positive_int("k", k, 10)
    path = Path(users)
    if not path.is_file():
        raise RecfunnelError(f"users={users}: no such file (one user id per line)")
    ids = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    ids = [i for i in ids if i]
    rec = Recommender.from_run(run_dir, threads=threads)
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        for user in progress_bar(ids, desc="recommending", disable=len(ids) < 100):
            fh.write(json.dumps(rec.recommend(user, k=k)) + "\n")
    return len(ids)
