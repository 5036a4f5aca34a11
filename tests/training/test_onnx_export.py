"""The ONNX export is kept only when it scores like sklearn on every row."""

import numpy as np
import pandas as pd
import pytest

from training import onnx_export
from training.data import load_reference, split_xy
from training.pipeline import build_pipeline
from training.schema import FEATURES, Employee, feature_matrix


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    return split_xy(load_reference())


@pytest.mark.parametrize("family", ["logistic_regression", "gradient_boosting"])
def test_kept_exports_match_sklearn_on_the_whole_dataset(
    data: tuple[pd.DataFrame, pd.Series], family: str
) -> None:
    x, y = data
    pipeline = build_pipeline(family, seed=0).fit(x, y)
    result = onnx_export.export(pipeline, x)
    if result.model is None:  # dropped: then it must say why
        assert "dropped" in result.note or "failed" in result.note
        return
    got = onnx_export.probabilities(onnx_export.session(result.model), x)
    want = pipeline.predict_proba(x)[:, 1]
    assert np.max(np.abs(got - want)) <= onnx_export.TOLERANCE
    assert result.max_abs_diff is not None and result.max_abs_diff <= onnx_export.TOLERANCE


def test_the_served_model_family_exports_to_float64_precision(
    data: tuple[pd.DataFrame, pd.Series],
) -> None:
    x, y = data
    result = onnx_export.export(build_pipeline("logistic_regression", seed=0).fit(x, y), x)
    assert result.model is not None and result.max_abs_diff is not None
    assert result.max_abs_diff < 1e-12  # no float32 step left in the graph


def test_an_export_off_by_more_than_the_tolerance_is_dropped(
    data: tuple[pd.DataFrame, pd.Series], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = data
    monkeypatch.setattr(onnx_export, "TOLERANCE", 0.0)
    pipeline = build_pipeline("gradient_boosting", seed=0).fit(x, y)
    result = onnx_export.export(pipeline, x)
    assert result.model is None and ("dropped" in result.note or "failed" in result.note)


def test_the_runner_feeds_equal_feeds_from_a_frame(data: tuple[pd.DataFrame, pd.Series]) -> None:
    """The runner's path (validated employees -> feature matrix -> feeds) gives the same ONNX
    inputs as the training-time path from a DataFrame."""
    x, _ = data
    employees = [Employee.model_validate(r) for r in x.head(5).to_dict("records")]
    matrix = feature_matrix(employees)
    assert matrix.shape == (5, len(FEATURES))
    a, b = onnx_export.feeds(x.head(5)), onnx_export.feeds_from_matrix(matrix)
    assert set(a) == set(b) == set(FEATURES)
    for col in FEATURES:
        assert a[col].dtype == b[col].dtype and (a[col] == b[col]).all()
