"""Compare finished runs: the config keys that differ, their metrics, plots.

    python -m recfunnel.compare logs/train/multiruns/2026-11-29_10-00-00      # a sweep
    python -m recfunnel.compare RUN_A RUN_B --metric test/ndcg@10 --out cmp/  # run directories
    python -m recfunnel.compare --wandb-project recfunnel --wandb-group ml100k_two_tower

A PATH is a run directory (holding ``metrics.json``, written by ``python -m recfunnel.train``) or
a directory above run directories, such as a sweep directory. Prints one row per run (named by
its path relative to the directory all the runs share), with the config keys whose values differ
across runs (output paths and run names left out) and the main valid/test metrics, sorted by
``--metric``. Writes into ``--out`` (default ``<first PATH>/compare`` when that PATH is a sweep
directory, else ``compare/``): ``comparison.csv``, ``metric_vs_<key>.png`` per differing key and
``learning_curves.png`` (the validation metric per epoch and ``train/loss``, from each run's
``csv/metrics.csv``). With ``--wandb-project``/``--wandb-group`` the runs come from W&B instead
(summary and config; needs W&B online).

    python -m recfunnel.compare SWEEP_DIR --pareto test/objective/engagement/ndcg@10 test/objective/satisfaction/ndcg@10

``--pareto X Y`` shows the trade-off between two metrics (both higher-is-better) instead of the
table above: one point per setting (its differing config keys; when a seed key differs and some
setting has several seeds, the mean over seeds with std error bars), the Pareto-optimal points
highlighted and joined by a step line; printed, and written as ``pareto.csv`` (the keys, each
metric's mean, ``<metric> std`` and ``seeds`` when aggregated, and a boolean ``pareto`` column) and
``pareto.png``. Runs lacking either metric are left out with one WARNING line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from recfunnel.utils.cli import friendly_errors
from recfunnel.utils.errors import RecfunnelError
from recfunnel.utils.sweep_summary import natural_key
from recfunnel.utils.trees import flatten

METRICS = ("valid/ndcg@10", "valid/recall@10", "test/ndcg@10", "test/recall@10", "test/recall@100", "test/mrr")
SKIP_PREFIXES = ("paths.", "hydra.")
SKIP_KEYS = ("run_name",)
MAX_PARAM_PLOTS = 12
AGGREGATE_METRICS = ("test/recall@10", "test/recall@100", "test/ndcg@10", "test/ndcg@20", "valid/ndcg@10")
PATH_SUFFIXES = ("dir", "path", "file")  # last key component naming a file or directory


@dataclass
class Run:
    name: str
    config: dict[str, Any]  # flat, dotted keys
    metrics: dict[str, float]
    curves: Any = field(default=None, repr=False)  # pandas DataFrame of logged steps, or None


def find_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each PATH itself if it holds ``metrics.json``, else every run directory below it."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise RecfunnelError(f"{p} does not exist or is not a directory; pass a run directory "
                                 "(holding metrics.json) or a sweep directory")
        if (p / "metrics.json").is_file():
            runs.append(p)
            continue
        found = sorted((m.parent for m in p.rglob("metrics.json")), key=natural_key)
        if not found:
            raise RecfunnelError(f"{p} is neither a run directory nor a sweep directory (no metrics.json in "
                                 "it or below it); pass a directory written by `python -m recfunnel.train`")
        runs.extend(found)
    return list(dict.fromkeys(r.resolve() for r in runs))


def _read(path: Path, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise RecfunnelError(f"cannot read {path} ({e}); rerun that job or leave its directory out") from None


def load_curves(run_dir: Path) -> Any:
    """``csv/metrics.csv`` (Lightning's CSVLogger) as a DataFrame, or None when absent."""
    import pandas as pd

    path = run_dir / "csv" / "metrics.csv"
    return pd.read_csv(path) if path.is_file() else None


def load_local_runs(paths: Sequence[str | Path]) -> list[Run]:
    dirs = find_run_dirs(paths)
    base = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    runs = []
    for d in dirs:
        # the resolved config train.py writes, else Hydra's unresolved copy (entry points without one)
        cfg_path = next((c for c in (d / "config.yaml", d / ".hydra" / "config.yaml") if c.is_file()), None)
        config = flatten(_read(cfg_path, yaml.safe_load) or {}) if cfg_path else {}
        runs.append(Run(d.relative_to(base).as_posix(), config, _read(d / "metrics.json", json.loads), load_curves(d)))
    return runs


def load_wandb_runs(project: str, group: str | None) -> list[Run]:
    """Finished runs of a W&B project (and group): final metrics from the summary, config, history."""
    from recfunnel.utils.wandb_mode import decide_wandb_mode

    mode, reason = decide_wandb_mode("auto")
    if mode != "online":
        raise RecfunnelError(f"--wandb-project needs W&B online, but it is {mode} ({reason.split(';')[0]}); "
                             "compare run directories instead: python -m recfunnel.compare logs/train/multiruns/<time>")
    import wandb

    filters = {"group": group} if group else None
    runs = []
    for r in wandb.Api().runs(project, filters=filters):
        summary = {k: v for k, v in r.summary.items() if isinstance(v, (int, float))}
        # train.py logs the scores of the restored best checkpoint as final/<key>
        metrics = {k: v for k, v in summary.items() if k.startswith(("valid/", "test/", "train/"))}
        metrics.update({k.removeprefix("final/"): v for k, v in summary.items() if k.startswith("final/")})
        config = flatten({k: v for k, v in r.config.items() if not k.startswith("_")})
        runs.append(Run(r.name, config, metrics, r.history(pandas=True)))
    if not runs:
        raise RecfunnelError(f"no W&B runs in project {project!r}" + (f" group {group!r}" if group else "")
                             + "; check --wandb-project/--wandb-group (`wandb.Api().runs(project)` lists them)")
    return runs


def _is_path_like(key: str, values: Iterable[Any]) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return last.endswith(PATH_SUFFIXES) or any(isinstance(v, str) and v.startswith(("/", "./", "../"))
                                               for v in values)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose values differ across runs, leaving out paths and per-run names.

    Runs without a config are left out of the comparison (their values show as "-").
    """
    runs = [r for r in runs if r.config]
    keys = dict.fromkeys(k for r in runs for k in r.config)
    out = []
    for k in keys:
        if k.startswith(SKIP_PREFIXES) or k in SKIP_KEYS:
            continue
        values = [r.config.get(k) for r in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) < 2 or _is_path_like(k, values):
            continue
        if all(v is not None and v == r.config.get("run_name") for v, r in zip(values, runs)):
            continue  # e.g. logger.wandb.name: ${run_name}
        out.append(k)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _value(v: Any) -> float:
    return float(v) if _is_number(v) else math.nan


def sort_runs(runs: Sequence[Run], metric: str) -> list[Run]:
    known = sorted({k for r in runs for k in r.metrics})
    if metric not in known:
        raise RecfunnelError(f"--metric {metric!r} is in no run's metrics; use one of: {', '.join(known)}")

    def best_first(run: Run) -> tuple[bool, float]:  # runs without the metric (or NaN) last
        v = _value(run.metrics.get(metric))
        return (math.isnan(v), 0.0 if math.isnan(v) else -v)

    return sorted(runs, key=best_first)


def build_table(runs: Sequence[Run], params: Sequence[str], metrics: Sequence[str]) -> Any:
    """The comparison as a DataFrame: run, the differing params, the metrics."""
    import pandas as pd

    rows = [{"run": r.name, **{p: r.config.get(p) for p in params}, **{m: r.metrics.get(m) for m in metrics}}
            for r in runs]
    return pd.DataFrame(rows, columns=["run", *params, *metrics])


def _fmt(v: Any, metric: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if metric else f"{v:g}"
    return str(v)


def print_table(df: Any, metrics: Sequence[str], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cells = [[_fmt(v, c in metrics) for c, v in zip(df.columns, row)] for row in df.itertuples(index=False)]
    for col in df.columns:
        table.add_column(col, justify="right" if col in metrics else "left", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    width = sum(max([len(str(c)), *(len(r[i]) for r in cells)]) + 3 for i, c in enumerate(df.columns)) + 1
    Console(width=max(Console().width, width)).print(table)


def plot_metric_vs_params(runs: Sequence[Run], params: Sequence[str], metric: str, out: Path) -> None:
    """One scatter per param set in two runs or more: ``metric`` against the param (numeric axis,
    or one slot per category)."""
    import matplotlib.pyplot as plt

    for p in params:
        have = [r for r in runs if r.config.get(p) is not None]
        if len(have) < 2:
            continue
        xs = [r.config[p] for r in have]
        ys = [_value(r.metrics.get(metric)) for r in have]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if all(_is_number(x) for x in xs):
            ax.scatter(xs, ys)
            if min(xs) > 0 and max(xs) / min(xs) >= 100:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(str(x) for x in xs))
            ax.scatter([labels.index(str(x)) for x in xs], ys)
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"metric_vs_{p.replace('/', '_')}.png", dpi=100)
        plt.close(fig)


def plot_learning_curves(runs: Sequence[Run], metric: str, out: Path) -> None:
    """``metric`` per epoch (validation during fit only) and ``train/loss`` per step, one line per run."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    has_loss = any(r.curves is not None and "train/loss" in r.curves for r in runs)
    fig, axes = plt.subplots(1, 2 if has_loss else 1, figsize=(11 if has_loss else 6, 4), squeeze=False)
    ax_m = axes[0][0]
    for r in runs:
        df = r.curves
        if df is None:
            continue
        if metric in df and "epoch" in df:
            vals = df[["epoch", metric]].dropna()
            if "train/epochs" in r.metrics:  # drop the post-fit validate/test, logged one epoch later
                vals = vals[vals["epoch"] < r.metrics["train/epochs"]]
            vals = vals.groupby("epoch", as_index=False).first()
            ax_m.plot(vals["epoch"], vals[metric], marker="o", label=r.name)
        if has_loss and "train/loss" in df:
            step = "step" if "step" in df else "trainer/global_step"
            loss = df[[step, "train/loss"]].dropna()
            axes[0][1].plot(loss[step], loss["train/loss"], label=r.name)
    ax_m.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
    ax_m.xaxis.set_major_locator(MaxNLocator(integer=True))
    if has_loss:
        axes[0][1].set(xlabel="step", ylabel="train/loss", title="training loss")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)


