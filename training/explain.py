"""Risk drivers: exact contributions of each input feature to the log-odds of the served model.

For the logistic regression the log-odds are linear in the preprocessed columns, so the SHAP
values (interventional, against the mean preprocessed training row) are exact and need no
sampling: contribution of column j = coef_j * (x_j - mean_j), base = intercept + coef . mean.
The columns one input feature became (its one-hot columns, its scaled or ranked value) are
summed back into that feature, which keeps the sum exact:
base + sum(contributions) == logit(probability), to floating-point rounding (~1e-15).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from sklearn.pipeline import Pipeline

from training.schema import FEATURES

METHOD = "linear-exact"
METHOD_DESCRIPTION = (
    "exact SHAP values of the logistic regression in log-odds (interventional, baseline = the "
    "mean preprocessed row of the training split); one-hot, ranked and scaled columns summed "
    "back into the input feature they came from; no sampling"
)
# |base + sum(contributions) - logit(probability)| promised for every explained prediction.
TOLERANCE = 1e-9
DEFAULT_TOP_K = 5
# Name of the preprocessed matrix inside the ONNX graph: the input of the classifier's MatMul.
ONNX_TRANSFORMED = "transformed_column"


class Driver(BaseModel):
    feature: str = Field(description="Input feature (one of the 30 employee fields).")
    value: Any = Field(description="The employee's value of the feature.")
    contribution: float = Field(
        description="Signed contribution to the log-odds of leaving: > 0 raises the risk."
    )


class Explanation(BaseModel):
    """Why the model scored this employee as it did, in log-odds.

    base_value + sum(drivers[].contribution) + other == logit(probability) (to 1e-9).
    """

    method: str = Field(description="How the contributions were computed.")
    base_value: float = Field(
        description="Log-odds of the average employee of the training data (the baseline)."
    )
    drivers: list[Driver] = Field(description="The top_k largest contributions by magnitude.")
    other: float = Field(description="Sum of the contributions of the remaining features.")


class NotExplainable(ValueError):
    """The model family has no exact explainer here."""


@dataclass(frozen=True)
class LinearExplainer:
    """Coefficients and the training mean of the preprocessed columns, with the column -> input
    feature map; pickled into the model store with the pipeline it was fitted on."""

    coef: np.ndarray  # (m,) coefficients of the preprocessed columns
    mean: np.ndarray  # (m,) mean preprocessed training row
    fold: np.ndarray  # (m, len(FEATURES)) 1 where column j comes from feature f
    base: float  # intercept + coef . mean: the log-odds of the mean row

    @classmethod
    def fit(cls, pipeline: Pipeline, x_train: pd.DataFrame) -> "LinearExplainer":
        classifier = pipeline.named_steps["classifier"]
        if not hasattr(classifier, "coef_"):
            raise NotExplainable(f"no exact explainer for {type(classifier).__name__}")
        preprocess = pipeline.named_steps["preprocess"]
        coef = np.asarray(classifier.coef_, dtype=np.float64).ravel()
        mean = np.asarray(preprocess.transform(x_train[list(FEATURES)]), np.float64).mean(axis=0)
        fold = np.zeros((len(coef), len(FEATURES)))
        for column, feature in enumerate(column_features(preprocess)):
            fold[column, FEATURES.index(feature)] = 1.0
        base = float(classifier.intercept_[0] + coef @ mean)
        return cls(coef, mean, fold, base)

    def contributions(self, transformed: np.ndarray) -> np.ndarray:
        """(n, len(FEATURES)) contributions from the (n, m) preprocessed matrix."""
        return ((np.asarray(transformed, np.float64) - self.mean) * self.coef) @ self.fold

    def contributions_of(self, pipeline: Pipeline, frame: pd.DataFrame) -> np.ndarray:
        """Contributions computed with scikit-learn's own preprocessing (the reference path)."""
        transformed = pipeline.named_steps["preprocess"].transform(frame[list(FEATURES)])
        return self.contributions(transformed)


