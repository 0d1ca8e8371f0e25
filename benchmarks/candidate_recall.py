"""Recall@K of the funnel's candidate sources: the two-tower retriever, item-to-item co-occurrence, a
second retriever when given, and their unions, on the valid and test targets of a finished retriever
run's own data.

    .venv/bin/python benchmarks/candidate_recall.py RUN_DIR [RUN_DIR ...] [--k 100] [--json OUT] [--set key=value ...]
        [--second RUN2 [RUN2 ...]] [--fusion]

RUN_DIR is a finished ``recfunnel.train`` run of a retrieval model, e.g.
``python -m recfunnel.train experiment=ml100k_two_tower hydra.run.dir=RUN_DIR logger=csv``; several
runs (seeds 0-2 of one config) give each figure as mean ± std over them, and ``--fusion`` then chooses
the setting of the best mean valid NDCG@10. For each
split (one target per user, ``../shared/EVALUATION.md``), with the user's earlier items excluded from
every list (as the funnel's retriever excludes them):

- ``retriever``: the top K of the run's FAISS index (``Retriever.retrieve``, as the funnel's ranker gets them);
- ``co-occurrence``: the top K of ``recfunnel.models.cooccurrence.Cooccurrence`` fitted on the run's
  train split, with ``configs/model/cooccurrence.yaml``'s settings (``--set window=3`` etc. override them);
- ``union <=2K``: both lists, deduplicated (up to 2K candidates; the table gives the mean count);
- ``union of K``: exactly K candidates: the top K/2 of each source, and where the two halves
  overlap, the next items of the two lists taken in turn (retriever first) until K are distinct;
- with ``--second`` (one run per RUN_DIR, in the same order, over its data and features: the funnel's
  ``second_retriever``): ``second retriever``, its top K, and ``union of three``, the three lists
  deduplicated (up to 3K).

With ``--fusion``, the full-catalogue ranking of reciprocal-rank fusion of the two sources,
``w / (k0 + rank_two_tower) + (1 - w) / (k0 + rank_cooccurrence)``, is scored by the protocol for a
small (k0, w) grid; the setting best on valid NDCG@10 is marked (test is for reporting only). With
``--second`` too, three-way fusions ``(1 - s) [w / (k0 + rank_two_tower) + (1 - w) / (k0 +
rank_cooccurrence)] + s / (k0 + rank_second)`` for s in ``--second-weights`` join the grid (the
funnel's ``first_stage.second_weight``).

Recall@K here is the share of targets found in the list (a target missing from it counts 0). The
retriever's row can be compared with the run's own ``test/recall@100`` (scored over the full
catalogue, the same thing up to ties). ``--json OUT`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from recfunnel.eval.protocol import EvalSet  # noqa: E402
from recfunnel.eval.protocol import evaluate as protocol_evaluate  # noqa: E402
from recfunnel.serving.retriever import Retriever  # noqa: E402
from recfunnel.utils.cli import friendly_errors  # noqa: E402
from recfunnel.utils.errors import RecfunnelError  # noqa: E402

SOURCES = ("retriever", "co-occurrence", "union <=2K", "union of K")
SECOND_SOURCES = ("second retriever", "union of three")


def merge_lists(lists: np.ndarray, limit: int) -> np.ndarray:
    """(B, L) item lists in priority order (−1 = empty) → (B, limit): the first ``limit`` distinct
    items of each row in that order, −1 padded. Vectorised over rows."""
    B, L = lists.shape
    order = np.argsort(lists, axis=1, kind="stable")  # equal items adjacent, the earliest first
    in_order = np.take_along_axis(lists, order, 1)
    repeat_sorted = np.zeros((B, L), dtype=bool)
    repeat_sorted[:, 1:] = in_order[:, 1:] == in_order[:, :-1]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, 1)
    drop = repeat | (lists < 0)
    keep = np.argsort(drop, axis=1, kind="stable")[:, :limit]
    out = np.take_along_axis(lists, keep, 1)
    out[np.take_along_axis(drop, keep, 1)] = -1
    if out.shape[1] < limit:
        out = np.pad(out, ((0, 0), (0, limit - out.shape[1])), constant_values=-1)
    return out


def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(B, K) and (B, K) → (B, 2K): a0 b0 a1 b1 ..."""
    return np.stack([a, b], axis=2).reshape(len(a), -1)