def compare(runs: Sequence[Run], metric: str, out: Path, title: str) -> None:
    runs = sort_runs(runs, metric)
    params = differing_keys(runs)
    metrics = [m for m in dict.fromkeys([*METRICS, metric]) if any(m in r.metrics for r in runs)]
    df = build_table(runs, params, metrics)
    print_table(df, metrics, title)

    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "comparison.csv", index=False)
    curve_metric = metric if metric.startswith("valid/") else "valid/ndcg@10"
    plot_metric_vs_params(runs, params[:MAX_PARAM_PLOTS], metric, out)  # runs of unlike configs differ everywhere
    plot_learning_curves(runs, curve_metric, out)
    print(f"{len(runs)} runs; {len(params)} differing config keys; written to {out}/ "
          f"(comparison.csv, learning_curves.png{', metric_vs_<key>.png' if params else ''})")


def aggregate(runs: Sequence[Run], out: Path, metrics: Sequence[str] = AGGREGATE_METRICS) -> Any:
    """Mean ± std of each metric over runs that share a parent directory (e.g. ``row/seed0``,
    ``row/seed1``); printed, and written as ``aggregate.csv`` and a Markdown table ``aggregate.md``."""
    import pandas as pd

    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(str(Path(r.name).parent), []).append(r)
    rows, md = [], ["| row | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for name in sorted(groups):
        vals = {m: np.array([_value(r.metrics.get(m)) for r in groups[name]]) for m in metrics}
        std = {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in vals.items()}
        rows.append({"row": name, "seeds": len(groups[name]),
                     **{m: float(v.mean()) for m, v in vals.items()}, **{f"{m} std": std[m] for m in metrics}})
        md.append(f"| {name} | {len(groups[name])} | "
                  + " | ".join(f"{vals[m].mean():.4f} ± {std[m]:.4f}" for m in metrics) + " |")
    df = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "aggregate.csv", index=False)
    (out / "aggregate.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return df


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """(N, 2) → (N,) bool: True where no other point is >= in every column and > in one (all
    columns higher-is-better). Equal points do not dominate each other, so ties stay on the front
    together; rows with a NaN or infinite value are never on it (nor dominate others)."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"pareto_mask needs an (N, 2) array, got shape {pts.shape}")
    finite = np.isfinite(pts).all(axis=1)
    pts = np.where(finite[:, None], pts, -np.inf)  # a non-finite row dominates nothing
    ge = (pts[None, :, :] >= pts[:, None, :]).all(axis=2)  # ge[i, j]: point j >= point i everywhere
    gt = (pts[None, :, :] > pts[:, None, :]).any(axis=2)
    return finite & ~(ge & gt & finite[None, :]).any(axis=1)


def split_by_metrics(runs: Sequence[Run], metrics: Sequence[str]) -> tuple[list[Run], dict[str, list[Run]]]:
    """The runs holding a finite value of every metric, and per metric the runs lacking one."""
    missing = {m: [r for r in runs if not math.isfinite(_value(r.metrics.get(m)))] for m in metrics}
    dropped = {id(r) for rs in missing.values() for r in rs}
    return [r for r in runs if id(r) not in dropped], missing


def is_seed_key(key: str) -> bool:
    last = key.rsplit(".", 1)[-1].lower()
    return last == "seed" or last.endswith("_seed")


def pareto_table(runs: Sequence[Run], x: str, y: str) -> Any:
    """One row per point of the Pareto view, sorted by ``x`` descending (the front in order).

    The point's setting is the runs' differing config keys. When seed keys are among them and some
    setting holds more than one run, the seeds are averaged: one row per setting with ``x``, ``y``
    (means), ``<x> std``, ``<y> std`` (sample std; NaN for one seed) and ``seeds``; otherwise one
    row per run (``run``, its differing keys, ``x``, ``y``). Last column: ``pareto`` (on the front).
    The setting's keys are in ``df.attrs["params"]``. Every run must hold ``x`` and ``y``.
    """
    import pandas as pd

    params = differing_keys(runs)
    seeds = [k for k in params if is_seed_key(k)]
    setting = [k for k in params if k not in seeds]
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(json.dumps([r.config.get(k) for k in setting], sort_keys=True, default=str), []).append(r)
    if seeds and any(len(g) > 1 for g in groups.values()):
        rows = []
        for g in groups.values():
            vals = {m: np.array([_value(r.metrics[m]) for r in g]) for m in (x, y)}
            rows.append({**{k: g[0].config.get(k) for k in setting},
                         **{m: float(v.mean()) for m, v in vals.items()},
                         **{f"{m} std": float(v.std(ddof=1)) if len(v) > 1 else math.nan for m, v in vals.items()},
                         "seeds": len(g)})
        columns = [*setting, x, f"{x} std", y, f"{y} std", "seeds"]
    else:
        setting = params
        rows = [{"run": r.name, **{k: r.config.get(k) for k in params}, x: _value(r.metrics[x]),
                 y: _value(r.metrics[y])} for r in runs]
        columns = ["run", *params, x, y]
    df = pd.DataFrame(rows, columns=columns)
    df["pareto"] = pareto_mask(df[[x, y]].to_numpy()) if len(df) else pd.Series(dtype=bool)
    df = df.sort_values([x, y], ascending=False, kind="stable").reset_index(drop=True)
    df.attrs["params"] = setting
    return df


def _point_labels(df: Any) -> list[str]:
    """Each row's setting, ``key=value, ...`` (keys shortened to their last part where unambiguous)."""
    params = df.attrs.get("params", [])
    short = {k: k.rsplit(".", 1)[-1] for k in params}
    if len(set(short.values())) < len(short):
        short = {k: k for k in params}
    if not params:
        return list(df["run"]) if "run" in df else ["all runs"] * len(df)
    return [", ".join(f"{short[k]}={_fmt(row[k], False)}" for k in params) for _, row in df.iterrows()]


def plot_pareto(df: Any, x: str, y: str, out: Path) -> None:
    """``pareto.png``: the points of ``pareto_table`` in the (x, y) plane, each labelled with its
    setting; the front highlighted and joined by a step line (the edge of what it dominates)."""
    import matplotlib.pyplot as plt

    aggregated = "seeds" in df
    labels = _point_labels(df)
    fig, ax = plt.subplots(figsize=(7, 5))
    if aggregated:
        counts = sorted(set(df["seeds"]))
        n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        what = f"mean ± std over {n} seeds"
    else:
        what = "runs"
    for on, style in ((False, {"color": "tab:gray", "alpha": 0.7}), (True, {"color": "tab:red", "zorder": 3})):
        part = df[df["pareto"] == on]
        if part.empty:
            continue
        label = f"{'Pareto-optimal' if on else 'dominated'} ({what})"
        if aggregated:
            ax.errorbar(part[x], part[y], xerr=part[f"{x} std"].fillna(0), yerr=part[f"{y} std"].fillna(0),
                        fmt="o", capsize=3, markersize=7 if on else 5, label=label, **style)
        else:
            ax.scatter(part[x], part[y], s=45 if on else 25, label=label, **style)
    front = df[df["pareto"]].sort_values([x, y], ascending=[True, False])
    ax.step(front[x], front[y], where="pre", color="tab:red", alpha=0.6, label="Pareto front")
    for label, xv, yv in zip(labels, df[x], df[y]):
        ax.annotate(label, (xv, yv), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.set(xlabel=x, ylabel=y, title=f"Pareto front: {len(front)} of {len(df)} {'settings' if aggregated else 'runs'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=100)
    plt.close(fig)


def _names(runs: Sequence[Run], limit: int = 5) -> str:
    names = [r.name for r in runs]
    return ", ".join(names[:limit]) + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def pareto(runs: Sequence[Run], x: str, y: str, out: Path, title: str) -> Any:
    """The ``--pareto X Y`` view: runs lacking either metric left out (one WARNING line), the
    table of ``pareto_table`` printed and written as ``pareto.csv``, the plot as ``pareto.png``."""
    kept, missing = split_by_metrics(runs, (x, y))

    def lacking(names: bool) -> str:
        return "; ".join(f"{len(rs)} lack{'s' if len(rs) == 1 else ''} {m}" + (f" ({_names(rs)})" if names else "")
                         for m, rs in missing.items() if rs)

    if not kept:
        known = sorted({k for r in runs for k in r.metrics})
        raise RecfunnelError(f"--pareto: no run has both {x} and {y} (of {len(runs)} runs, {lacking(False)}); "
                             f"the runs' metrics are: {', '.join(known) or 'none'}")
    if len(kept) < len(runs):
        print(f"WARNING: --pareto leaves out {len(runs) - len(kept)} of {len(runs)} runs: {lacking(True)}",
              file=sys.stderr)
    df = pareto_table(kept, x, y)
    shown = df.copy()
    for m in (x, y):
        if f"{m} std" in df:  # one "mean ± std" column per metric keeps the table narrow
            shown[m] = [f"{v:.4f} ± {sd:.4f}" if math.isfinite(sd) else f"{v:.4f}" for v, sd in zip(df[m], df[f"{m} std"])]
            shown = shown.drop(columns=f"{m} std").rename(columns={m: f"{m} (mean ± std)"})
    numeric = [c for c in shown.columns if c in (x, y, f"{x} (mean ± std)", f"{y} (mean ± std)", "seeds")]
    print_table(shown, numeric, f"Pareto view: {title}")

    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "pareto.csv", index=False)
    plot_pareto(df, x, y, out)
    what = "settings (mean over seeds)" if "seeds" in df else "runs"
    print(f"{int(df['pareto'].sum())} of {len(df)} {what} on the Pareto front of {x} and {y}; "
          f"written to {out}/ (pareto.csv, pareto.png)")
    return df


def default_out(paths: Sequence[str]) -> Path:
    first = Path(paths[0]) if paths else None
    if first is not None and first.is_dir() and not (first / "metrics.json").is_file():
        return first / "compare"
    return Path("compare")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m recfunnel.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", metavar="PATH", help="run directories or sweep directories")
    parser.add_argument("--out", type=Path, help="where to write comparison.csv and the plots")
    parser.add_argument("--metric", default="valid/ndcg@10", help="sort by this metric, descending; plotted")
    parser.add_argument("--wandb-project", help="compare the runs of this W&B project (needs W&B online)")
    parser.add_argument("--wandb-group", help="only the runs of this W&B group")
    parser.add_argument("--aggregate", action="store_true",
                        help="also print mean ± std per parent directory (runs of one setting over seeds)")
    parser.add_argument("--pareto", nargs=2, metavar=("METRIC_X", "METRIC_Y"),
                        help="instead of the table: the Pareto front of two higher-is-better metrics, one point "
                             "per setting (mean ± std over seeds); writes pareto.csv and pareto.png")
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb_project:
        parser.error("give run/sweep directories (PATH ...) or --wandb-project")
    if args.paths and args.wandb_project:
        parser.error("give either PATHs or --wandb-project, not both")
    if args.wandb_group and not args.wandb_project:
        parser.error("--wandb-group needs --wandb-project")
    if args.pareto and args.pareto[0] == args.pareto[1]:
        parser.error("--pareto needs two different metrics")
    return args


@friendly_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wandb_project:
        runs = load_wandb_runs(args.wandb_project, args.wandb_group)
        title = f"W&B {args.wandb_project}" + (f" / {args.wandb_group}" if args.wandb_group else "")
    else:
        runs = load_local_runs(args.paths)
        title = ", ".join(args.paths)
    out = args.out or default_out(args.paths)
    if args.pareto:
        pareto(runs, *args.pareto, out, title)
    else:
        compare(runs, args.metric, out, title)
    if args.aggregate:
        aggregate(runs, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
