"""A pipeline that leaves protected attributes out still takes all 30 features: the dropped
ones change nothing, the ONNX export keeps every input and verifies, explanations give them 0."""

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from training.data import load_reference, split_xy
from training.explain import LinearExplainer, check, explain_features, explain_session, logit
from training.fairness import PROTECTED
from training.onnx_export import OnnxExport, export, feeds, probabilities, session
from training.pipeline import FAMILIES, build_pipeline, preprocessor
from training.schema import FEATURES, Employee, feature_matrix

OTHER_VALUES = {"Gender": {"Female": "Male", "Male": "Female"},
                "MaritalStatus": {"Single": "Married", "Married": "Divorced", "Divorced": "Single"}}  # fmt: skip
PROTECTED_COLUMNS = [FEATURES.index(c) for c in PROTECTED]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    return split_xy(load_reference())


def flipped(x: pd.DataFrame) -> pd.DataFrame:
    """The same employees with every protected attribute changed (years kept consistent)."""
    out = x.copy()
    for column, swap in OTHER_VALUES.items():
        out[column] = out[column].map(swap)
    out["Age"] = np.minimum(out["Age"] + 17, 100)
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def blind(request: pytest.FixtureRequest, data: tuple[pd.DataFrame, pd.Series]) -> Pipeline:
    x, y = data
    return build_pipeline(request.param, 0, exclude=PROTECTED).fit(x, y)


def test_protected_values_change_no_probability(
    blind: Pipeline, data: tuple[pd.DataFrame, pd.Series]
) -> None:
    x, _ = data
    np.testing.assert_array_equal(blind.predict_proba(x), blind.predict_proba(flipped(x)))
    # ...while the all-features model does use them: the check above could fail.
    full = build_pipeline("logistic_regression", 0).fit(*data)
    assert np.abs(full.predict_proba(x) - full.predict_proba(flipped(x))).max() > 0.01


def test_the_preprocessor_says_what_it_drops_and_refuses_unknown_names() -> None:
    dropped = [t for t in preprocessor(PROTECTED).transformers if t[1] == "drop"]
    assert dropped == [("excluded", "drop", ["Age", "Gender", "MaritalStatus"])]
    assert all(t[1] != "drop" for t in preprocessor().transformers)
    with pytest.raises(ValueError, match="not features: Salary"):
        preprocessor(("Age", "Salary"))


@pytest.fixture(scope="module")
def exported(data: tuple[pd.DataFrame, pd.Series]) -> tuple[Pipeline, OnnxExport]:
    """The served family without the protected attributes, and its ONNX export."""
    x, y = data
    pipeline = build_pipeline("logistic_regression", 0, exclude=PROTECTED).fit(x, y)
    return pipeline, export(pipeline, x)


def test_onnx_export_takes_all_features_and_matches_sklearn(
    data: tuple[pd.DataFrame, pd.Series], exported: tuple[Pipeline, OnnxExport]
) -> None:
    import onnx

    x, _ = data
    _, result = exported
    assert result.model is not None, result.note
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-12
    graph = onnx.load_from_string(result.model).graph
    assert [i.name for i in graph.input] == list(FEATURES)  # the runner feeds all 30
    sess = session(result.model)
    np.testing.assert_array_equal(probabilities(sess, x), probabilities(sess, flipped(x)))


def test_explanations_give_dropped_features_exactly_zero_on_both_paths(
    data: tuple[pd.DataFrame, pd.Series], exported: tuple[Pipeline, OnnxExport]
) -> None:
    x, _ = data
    pipeline, result = exported
    assert result.model is not None
    explainer = LinearExplainer.fit(pipeline, x)
    checked = check(explainer, pipeline, result.model, x)
    assert checked["onnx_verified"], checked
    employees = [Employee.model_validate(r) for r in x.head(200).to_dict("records")]
    matrix = feature_matrix(employees)
    runner_onnx = explain_features(
        explainer, matrix, session=explain_session(result.model), pipeline=pipeline
    )
    runner_sklearn = explain_features(explainer, matrix, session=None, pipeline=pipeline)
    for answer in (runner_onnx, runner_sklearn):
        contributions = answer[:, 2:]
        assert (contributions[:, PROTECTED_COLUMNS] == 0.0).all()
        assert (np.abs(contributions).sum(axis=0) > 0).sum() == len(FEATURES) - len(PROTECTED)
        np.testing.assert_allclose(
            answer[:, 1] + contributions.sum(axis=1), logit(answer[:, 0]), rtol=0, atol=1e-9
        )
    assert set(feeds(x.head(1))) == set(FEATURES)