def cooccurrence_top_k(model, evalset: EvalSet, k: int, chunk: int = 1024) -> np.ndarray:
    """(U, k) the model's top-``k`` items per target of ``evalset``, its excluded items removed."""
    out = []
    score = model.scorer(evalset)
    for lo in range(0, len(evalset), chunk):
        positions = np.arange(lo, min(lo + chunk, len(evalset)))
        s = score(positions).clone()
        rows, cols = evalset.exclusion_pairs(positions)
        s[rows, cols] = -torch.inf
        values, items = torch.topk(s, min(k, s.shape[1]), dim=1)
        items[torch.isinf(values)] = -1
        out.append(items.numpy())
    return np.concatenate(out)


def hit_rate(lists: np.ndarray, targets: np.ndarray) -> float:
    return float((lists == targets[:, None]).any(1).mean())


def split_recall(retriever: Retriever, model, split: str, k: int, second: Retriever | None = None) -> dict[str, float]:
    data = retriever.data
    evalset = EvalSet.build(data, split)
    _, ret, _ = retriever.retrieve(evalset.rows, k, f"{split} users")
    # the retriever drops the items each user had before the target: check they are the protocol's exclusions
    ptr, seen = retriever.seen_before(retriever.pipeline, evalset.rows)
    I = data.num_items
    theirs = np.unique(np.repeat(np.arange(len(evalset)), np.diff(ptr)) * I + seen)
    ours = np.unique(np.repeat(np.arange(len(evalset)), np.diff(evalset.exclude_ptr)) * I + evalset.exclude_items)
    if not np.array_equal(theirs, ours):
        raise RecfunnelError(f"{split}: the retriever's excluded items differ from the protocol's")
    co = cooccurrence_top_k(model, evalset, k)
    targets = evalset.targets
    union = merge_lists(interleave(ret, co), 2 * k)
    half = k // 2
    # the top halves first (a0 b0 a1 b1 ... up to K/2 each), then the rest of both lists in turn
    union_k = merge_lists(np.concatenate([interleave(ret[:, :half], co[:, :half]),
                                          interleave(ret[:, half:], co[:, half:])], axis=1), k)
    overlap = (ret[:, :, None] == co[:, None, :]) & (ret[:, :, None] >= 0)
    out = {}
    if second is not None:
        _, sec, _ = second.retrieve(evalset.rows, k, f"{split} users (second retriever)")
        three = merge_lists(np.concatenate([union, sec], axis=1), 3 * k)
        out = {"second retriever": hit_rate(sec, targets), "union of three": hit_rate(three, targets),
               "candidates/second retriever": float((sec >= 0).sum(1).mean()),
               "candidates/union of three": float((three >= 0).sum(1).mean())}
    return {**out,
        "users": len(evalset),
        "retriever": hit_rate(ret, targets),
        "co-occurrence": hit_rate(co, targets),
        "union <=2K": hit_rate(union, targets),
        "union of K": hit_rate(union_k, targets),
        "candidates/retriever": float((ret >= 0).sum(1).mean()),
        "candidates/co-occurrence": float((co >= 0).sum(1).mean()),
        "candidates/union <=2K": float((union >= 0).sum(1).mean()),
        "candidates/union of K": float((union_k >= 0).sum(1).mean()),
        "overlap": float(overlap.any(2).sum(1).mean()),
    }


FUSION_K0 = (10, 30, 60)  # the default grid (--k0, --weights)
FUSION_WEIGHTS = (0.3, 0.5, 0.7)
SECOND_WEIGHTS = (0.1, 0.2, 0.3)  # with --second (--second-weights)


def rank_of_each_item(scores: torch.Tensor) -> torch.Tensor:
    """(U, I) scores → (U, I) float ranks, 1 = best."""
    return scores.argsort(1, descending=True).argsort(1).float() + 1


def catalogue_scores(retriever: Retriever, rows: np.ndarray) -> torch.Tensor:
    """(U, I) the retriever's scores of every item for event ``rows`` (U,)."""
    queries = retriever.query_vectors(retriever.store, rows)
    return torch.from_numpy(np.asarray(queries, np.float32)) @ torch.from_numpy(
        np.asarray(retriever.item_vectors, np.float32)).T


