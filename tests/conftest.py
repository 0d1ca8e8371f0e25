"""Shared fixtures. ML-100K is fetched once into the repo's data/ cache (as `make train` does)."""

from __future__ import annotations

import pytest

from helpers import DATA_DIR, ROOT


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