def column_features(preprocess: Any) -> list[str]:
    """The input feature behind each output column of the fitted ColumnTransformer, in order."""
    owners: list[str] = []
    for name, transformer, columns in preprocess.transformers_:
        out = preprocess.output_indices_.get(name, slice(0, 0))
        width = out.stop - out.start
        if width == 0:
            continue
        if hasattr(transformer, "categories_") and hasattr(transformer, "drop_idx_"):
            # OneHotEncoder: one column per category, minus the dropped one of binary features.
            drops = transformer.drop_idx_
            for i, feature in enumerate(columns):
                dropped = drops is not None and drops[i] is not None
                owners += [feature] * (len(transformer.categories_[i]) - int(dropped))
        elif hasattr(transformer, "n_bins_") or hasattr(transformer, "feature_widths_"):
            # KBinsDiscretizer one-hot (bins may collapse) and bases with a width per feature.
            widths = getattr(transformer, "feature_widths_", None)
            for feature, n in zip(columns, widths or transformer.n_bins_, strict=True):
                owners += [feature] * int(n)
        elif width % len(columns) == 0:  # scalers and ranks: 1 column each (bases: k each)
            owners += [f for f in columns for _ in range(width // len(columns))]
        else:
            raise NotExplainable(f"cannot map the columns of {name!r} to input features")
    if len(owners) != len(preprocess.get_feature_names_out()):
        raise NotExplainable("preprocessed columns do not map to input features")
    return owners


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def explain_session(onnx_model: bytes) -> Any:
    """An ONNX Runtime session of the exported pipeline that also returns the preprocessed
    matrix, so one run gives the probabilities and the inputs of the contributions."""
    import onnx

    from training.onnx_export import session

    model = onnx.load_from_string(onnx_model)
    if not any(ONNX_TRANSFORMED in node.input for node in model.graph.node):
        raise NotExplainable(f"the ONNX graph has no {ONNX_TRANSFORMED!r} tensor")
    info = onnx.helper.make_tensor_value_info(ONNX_TRANSFORMED, onnx.TensorProto.DOUBLE, None)
    model.graph.output.append(info)
    return session(model.SerializeToString())


def explain_matrix(probabilities: np.ndarray, base: float, contributions: np.ndarray) -> np.ndarray:
    """The runner's answer: one row per employee, [probability, base, contribution per feature]."""
    n = len(probabilities)
    return np.column_stack([probabilities, np.full(n, base), contributions])


def explain_features(
    explainer: LinearExplainer, features: np.ndarray, *, session: Any, pipeline: Pipeline
) -> np.ndarray:
    """`explain_matrix` of an (n, len(FEATURES)) object matrix (`schema.feature_matrix`): from
    one run of the ONNX `explain_session` when there is one, else with scikit-learn."""
    from training.onnx_export import feeds_from_matrix

    if session is not None:
        p, transformed = session.run(
            ["probabilities", ONNX_TRANSFORMED], feeds_from_matrix(features)
        )
        return explain_matrix(p[:, 1], explainer.base, explainer.contributions(transformed))
    frame = pd.DataFrame(features, columns=list(FEATURES)).infer_objects()
    p = pipeline.predict_proba(frame)[:, 1]
    return explain_matrix(p, explainer.base, explainer.contributions_of(pipeline, frame))


def top_drivers(row: np.ndarray, values: tuple[Any, ...], k: int) -> Explanation:
    """An Explanation from one row of `explain_matrix` and the employee's feature values."""
    base, contributions = float(row[1]), row[2:]
    order = np.argsort(-np.abs(contributions), kind="stable")
    top, rest = order[:k], order[k:]
    return Explanation(
        method=METHOD,
        base_value=base,
        drivers=[
            Driver(feature=FEATURES[j], value=values[j], contribution=float(contributions[j]))
            for j in top
        ],
        other=float(contributions[rest].sum()) if len(rest) else 0.0,
    )


def check(
    explainer: LinearExplainer, pipeline: Pipeline, onnx_model: bytes | None, frame: pd.DataFrame
) -> dict[str, Any]:
    """Verify additivity on every row of `frame`, for scikit-learn and for the ONNX session the
    runner will use; raise if scikit-learn's breaks TOLERANCE (that would be a bug here)."""
    from training.onnx_export import feeds

    frame = frame[list(FEATURES)]
    contributions = explainer.contributions_of(pipeline, frame)
    p = pipeline.predict_proba(frame)[:, 1]
    error = float(np.max(np.abs(explainer.base + contributions.sum(axis=1) - logit(p))))
    if error > TOLERANCE:
        raise NotExplainable(f"additivity broken: {error:.2e} > {TOLERANCE:.0e}")
    out: dict[str, Any] = {"max_additivity_error": error, "onnx_verified": False}
    if onnx_model is not None:
        try:
            p_onnx, transformed = explain_session(onnx_model).run(
                ["probabilities", ONNX_TRANSFORMED], feeds(frame)
            )
        except Exception as exc:  # noqa: BLE001 - the runner then explains with scikit-learn
            out["onnx_note"] = f"explain session failed: {exc}"
            return out
        c_onnx = explainer.contributions(transformed)
        diff = float(np.max(np.abs(c_onnx - contributions)))
        onnx_error = float(
            np.max(np.abs(explainer.base + c_onnx.sum(axis=1) - logit(p_onnx[:, 1])))
        )
        out.update(
            onnx_verified=diff <= TOLERANCE and onnx_error <= TOLERANCE,
            onnx_max_contribution_diff=diff,
            onnx_max_additivity_error=onnx_error,
        )
    return out
