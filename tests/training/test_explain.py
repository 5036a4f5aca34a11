"""Risk drivers: exact additivity, folding into input features, the ONNX path, top-k."""

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from training.data import load_reference, split_xy
from training.explain import (
    TOLERANCE,
    LinearExplainer,
    NotExplainable,
    check,
    explain_matrix,
    explain_session,
    logit,
    top_drivers,
)
from training.onnx_export import export, feeds
from training.pipeline import build_pipeline
from training.schema import FEATURES


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    return split_xy(load_reference())


@pytest.fixture(scope="module")
def fitted(data: tuple[pd.DataFrame, pd.Series]) -> tuple[Pipeline, LinearExplainer]:
    x, y = data
    pipeline = build_pipeline("logistic_regression", seed=0).fit(x.iloc[:800], y.iloc[:800])
    return pipeline, LinearExplainer.fit(pipeline, x.iloc[:800])


def test_base_plus_contributions_is_the_log_odds_on_every_row(
    data: tuple[pd.DataFrame, pd.Series], fitted: tuple[Pipeline, LinearExplainer]
) -> None:
    x, _ = data
    pipeline, explainer = fitted
    contributions = explainer.contributions_of(pipeline, x)
    assert contributions.shape == (len(x), len(FEATURES))
    p = pipeline.predict_proba(x)[:, 1]
    np.testing.assert_allclose(
        explainer.base + contributions.sum(axis=1), logit(p), rtol=0, atol=TOLERANCE
    )


def test_base_is_the_log_odds_of_the_mean_row_and_contributions_average_to_zero(
    data: tuple[pd.DataFrame, pd.Series], fitted: tuple[Pipeline, LinearExplainer]
) -> None:
    x, _ = data
    pipeline, explainer = fitted
    # Interventional SHAP against the training mean: contributions average to 0 on that data.
    mean = explainer.contributions_of(pipeline, x.iloc[:800]).mean(axis=0)
    np.testing.assert_allclose(mean, 0, atol=1e-12)


@pytest.mark.parametrize(
    "feature,value",
    [("OverTime", "No"), ("JobRole", "Manager"), ("MonthlyIncome", 19999), ("Education", "Doctor")],
)
def test_changing_one_input_moves_only_its_own_contribution(
    data: tuple[pd.DataFrame, pd.Series],
    fitted: tuple[Pipeline, LinearExplainer],
    feature: str,
    value: object,
) -> None:
    x, _ = data
    pipeline, explainer = fitted
    row = x.iloc[[0]].copy()
    changed = row.copy()
    changed[feature] = value
    before, after = (explainer.contributions_of(pipeline, r)[0] for r in (row, changed))
    moved = [FEATURES[j] for j in np.flatnonzero(np.abs(after - before) > 1e-12)]
    assert moved == [feature]


def test_onnx_session_gives_the_same_contributions_and_probabilities(
    data: tuple[pd.DataFrame, pd.Series], fitted: tuple[Pipeline, LinearExplainer]
) -> None:
    x, _ = data
    pipeline, explainer = fitted
    onnx_model = export(pipeline, x).model
    assert onnx_model is not None
    p, transformed = explain_session(onnx_model).run(
        ["probabilities", "transformed_column"], feeds(x)
    )
    np.testing.assert_allclose(
        explainer.contributions(transformed), explainer.contributions_of(pipeline, x), atol=1e-12
    )
    np.testing.assert_allclose(
        explainer.base + explainer.contributions(transformed).sum(axis=1),
        logit(p[:, 1]),
        rtol=0,
        atol=TOLERANCE,
    )
    checked = check(explainer, pipeline, onnx_model, x)
    assert checked["onnx_verified"] and checked["max_additivity_error"] <= TOLERANCE


@pytest.mark.parametrize("k", [1, 5, 30])
def test_top_drivers_are_the_largest_and_the_rest_is_other(
    data: tuple[pd.DataFrame, pd.Series], fitted: tuple[Pipeline, LinearExplainer], k: int
) -> None:
    x, _ = data
    pipeline, explainer = fitted
    row = x.iloc[[3]]
    contributions = explainer.contributions_of(pipeline, row)
    p = pipeline.predict_proba(row)[:, 1]
    matrix = explain_matrix(p, explainer.base, contributions)
    explanation = top_drivers(matrix[0], tuple(row.iloc[0]), k)
    sizes = [abs(d.contribution) for d in explanation.drivers]
    assert len(sizes) == k and sizes == sorted(sizes, reverse=True)
    assert min(sizes) >= np.sort(np.abs(contributions[0]))[::-1][k - 1]
    total = explanation.base_value + sum(d.contribution for d in explanation.drivers)
    assert abs(total + explanation.other - logit(p[0])) <= TOLERANCE
    assert explanation.other == 0.0 if k == 30 else True
    first = explanation.drivers[0]
    assert first.value == row.iloc[0][first.feature]


def test_gradient_boosting_is_refused_not_approximated(
    data: tuple[pd.DataFrame, pd.Series],
) -> None:
    x, y = data
    pipeline = build_pipeline("gradient_boosting", seed=0).fit(x.iloc[:300], y.iloc[:300])
    with pytest.raises(NotExplainable):
        LinearExplainer.fit(pipeline, x.iloc[:300])
