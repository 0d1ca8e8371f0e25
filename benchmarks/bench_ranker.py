"""Ranker training-speed benchmark (not a test): our DLRM step (``RankingTask`` under a Lightning
Trainer) vs a plain PyTorch loop over the same DLRM and the same batches, in the same process, on a
Criteo-like synthetic set.

    .venv/bin/python benchmarks/bench_ranker.py [--interaction dot dcn] [--backend auto] [--batch-size 2048]
                                                [--batches 30] [--rounds 5] [--rows-cap 100000]
    .venv/bin/python benchmarks/bench_ranker.py --quick        # smoke run, well under a minute

Data (built once, in memory, before anything is timed; both loops replay the same batches):

* 26 categorical features ``c0..c25``, one id each, with the Criteo Kaggle (DAC) cardinalities of
  DLRM's ``dlrm_s_criteo_kaggle.sh`` capped at ``--rows-cap`` rows per table (100k by default:
  ~0.84M rows, 27M parameters at D=32, which fits this machine; uncapped it is 33.8M rows). Ids are
  power-law (bounded Zipf, exponent ``--zipf``) over the table, hot ids scattered by a permutation.
* 13 dense features: zero-inflated log-normal counts, fed as log(1 + x) like DLRM's Criteo
  preprocessing, normalised by the model with their mean / std over the batches (``dense_stats``).
* Labels: Bernoulli of a logistic function of two dense features and per-id effects of three
  categoricals (base rate ~25%), so the loss falls; the table shows each loop's first and last loss.

Each Criteo row is one query with C = 1 candidate: the query towers (user, context) are empty, the 26
categoricals are the candidate's item-tower features (``batch["cand"]``, B rows) and the 13 dense
features are the pair features (``batch["pair_dense"]``, (B, 1, 13)). The model is
``configs/model/dlrm.yaml`` (``dot``) or ``configs/model/dcnv2.yaml`` (``dcn``), with ``--backend``.

Rounds alternate which loop goes first; each round builds both models afresh from the same seed.
A warm-up run of each loop on a few batches comes first, untimed. The ratio is the median over
rounds of (our time / plain time) for the same round, as in ``bench_train.py``. Goal: ratio <= 1.10.
The Lightning time includes building the Trainer and ``fit``'s setup, as in ``bench_train.py``.
Two checks that are less sensitive to other jobs on the machine come with it: the per-step ratio
(median time between consecutive step ends of all timed runs, ours / plain; it leaves out the fixed
cost of a ``fit``) in the table, and each round's process CPU-time ratio in the progress lines.

Torch runs 1 intra-op thread by default (``--threads``): on a machine shared with other jobs, a
parallel op waits for its slowest, descheduled thread, and with 2 threads on 2 busy cores a step
took ~17x longer than with 1 and the timings were noise. ``--threads 0`` keeps torch's default.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, lightning_loop, show  # noqa: E402  (also puts src/ on sys.path)

from recfunnel.features.batch import TowerInput, make_kjt  # noqa: E402
from recfunnel.features.schema import FeatureSchema  # noqa: E402
from recfunnel.tasks.ranking import RankingTask  # noqa: E402

# Criteo Kaggle (Display Advertising Challenge) cardinalities of C1..C26, as in DLRM's
# bench/dlrm_s_criteo_kaggle.sh and TorchRec's Criteo examples.
CRITEO_KAGGLE_ROWS = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                      14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
NUM_DENSE = 13
MODEL_CONFIGS = {"dot": "dlrm", "cat": "dlrm", "dcn": "dcnv2"}  # configs/model/<name>.yaml


# -- data ------------------------------------------------------------------------------------------
def criteo_like(batch_size: int, batches: int, rows_cap: int, zipf: float, seed: int = 0):
    """(schema, num_embeddings, dense_stats, batches): the prebuilt Criteo-like training batches."""
    rng = np.random.default_rng(seed)
    keys = [f"c{i}" for i in range(len(CRITEO_KAGGLE_ROWS))]
    rows = {k: min(n, rows_cap) for k, n in zip(keys, CRITEO_KAGGLE_ROWS)}
    schema = FeatureSchema.from_config({"name": "criteo_like", "features": {
        k: {"tower": "item", "kind": "categorical", "source": "item_id"} for k in keys}})
    n = batch_size * batches
    ids = {}
    for k in keys:  # bounded Zipf by inverse CDF, then a permutation so the hot ids are not 0, 1, 2, ...
        cdf = np.cumsum(np.arange(1, rows[k] + 1, dtype=np.float64) ** -zipf)
        rank = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n)), rows[k] - 1)
        ids[k] = rng.permutation(rows[k])[rank]
    mu, sigma = rng.uniform(0.0, 4.0, NUM_DENSE), rng.uniform(0.5, 2.0, NUM_DENSE)
    counts = np.floor(rng.lognormal(mu, sigma, (n, NUM_DENSE))) * (rng.random((n, NUM_DENSE)) > 0.3)
    dense = np.log1p(counts).astype(np.float32)
    mean, std = dense.mean(0), dense.std(0)
    z = (dense - mean) / std
    logit = -1.3 + 0.8 * z[:, 0] - 0.6 * z[:, 3]
    for k in ("c0", "c5", "c13"):
        logit += rng.normal(0.0, 0.8, rows[k])[ids[k]]
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    empty = TowerInput(make_kjt([], [], []), torch.zeros(batch_size, 0))
    out = []
    for lo in range(0, n, batch_size):
        sl = slice(lo, lo + batch_size)
        ones = np.ones(batch_size, dtype=np.int32)
        cand = TowerInput(make_kjt(keys, [ids[k][sl] for k in keys], [ones] * len(keys)), torch.zeros(batch_size, 0))
        out.append({"user": empty, "context": empty, "cand": cand,
                    "pair_dense": torch.from_numpy(dense[sl]).view(batch_size, 1, NUM_DENSE),
                    "label": torch.from_numpy(label[sl]).view(batch_size, 1, 1),  # (B, C, T): one objective
                    "mask": torch.ones(batch_size, 1, dtype=torch.bool)})
    return schema, rows, {"pair": (mean, std)}, out, float(label.mean())


# -- the two loops ---------------------------------------------------------------------------------
def plain_loop(net, batches, lr: float, weight_decay: float, steps: list) -> float:
    """The same forward and loss as RankingTask.training_step, backward and AdamW step, no framework.
    Appends (time, detached loss) at each step's end to ``steps``."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    start = time.perf_counter()
    for b in batches:
        mask = b["mask"]
        loss = F.binary_cross_entropy_with_logits(net(b)[mask], b["label"][..., 0][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps.append((time.perf_counter(), loss.detach()))
    return time.perf_counter() - start


def ours_loop(task, batches, steps: list) -> float:
    """``bench_train.lightning_loop`` (a real Trainer.fit over the replayed batches); the module's
    (otherwise empty) ``on_train_batch_end`` hook appends what the plain loop appends."""
    task.on_train_batch_end = lambda outputs, batch, batch_idx: steps.append((time.perf_counter(), outputs["loss"]))
    return lightning_loop(task, batches)


def bench_interaction(interaction: str, args, data) -> list[dict]:
    schema, num_embeddings, dense_stats, batches, _ = data
    with initialize_config_dir(config_dir=str(ROOT / "configs" / "model"), version_base="1.3"):
        cfg = compose(MODEL_CONFIGS[interaction], overrides=[f"net.interaction={interaction}",
                                                            f"net.backend={args.backend}"])
    factory, lr, wd = instantiate(cfg.net), float(cfg.lr), float(cfg.weight_decay)

    def run(which, use):
        steps: list = []
        torch.manual_seed(0)
        if which == "plain":
            net = factory(schema=schema, num_embeddings=num_embeddings, num_pair_dense=NUM_DENSE,
                          dense_stats=dense_stats)
            cpu = time.process_time()
            seconds = plain_loop(net, use, lr, wd, steps)
        else:
            task = RankingTask(net=factory, schema=schema, num_embeddings=num_embeddings, num_pair_dense=NUM_DENSE,
                               dense_stats=dense_stats, lr=lr, weight_decay=wd)
            cpu = time.process_time()
            seconds = ours_loop(task, use, steps)
        cpu = time.process_time() - cpu
        gc.collect()
        stamps = np.array([t for t, _ in steps])
        return seconds, cpu, list(np.diff(stamps)), [float(x) for _, x in steps]

    for which in ("plain", "lightning"):  # warm-up: first Trainer, allocator, kernels; untimed
        run(which, batches[:args.warmup])
    pairs, cpu_ratios, first_last, step_s = [], [], {}, {"plain": [], "lightning": []}
    for rnd in range(args.rounds):  # alternate which loop goes first, so machine noise hits both alike
        times, cpus = {}, {}
        for which in (("plain", "lightning") if rnd % 2 == 0 else ("lightning", "plain")):
            times[which], cpus[which], intervals, losses = run(which, batches)
            step_s[which] += intervals
            assert len(losses) == len(batches), (which, len(losses))
            first_last[which] = (losses[0], losses[-1])
        pairs.append((times["plain"], times["lightning"]))
        cpu_ratios.append(cpus["lightning"] / cpus["plain"])
        print(f"  {interaction} round {rnd + 1}/{args.rounds}: plain {times['plain']:.2f}s, "
              f"ours {times['lightning']:.2f}s, ratio {times['lightning'] / times['plain']:.3f} "
              f"(CPU time {cpu_ratios[-1]:.3f})", flush=True)
    n = sum(len(b["label"]) for b in batches)
    plain = float(np.median([p for p, _ in pairs]))
    ratios = [light / p for p, light in pairs]
    ratio = float(np.median(ratios))
    loss = {k: f"{a:.3f}→{b:.3f}" for k, (a, b) in first_last.items()}
    per_step = float(np.median(step_s["lightning"]) / np.median(step_s["plain"]))
    return [{"interaction": interaction, "loop": "plain PyTorch", "samples/s": n / plain,
             "ratio (time vs plain)": 1.0, "range": "", "per step": "", "loss first→last": loss["plain"]},
            {"interaction": interaction, "loop": "Lightning RankingTask", "samples/s": n / (plain * ratio),
             "ratio (time vs plain)": ratio, "range": f"{min(ratios):.3f}–{max(ratios):.3f}",
             "per step": f"{per_step:.3f}", "loss first→last": loss["lightning"]}]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interaction", nargs="+", default=["dot", "dcn"], choices=sorted(MODEL_CONFIGS))
    ap.add_argument("--backend", default="auto", choices=["auto", "torchrec", "torch"])
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=30, help="prebuilt batches, replayed by every timed run")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds of each loop, alternating")
    ap.add_argument("--warmup", type=int, default=5, help="batches of the untimed warm-up run of each loop")
    ap.add_argument("--rows-cap", type=int, default=100_000, help="rows per embedding table at most")
    ap.add_argument("--zipf", type=float, default=1.1, help="power-law exponent of the categorical ids")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 0 = torch's default")
    ap.add_argument("--quick", action="store_true", help="smoke run: 512 x 10 batches, 2 rounds, 20k rows")
    if "--quick" in sys.argv[1:]:  # new defaults; flags given explicitly still win
        ap.set_defaults(batch_size=512, batches=10, rounds=2, warmup=2, rows_cap=20_000)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*You defined a `validation_step` but have no `val_dataloader`.*")

    t0 = time.perf_counter()
    data = criteo_like(args.batch_size, args.batches, args.rows_cap, args.zipf)
    rows = sum(data[1].values())
    print(f"data: {args.batches} batches x {args.batch_size} rows, 26 tables ({rows:,} rows in all, cap "
          f"{args.rows_cap:,}), 13 dense, positive rate {data[4]:.3f}; built in {time.perf_counter() - t0:.1f}s",
          flush=True)
    results = [r for interaction in args.interaction for r in bench_interaction(interaction, args, data)]
    show(f"DLRM training step, {args.batches} Criteo-like batches of {args.batch_size}, backend {args.backend}, "
         f"median over {args.rounds} alternating rounds", results)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
