"""Shared fixtures. ML-100K is fetched once into the repo's data/ cache (as `make train` does)."""

from __future__ import annotations

import os

import pytest

from helpers import DATA_DIR, ROOT, TINY_FUNNEL, run


@pytest.fixture(scope="session")
def ml100k_data():
    """The real ML-100K as SplitData (fetched from the recbole wheel on first use)."""
    from recfunnel.data.dataset import SplitData
    from recfunnel.data.movielens import load_movielens

    return SplitData.from_tables(load_movielens(DATA_DIR))


@pytest.fixture(scope="session")
def ml100k_schema():
    from recfunnel.features.schema import FeatureSchema

    return FeatureSchema.from_yaml(ROOT / "configs/features/ml100k.yaml")


@pytest.fixture(scope="session")
def funnel_run(tmp_path_factory, ml100k_data):
    """A finished tiny funnel run (retriever trained inside, ranker, re-ranking) on ML-100K, logged to
    offline W&B; its stdout is kept beside it in ``stdout.txt``, W&B's data and cache folders in
    ``wandb-data/`` and ``wandb-cache/``."""
    out = tmp_path_factory.mktemp("funnel") / "run"
    # W&B's own folders beside the run, to see what it writes outside the run directory
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DATA_DIR": str(out.parent / "wandb-data"),
           "WANDB_CACHE_DIR": str(out.parent / "wandb-cache")}
    proc = run("recfunnel.funnel", *TINY_FUNNEL, f"hydra.run.dir={out}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out.parent / "stdout.txt").write_text(proc.stdout)
    return out
