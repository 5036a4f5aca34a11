"""Training data with a model's probabilities: the reference and the logs the tests build."""

import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from training.data import load_reference, split_xy
from training.pipeline import build_pipeline


@pytest.fixture(scope="package")
def scored() -> pd.DataFrame:
    """Every employee of the data with a probability from a model fitted on all of them."""
    x, y = split_xy(load_reference())
    frame = x.copy()
    frame["probability"] = build_pipeline("logistic_regression", 0).fit(x, y).predict_proba(x)[:, 1]
    frame["_y"] = y
    return frame


def split(scored: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, held-out rows) as training splits them: 80/20 stratified."""
    ref, held = train_test_split(scored, test_size=0.2, stratify=scored["_y"], random_state=seed)
    return ref.drop(columns="_y"), held.drop(columns="_y")
