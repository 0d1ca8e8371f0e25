"""Recommendations from a finished funnel run, in Python or in batch.

Real time::

    from recfunnel.recommend import Recommender
    rec = Recommender.from_run("logs/funnel/runs/<time>")
    rec.recommend(196, k=10, recent_items=[242, 302])
    # {"user_id": 196, "items": [...], "scores": [...], "fallback": None}

The request is served as of ``at`` (default: just after the newest event in the data): the user's
known events, then ``recent_items`` (newest last), are their history; features are computed by the
same pipelines as in training. An unknown user gets the popular-and-fresh list (train interactions
weighted by recency) with ``fallback`` saying so — not an exception. ``candidates=[...]`` ranks a
caller's list instead of retrieving one.

Batch (one user id per line in FILE; ``#`` comments and blank lines skipped)::

    python -m recfunnel.recommend run_dir=DIR users=FILE out=FILE.jsonl k=10
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from recfunnel.data.dataset import TRAIN
from recfunnel.data.ranking import PAIR_FEATURES, ranker_inputs
from recfunnel.eval.funnel import Funnel, item_catalogue
from recfunnel.eval.rerank import build_reranker
from recfunnel.retriever import Retriever
from recfunnel.tasks.retrieval import check_compatible
from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.io import atomic_path


class Recommender:
    """Serves one funnel run. Build with ``from_run``."""

    def __init__(self, funnel: Funnel, ranker_pipeline, fallback: np.ndarray, fallback_scores: np.ndarray, now: int):
        self.funnel, self.ranker_pipeline = funnel, ranker_pipeline
        data = funnel.retriever.dm.data
        self.user_ids = data.tables.users["user_id"].to_numpy()
        self.item_ids = data.tables.items["item_id"].to_numpy()
        self._user_index = {_key(u): i for i, u in enumerate(self.user_ids)}
        self._item_index = {_key(v): i for i, v in enumerate(self.item_ids)}
        self.fallback, self.fallback_scores, self.now = fallback, fallback_scores, now

    @classmethod
    def from_run(cls, run_dir: str | Path, data_dir: str | None = None) -> "Recommender":
        """Load a finished ``recfunnel.funnel`` run: its retriever, ranker and re-ranking stages."""
        run_dir = Path(run_dir)
        for name in ("config.yaml", "retriever_run.txt", "checkpoints/best.ckpt"):
            if not (run_dir / name).exists():
                raise RecfunnelError(f"{run_dir / name} is missing: run_dir must be a finished `recfunnel.funnel` run")
        cfg = OmegaConf.load(run_dir / "config.yaml")
        retriever = Retriever.from_run((run_dir / "retriever_run.txt").read_text().strip(),
                                       data_dir=data_dir or cfg.paths.data_dir)
        schema, pipeline, genres, pairs = ranker_inputs(retriever, cfg.features, cfg.pairs.profile_len)
        net = hydra.utils.instantiate(cfg.model.net)(schema=schema, num_embeddings=pipeline.num_embeddings,
                                                      num_pair_dense=len(PAIR_FEATURES))
        checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()}
        try:
            check_compatible(net, {"state_dict": state})
        except RecfunnelError as e:
            raise RecfunnelError(f"{run_dir}: the ranker checkpoint does not fit features '{schema.name}' / model "
                                 f"config of {run_dir / 'config.yaml'}: {e}") from None
        net.load_state_dict(state)
        catalogue = item_catalogue(retriever.dm.data.tables.items, genres, retriever.item_vectors)
        funnel = Funnel(retriever, net, pairs, build_reranker(cfg.rerank), catalogue, cfg.pairs.candidates,
                        cfg.funnel.top_n)
        data = retriever.dm.data
        now = int(data.ts.max()) + 1
        train = data.split == TRAIN
        tau = schema.popularity_half_life_days * 86400 / np.log(2)
        weight = np.exp(-(now - data.ts[train]) / tau)  # popular *and* fresh: recent interactions count more
        score = np.bincount(data.item_idx[train], weights=weight, minlength=data.num_items)
        order = np.argsort(-score, kind="stable")
        return cls(funnel, pipeline, order, score[order], now)

    def _items(self, ids: Sequence[Any], what: str) -> np.ndarray:
        unknown = [i for i in ids if _key(i) not in self._item_index]
        if unknown:
            raise RecfunnelError(f"{what} reference unknown item id(s) {unknown[:5]}; items must be ids of the "
                                 f"catalogue ({len(self.item_ids)} items, e.g. {list(self.item_ids[:3])})")
        return np.array([self._item_index[_key(i)] for i in ids], dtype=np.int64)

    def recommend(self, user_id: Any, k: int = 10, recent_items: Sequence[Any] = (),
                  candidates: Sequence[Any] | None = None, at: int | None = None) -> dict[str, Any]:
        """Top ``k`` items for one user: {"user_id", "items", "scores", "fallback"}.

        Args:
            user_id: an external user id (as in the users table).
            recent_items: external item ids the user interacted with after the known data, oldest first.
            candidates: external item ids to rank instead of retrieving (all must be known).
            at: request time (unix seconds); default just after the newest event in the data.
        """
        if k < 1:
            raise RecfunnelError(f"k must be ≥ 1, got {k}")
        recent = self._items(recent_items, "recent_items")
        cands = None if candidates is None else self._items(candidates, "candidates")[None, :]
        u = self._user_index.get(_key(user_id))
        if u is None:
            top = self.fallback[:k]
            return {"user_id": user_id, "items": self.item_ids[top].tolist(),
                    "scores": self.fallback_scores[:k].round(4).tolist(),
                    "fallback": f"unknown user {user_id!r}: popular-and-fresh items (train interactions weighted by "
                                "recency), not personalised"}
        now = self.now if at is None else int(at)
        when = np.full(len(recent), now, dtype=np.int64)
        f = self.funnel
        ret_view, row = f.retriever.pipeline.for_request(u, recent, when, now)
        rank_view, _ = self.ranker_pipeline.for_request(u, recent, when, now)
        final = f(ret_view, rank_view, np.array([row]), candidates=cands, top_n=k)["final"]
        keep = final.items[0] >= 0
        return {"user_id": user_id, "items": self.item_ids[final.items[0][keep]].tolist(),
                "scores": final.scores[0][keep].astype(float).round(4).tolist(), "fallback": None}


def _key(value: Any) -> str:
    """Ids compare as strings, so 196, "196" and np.int64(196) name the same user."""
    return str(value.item() if isinstance(value, np.generic) else value)


def recommend_file(run_dir: str, users: str, out: str, k: int = 10) -> int:
    """Write one JSON line per user id of ``users`` to ``out`` (atomically); returns the count."""
    path = Path(users)
    if not path.is_file():
        raise RecfunnelError(f"users={users}: no such file (one user id per line)")
    ids = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    ids = [i for i in ids if i]
    rec = Recommender.from_run(run_dir)
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        for user in tqdm(ids, desc="recommending", disable=len(ids) < 100):
            fh.write(json.dumps(rec.recommend(user, k=k)) + "\n")
    return len(ids)


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (argv if argv is not None else sys.argv[1:]) if "=" in a)
    missing = [key for key in ("run_dir", "users", "out") if key not in args]
    if missing:
        raise RecfunnelError(f"missing {', '.join(missing)}; usage: python -m recfunnel.recommend run_dir=DIR "
                             "users=FILE out=FILE.jsonl [k=10]")
    n = recommend_file(args["run_dir"], args["users"], args["out"], int(args.get("k", 10)))
    print(f"wrote {n} users' recommendations to {args['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