def fused_metrics(retriever: Retriever, model, split: str, k0s=FUSION_K0, weights=FUSION_WEIGHTS,
                  second: Retriever | None = None, second_weights=SECOND_WEIGHTS) -> dict[str, dict[str, float]]:
    """Full-catalogue protocol metrics of reciprocal-rank fusion of the two sources,
    ``w / (k0 + rank_two_tower) + (1 - w) / (k0 + rank_cooccurrence)``, for each k0 of ``k0s`` and w
    of ``weights`` (with ``second``: and three-way, for each s of ``second_weights``, module
    docstring), and of each source alone; {name: {metric: value}}. Scores every user against every
    item at once: for catalogues of a few thousand items."""
    evalset = EvalSet.build(retriever.data, split)
    scores = {"two-tower": catalogue_scores(retriever, evalset.rows),
              "co-occurrence": torch.as_tensor(model.scorer(evalset)(np.arange(len(evalset))))}
    if second is not None:
        scores["second retriever"] = catalogue_scores(second, evalset.rows)
    num_items = retriever.data.num_items
    out = {name: protocol_evaluate(lambda idx, s=s: s[torch.as_tensor(idx)], evalset, num_items)
           for name, s in scores.items()}
    rank = {name: rank_of_each_item(s) for name, s in scores.items()}
    for k0, w in ((k0, w) for k0 in k0s for w in weights):
        fused = w / (k0 + rank["two-tower"]) + (1 - w) / (k0 + rank["co-occurrence"])
        out[f"fusion k0={k0} w={w}"] = protocol_evaluate(lambda idx, f=fused: f[torch.as_tensor(idx)], evalset, num_items)
        for s in (second_weights if second is not None else ()):
            three = (1 - s) * fused + s / (k0 + rank["second retriever"])
            out[f"fusion k0={k0} w={w} s={s}"] = protocol_evaluate(lambda idx, f=three: f[torch.as_tensor(idx)],
                                                                   evalset, num_items)
    return out


def parse_value(text: str):
    return OmegaConf.create({"v": text})["v"] if text not in ("None", "none") else None


def mean_std(values: list[float], digits: int = 4) -> str:
    """"m" for one value, "m ± s" (s: sample std) for several."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def one_run(retriever: Retriever, model, run_dir: Path, k: int, fusion: bool, k0s, weights,
            second: Retriever | None = None, second_weights=SECOND_WEIGHTS) -> dict:
    """Recall@k of each source on valid and test for the loaded retriever run ``run_dir`` (and its
    ``second`` retriever) and the co-occurrence ``model`` fitted on its data, its own metrics.json
    figures, and (``fusion``) the fused rankings' protocol metrics."""
    out = {"run_dir": str(run_dir.resolve()),
           **{split: split_recall(retriever, model, split, k, second) for split in ("valid", "test")}}
    out["run_metrics"] = {}
    if (run_dir / "metrics.json").exists():
        flat = json.loads((run_dir / "metrics.json").read_text())
        out["run_metrics"] = {key: flat[key] for key in (f"valid/recall@{k}", f"test/recall@{k}") if key in flat}
    if fusion:
        out["fusion"] = {split: fused_metrics(retriever, model, split, k0s, weights, second, second_weights)
                         for split in ("valid", "test")}
    return out


