"""The model search's pieces: the corrected t, and hinge terms that export to ONNX exactly."""

import numpy as np
import pytest
from sklearn.compose import ColumnTransformer

from training.data import load_reference, split_xy
from training.explain import LinearExplainer, check
from training.onnx_export import export
from training.pipeline import build_pipeline, preprocessor
from training.search import SKEWED, Hinges, corrected_t, register_hinges


def test_corrected_t_is_smaller_than_the_naive_one() -> None:
    diff = np.array([0.01, 0.0, 0.02, 0.005, 0.015] * 3)
    naive = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    assert 0 < corrected_t(diff) < naive / 2
    assert corrected_t(np.zeros(15)) == 0.0


@pytest.mark.parametrize("power", [1, 2])
def test_hinges_export_to_onnx_and_explain_exactly(power: int) -> None:
    register_hinges()
    x, y = split_xy(load_reference())
    pipeline = build_pipeline("logistic_regression", 0)
    steps = [*preprocessor().transformers, ("hinges", Hinges(power=power), list(SKEWED))]
    pipeline.set_params(preprocess=ColumnTransformer(steps, verbose_feature_names_out=False))
    pipeline.fit(x, y)
    exported = export(pipeline, x)
    assert exported.model is not None and exported.max_abs_diff is not None
    assert exported.max_abs_diff < 1e-12, exported.note
    checked = check(LinearExplainer.fit(pipeline, x), pipeline, exported.model, x)
    assert checked["onnx_verified"] and checked["onnx_max_contribution_diff"] == 0.0
