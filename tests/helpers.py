"""What several test files share: paths and running the real entry points as users run them.

Import from here (``from helpers import ...``), never from another test file or from conftest.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ML-100K is fetched once into the repo's data/ cache (as `make train` does)
DATA_DIR = Path(os.environ.get("RECFUNNEL_DATA_DIR", ROOT / "data"))
# a funnel that trains in seconds: one epoch of a few batches per stage, 2 train events per user; its first
# stage fuses the retriever with co-occurrence, as experiment=ml100k_funnel's does
TINY_FUNNEL = ["debug=fast", "logger=wandb", f"paths.data_dir={DATA_DIR}", "pairs.max_events_per_user=2",
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
