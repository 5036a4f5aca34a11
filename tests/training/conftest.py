"""A small model trained with both variants (shared by the fairness tests), and migrated
databases on each backend for the retraining-from-the-log tests."""

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from persistence.db import upgrade
from tests.conftest import PostgresDatabases, database_url
from training.data import load_reference
from training.fairness import PROTECTED
from training.train import TrainingResult, train

# The governed fixture's protocol: small, so the suite stays cheap on a shared 2-core machine.
SMALL: dict[str, Any] = {"seed": 7, "folds": 3, "repeats": 1, "families": ("logistic_regression",)}


@pytest.fixture(scope="package")
def small_frame() -> pd.DataFrame:
    """450 employees of the reference data, stratified by the label."""
    frame = load_reference()
    rest, _ = train_test_split(frame, train_size=450, stratify=frame["Attrition"], random_state=3)
    return rest.reset_index(drop=True)


@pytest.fixture(scope="package")
def governed(small_frame: pd.DataFrame) -> TrainingResult:
    """The fairness-aware variant chosen, the all-features one trained beside it."""
    # One BLAS thread: these matrices are small, and on a shared machine threads only contend.
    with threadpool_limits(1):
        return train(small_frame, exclude=PROTECTED, compare=True, **SMALL)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, postgres: PostgresDatabases, tmp_path: Path) -> str:
    url = database_url(request.param, postgres, tmp_path)
    upgrade(url)
    return url
