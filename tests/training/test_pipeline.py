"""The pipelines, threshold rule and training report, on a tiny pipeline built here."""

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from training.data import load_reference, split_xy
from training.pipeline import FAMILIES, build_pipeline
from training.schema import FEATURES, categories
from training.train import choose_threshold, fingerprint, summary, train


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return load_reference().sample(300, random_state=1)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, small: pd.DataFrame) -> Pipeline:
    x, y = split_xy(small)
    return build_pipeline(request.param, seed=0).fit(x, y)


def test_probabilities_are_valid_and_deterministic(tiny: Pipeline, small: pd.DataFrame) -> None:
    x, _ = split_xy(small)
    p = tiny.predict_proba(x)[:, 1]
    assert p.shape == (300,) and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_array_equal(p, tiny.predict_proba(x)[:, 1])


def test_schema_categories_unseen_in_training_are_scored(
    tiny: Pipeline, small: pd.DataFrame
) -> None:
    x, _ = split_xy(small)
    row = x.iloc[[0]].copy()
    row["PerformanceRating"] = "Low"  # valid by the schema, absent from the data
    assert 0 <= tiny.predict_proba(row)[0, 1] <= 1


def test_preprocessing_covers_every_feature(tiny: Pipeline) -> None:
    used = [c for _, _, cols in tiny.named_steps["preprocess"].transformers_ for c in cols]
    assert sorted(used) == sorted(FEATURES)
    assert categories("Education")[0] == "Below_College"  # ordinal order low -> high


def test_threshold_maximises_f1_on_given_probabilities() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.62, 0.7, 0.55, 0.9])
    assert choose_threshold(y, p) == 0.56


def test_fingerprint_changes_with_the_data(small: pd.DataFrame) -> None:
    changed = small.copy()
    changed.iloc[0, 0] += 1
    assert fingerprint(small) != fingerprint(changed)
    assert fingerprint(small) == fingerprint(small.copy())


def test_training_reports_and_records_metadata(small: pd.DataFrame) -> None:
    result = train(small, folds=3, repeats=1, seed=3)
    meta = result.metadata
    assert set(meta["cv"]) == set(FAMILIES)
    assert meta["model_family"] == max(meta["cv"], key=lambda f: meta["cv"][f]["roc_auc"]["mean"])
    assert 0.05 <= meta["threshold"] <= 0.95
    assert meta["features"] == list(FEATURES)
    assert len(meta["data_sha256"]) == 64 and meta["n_rows"] == 300
    assert {"scikit-learn", "pandas", "numpy", "python"} <= set(meta["versions"])
    assert result.family in summary(result)


def test_reference_model_meets_the_cv_auc_floor() -> None:
    result = train(load_reference())
    cv_auc = result.metadata["cv"][result.family]["roc_auc"]["mean"]
    assert cv_auc >= 0.82, summary(result)
