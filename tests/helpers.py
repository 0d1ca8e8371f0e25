"""What several test files share: paths and running the real entry points as users run them.

Import from here (``from helpers import ...``), never from another test file or from conftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from recfunnel.features.batch import TowerInput, make_kjt
from recfunnel.features.schema import FeatureSchema
from recfunnel.models.dlrm import DLRM

ROOT = Path(__file__).resolve().parents[1]
# ML-100K is fetched once into the repo's data/ cache (as `make train` does)
DATA_DIR = Path(os.environ.get("RECFUNNEL_DATA_DIR", ROOT / "data"))
# a funnel that trains in seconds: one epoch of a few batches per stage, 2 train events per user; its first
# stage fuses the retriever with co-occurrence and its ranker predicts engagement and reports satisfaction, as
# experiment=ml100k_funnel's does
TINY_FUNNEL = ["debug=fast", "logger=wandb", f"paths.data_dir={DATA_DIR}", "pairs.max_events_per_user=2", "objectives=ml100k",
               "funnel.timing_users=5", "+model@first_stage.cooccurrence=cooccurrence", "first_stage.folds=2",
               "retriever.overrides=['features=ml100k_seq','model.net.user_hidden=[]','data.batch_size=256']"]


def run(*args: str, cwd: Path = ROOT, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m <args>`` in ``cwd``; returns the finished process (stdout/stderr as text)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kw)


def read_wandb_records(path: Path) -> list:
    """The wandb protobuf ``Record``s of an offline run's ``run-<id>.wandb`` file.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then blocks of
    32 KiB holding records, each a 7-byte header (crc32 uint32, length uint16, type uint8: 1 full,
    2 first, 3 middle, 4 last) and its data; fewer than 7 bytes left in a block are padding.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    block, pos, records, parts = 32768, 7, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the block's trailer: skip to the next block
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # full, or the last part of a record split across blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def wandb_runs(folder: Path) -> list[dict]:
    """Every offline W&B run under ``folder`` (recursively), as {"id", "name", "group", "job_type",
    "config" (dict), "history_keys" (set), "summary" (dict), "artifacts" (list of names)}."""
    import json

    runs = []
    for path in sorted(Path(folder).rglob("offline-run-*/run-*.wandb")):
        run = {"id": None, "name": None, "group": None, "job_type": None, "config": {}, "history_keys": set(),
               "summary": {}, "artifacts": []}
        for record in read_wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.update(id=r.run_id, name=r.display_name, group=r.run_group, job_type=r.job_type)
                run["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                run["history_keys"].update(k for k in (i.key or "/".join(i.nested_key) for i in record.history.item)
                                          if not k.startswith("_"))
            elif kind == "summary":
                run["summary"].update({i.key: json.loads(i.value_json) for i in record.summary.update if i.key})
            elif kind == "artifact":
                run["artifacts"].append(record.artifact.name)
        runs.append(run)
    return runs


# -- a tiny DLRM ranker and its batches (tests/test_dlrm.py, tests/test_multitask.py) --------------------
# query side (user, context) and item side; the history shares the item-id table; dims differ on purpose
SCHEMA = FeatureSchema.from_config({
    "name": "tiny_rank",
    "features": {
        "user_id": {"tower": "user", "kind": "categorical", "source": "user_id", "dim": 8},
        "gender": {"tower": "user", "kind": "categorical", "source": "user.gender", "dim": 4},
        "hist": {"tower": "user", "kind": "multi_hot", "source": "history.item_id", "table": "item_id", "max_len": 5},
        "hour": {"tower": "context", "kind": "categorical", "source": "context.hour", "dim": 2},
        "item_id": {"tower": "item", "kind": "categorical", "source": "item_id", "dim": 16},
        "genres": {"tower": "item", "kind": "multi_hot", "source": "item.genres", "dim": 3},
        "pop": {"tower": "item", "kind": "dense", "source": "item.pop_count"},
    },
})
NUM_EMB = {"user_id": 10, "gender": 3, "hour": 24, "item_id": 20, "genres": 5}
P = 3  # pair dense features
D = 8  # embedding_dim



def random_raw(B: int, C: int, seed: int) -> dict:
    """Plain python inputs: per query (user, gender, history of item ids 10..19, hour) and per
    (query, candidate) (item id 0..9, genres, popularity, pair features). One history is empty."""
    rng = np.random.default_rng(seed)
    queries = [{"user_id": int(rng.integers(10)), "gender": int(rng.integers(3)),
                "hist": [int(x) for x in rng.integers(10, 20, rng.integers(0, 5) if b else 0)],
                "hour": int(rng.integers(24))} for b in range(B)]
    cands = [[{"item_id": int(rng.integers(10)), "genres": [int(x) for x in rng.choice(5, rng.integers(1, 4), replace=False)],
               "pop": float(rng.random() * 5)} for _ in range(C)] for _ in range(B)]
    pair = rng.normal(size=(B, C, P)).astype(np.float32)
    return {"queries": queries, "cands": cands, "pair": pair}


def tower(rows: list[dict], sparse: list[str], dense: list[str]) -> TowerInput:
    def bag(v):
        return v if isinstance(v, list) else [v]
    values = [np.array([x for r in rows for x in bag(r[k])], np.int64) for k in sparse]
    lengths = [np.array([len(bag(r[k])) for r in rows], np.int64) for k in sparse]
    dense_arr = np.array([[r[k] for k in dense] for r in rows], np.float32).reshape(len(rows), len(dense))
    return TowerInput(make_kjt(sparse, values, lengths), torch.from_numpy(dense_arr))


def to_batch(raw: dict) -> dict:
    q = raw["queries"]
    flat = [c for row in raw["cands"] for c in row]  # query-major
    return {"user": tower(q, ["user_id", "gender", "hist"], []),
            "context": tower(q, ["hour"], []),
            "cand": tower(flat, ["item_id", "genres"], ["pop"]),
            "pair_dense": torch.from_numpy(raw["pair"].copy())}


def make_model(interaction="dot", dcn=None, backend="torch", seed=0, **kw) -> DLRM:
    torch.manual_seed(seed)
    return DLRM(SCHEMA, NUM_EMB, P, embedding_dim=D, dense_hidden=(16,), interaction=interaction, dcn=dcn,
                top_width=16, top_depth=2, dropout=0.1, backend=backend, **kw)