@friendly_errors
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="run_dir",
                   help="finished recfunnel.train runs of a retrieval model (several: mean ± std over them, e.g. seeds 0-2)")
    p.add_argument("--k", type=int, default=100, help="candidates per source (default 100)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override configs/model/cooccurrence.yaml, e.g. --set window=3 history=null")
    p.add_argument("--fusion", action="store_true",
                   help="also score reciprocal-rank fusions of the two sources over the full catalogue (small catalogues)")
    p.add_argument("--second", type=Path, nargs="+", default=None, metavar="RUN2",
                   help="a second retriever run per run_dir (same order, same data and features): a third source")
    p.add_argument("--second-weights", type=float, nargs="+", default=list(SECOND_WEIGHTS),
                   help="fusion grid with --second: the second retriever's weights s, in [0, 1)")
    p.add_argument("--k0", type=int, nargs="+", default=list(FUSION_K0), help="fusion grid: k0 values")
    p.add_argument("--weights", type=float, nargs="+", default=list(FUSION_WEIGHTS),
                   help="fusion grid: weights w on the two-tower, in [0, 1]")
    args = p.parse_args()
    if any(not 0 <= w <= 1 for w in args.weights) or any(k0 < 0 for k0 in args.k0):
        raise RecfunnelError("--weights must lie in [0, 1] and --k0 be >= 0")
    if args.k < 2:
        raise RecfunnelError("--k must be at least 2")
    if args.second is not None and len(args.second) != len(args.run_dirs):
        raise RecfunnelError(f"--second names {len(args.second)} run(s) for {len(args.run_dirs)} run_dir(s); "
                             "give one second retriever per run, in the same order")
    if any(not 0 <= s < 1 for s in args.second_weights):
        raise RecfunnelError("--second-weights must lie in [0, 1)")
    for run_dir in [*args.run_dirs, *(args.second or [])]:  # every run is checked before any is scored
        if not (run_dir / "config.yaml").is_file():
            raise RecfunnelError(f"{run_dir}: no config.yaml; give finished `recfunnel.train` runs of a retrieval model")
    start = time.perf_counter()
    cfg = OmegaConf.load(ROOT / "configs/model/cooccurrence.yaml")
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in cfg:
            raise RecfunnelError(f"--set {item}: {key!r} is not an option of configs/model/cooccurrence.yaml")
        cfg[key] = parse_value(value)
    retrievers = [Retriever.from_run(d) for d in args.run_dirs]
    if len({r.data_fingerprint for r in retrievers}) > 1:
        raise RecfunnelError("the runs were trained on different data ("
                             + ", ".join(f"{d}: {r.data_name} {r.data_fingerprint}" for d, r in zip(args.run_dirs, retrievers))
                             + "); give runs of one dataset")
    seconds = [Retriever.beside(d, r) for d, r in zip(args.second, retrievers)] if args.second else [None] * len(retrievers)
    model = hydra.utils.instantiate(cfg).fit(retrievers[0].data)  # one data: one co-occurrence model
    runs = [one_run(r, model, d, args.k, args.fusion, args.k0, args.weights, sec, args.second_weights)
            for r, d, sec in zip(retrievers, args.run_dirs, seconds)]

    def figures(split: str, key: str) -> list[float]:
        return [r[split][key] for r in runs]

    print(f"$ {' '.join(sys.argv)}")
    print(f"data {retrievers[0].data_name}; co-occurrence: {OmegaConf.to_container(cfg)}; "
          f"{len(runs)} run(s){': mean ± std' if len(runs) > 1 else ''}")
    print(f"| source | valid Recall@{args.k} | test Recall@{args.k} | mean candidates (valid / test) |")
    print("|---|---|---|---|")
    labels = {"retriever": f"retriever top {args.k}", "co-occurrence": f"co-occurrence top {args.k}",
              "union <=2K": f"union, deduplicated (<= {2 * args.k})",
              "union of K": f"union of {args.k} ({args.k // 2} + {args.k // 2}, filled)",
              "second retriever": f"second retriever top {args.k}",
              "union of three": f"union of all three, deduplicated (<= {3 * args.k})"}
    for name in SOURCES + (SECOND_SOURCES if args.second else ()):
        count = "candidates/" + name
        print(f"| {labels[name]} | {mean_std(figures('valid', name))} | {mean_std(figures('test', name))} | "
              f"{np.mean(figures('valid', count)):.1f} / {np.mean(figures('test', count)):.1f} |")
    print(f"retriever ∩ co-occurrence: {np.mean(figures('valid', 'overlap')):.1f} / "
          f"{np.mean(figures('test', 'overlap')):.1f} items per user (valid / test); "
          f"users {runs[0]['valid']['users']} / {runs[0]['test']['users']}")
    for r in runs:
        if r["run_metrics"]:
            print(f"{r['run_dir']}: its own metrics.json (full-catalogue scores): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in r["run_metrics"].items()))
    summary = {}
    if args.fusion:
        rankings = list(runs[0]["fusion"]["valid"])
        cell = {(split, n, m): [r["fusion"][split][n][m] for r in runs]
                for split in ("valid", "test") for n in rankings for m in ("ndcg@10", "recall@100")}
        chosen = max((n for n in rankings if n.startswith("fusion")), key=lambda n: np.mean(cell["valid", n, "ndcg@10"]))
        print(f"\n| ranking (full catalogue{'; mean ± std over the runs' if len(runs) > 1 else ''}) "
              "| valid NDCG@10 | valid Recall@100 | test NDCG@10 | test Recall@100 |")
        print("|---|---|---|---|---|")
        for name in rankings:
            mark = " (chosen on valid)" if name == chosen else ""
            print(f"| {name}{mark} | " + " | ".join(mean_std(cell[split, name, m]) for split in ("valid", "test")
                                                    for m in ("ndcg@10", "recall@100")) + " |")
        summary["fusion_chosen"] = chosen
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        summary.update({split: {key: {"mean": float(np.mean(figures(split, key))),
                                      "std": float(np.std(figures(split, key), ddof=1)) if len(runs) > 1 else 0.0}
                                for key in runs[0][split]} for split in ("valid", "test")})
        args.json.write_text(json.dumps({"command": " ".join(sys.argv), "k": args.k,
                                         "cooccurrence": OmegaConf.to_container(cfg), **summary, "runs": runs},
                                        indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
