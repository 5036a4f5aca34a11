"""python -m training.search: the model search behind the shipped pipeline, by nested CV.

Each variant is cross-validated with the same outer folds as training (5 x 3 repeated
stratified) and its C chosen by the inner CV inside every outer fold, so the numbers are
honest estimates of the whole procedure. The difference to the shipped pipeline is paired over
the 15 outer folds. Those folds share most of their training rows, so the plain standard error
of the mean difference is too small; the t statistic uses the corrected resampled variance of
Nadeau and Bengio (2003), (1/15 + n_test/n_train) * var. A variant is worth shipping only with
t above 2 (about p < 0.05 at 14 degrees of freedom), an ONNX export within 1e-6 and exact
explanations.
"""

import argparse
import sys
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score, train_test_split
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, SplineTransformer

from training.data import load_reference, split_xy
from training.explain import LinearExplainer, NotExplainable
from training.onnx_export import export
from training.pipeline import build_estimator, fitted_pipeline, preprocessor
from training.schema import NOMINAL, ORDINAL, categories

SKEWED = (
    "MonthlyIncome", "DistanceFromHome", "TotalWorkingYears", "YearsAtCompany",
    "YearsInCurrentRole", "YearsSinceLastPromotion", "YearsWithCurrManager", "NumCompaniesWorked",
)  # fmt: skip
FOLDS, REPEATS = 5, 3


class Hinges(TransformerMixin, BaseEstimator):  # type: ignore[misc]  # sklearn is untyped
    """(max(0, x - knot) / sd(x)) ** power at inner quantile knots: piecewise-linear terms
    (power 1), or with power 2 and a knot at the minimum the quadratic splines' space, in
    operations ONNX has (see `register_hinges`)."""

    def __init__(self, n_knots: int = 3, power: int = 1) -> None:
        self.n_knots = n_knots
        self.power = power

    def fit(self, x: Any, y: Any = None) -> "Hinges":
        columns = getattr(x, "columns", None)
        x = np.asarray(x, float)
        self.names_ = [str(c) for c in columns] if columns is not None else [f"x{j}" for j in range(x.shape[1])]  # fmt: skip
        inner = np.linspace(0, 1, self.n_knots + 2)[1:-1]
        self.knots_ = [np.unique(np.quantile(x[:, j], inner)) for j in range(x.shape[1])]
        if self.power == 2:  # x^2 is the hinge at the lowest value
            self.knots_ = [np.r_[x[:, j].min(), k] for j, k in enumerate(self.knots_)]
        self.feature_widths_ = [len(k) for k in self.knots_]  # read by training.explain
        self.scale_ = x.std(axis=0) + 1e-12
        return self

    def transform(self, x: Any) -> np.ndarray:
        x = np.asarray(x, float)
        parts = [np.maximum(0, x[:, [j]] - k) / self.scale_[j] for j, k in enumerate(self.knots_)]
        return np.column_stack([p**self.power for p in parts])

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = self.names_ if input_features is None else input_features
        return np.array([f"{f}_hinge{i}" for f, k in zip(names, self.knots_, strict=True)
                         for i in range(len(k))])  # fmt: skip


def _hinge_shape(operator: Any) -> None:
    width = sum(len(k) for k in operator.raw_operator.knots_)
    operator.outputs[0].type = operator.inputs[0].type.__class__([None, width])


def _hinge_graph(scope: Any, operator: Any, container: Any) -> None:
    """Hinges in ONNX: the same float64 operations in the same order (bit-equal here)."""
    from skl2onnx.algebra.onnx_ops import (
        OnnxDiv,
        OnnxGather,
        OnnxIdentity,
        OnnxMul,
        OnnxRelu,
        OnnxSub,
    )

    hinges, opv = operator.raw_operator, container.target_opset
    column = np.array([j for j, k in enumerate(hinges.knots_) for _ in k], dtype=np.int64)
    knots = np.concatenate(hinges.knots_).astype(np.float64)
    x = OnnxGather(operator.inputs[0], column, axis=1, op_version=opv)
    r = OnnxSub(x, knots, op_version=opv)
    r = OnnxDiv(
        OnnxRelu(r, op_version=opv), hinges.scale_[column].astype(np.float64), op_version=opv
    )
    if hinges.power == 2:
        r = OnnxMul(r, r, op_version=opv)
    OnnxIdentity(r, op_version=opv, output_names=operator.outputs[:1]).add_to(scope, container)


def register_hinges() -> None:
    from skl2onnx import update_registered_converter

    update_registered_converter(Hinges, "AttritionHinges", _hinge_shape, _hinge_graph)


def variant(name: str) -> ColumnTransformer:
    """The shipped preprocessing plus one change."""
    shipped = preprocessor()
    if name == "shipped":
        return shipped
    steps = list(shipped.transformers)
    if name == "ordinal one-hot":  # ordered categories as one-hot instead of ranks
        cats = [*ORDINAL, *NOMINAL]
        encoder = OneHotEncoder(
            categories=[list(categories(c) or ()) for c in cats],
            drop="if_binary",
            sparse_output=False,
        )
        steps = [steps[0], ("categorical", encoder, cats)]
    elif name == "quartile bins":  # step functions of the skewed counts and pay
        bins = KBinsDiscretizer(n_bins=4, encode="onehot-dense", strategy="quantile")
        steps.append(("bins", bins, list(SKEWED)))
    elif name == "splines":  # smooth non-linear terms of the same
        steps.append(("splines", SplineTransformer(n_knots=4, degree=2), list(SKEWED)))
    elif name == "linear splines":
        steps.append(("splines", SplineTransformer(n_knots=4, degree=1), list(SKEWED)))
    elif name == "hinges":
        steps.append(("hinges", Hinges(), list(SKEWED)))
    elif name == "quadratic hinges":
        steps.append(("hinges", Hinges(power=2), list(SKEWED)))
    else:
        raise ValueError(name)
    return ColumnTransformer(steps, verbose_feature_names_out=False)


VARIANTS = (
    "shipped", "ordinal one-hot", "quartile bins", "splines", "linear splines", "hinges",
    "quadratic hinges",
)  # fmt: skip


def corrected_t(diff: np.ndarray, folds: int = FOLDS) -> float:
    """Nadeau-Bengio corrected resampled t of paired differences over k-fold outer folds."""
    variance = (1 / len(diff) + 1 / (folds - 1)) * diff.var(ddof=1)
    return float(diff.mean() / np.sqrt(variance)) if variance > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.search", description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # KBins: collapsed bins
    register_hinges()
    x, y = split_xy(load_reference())
    x_train, _, y_train, _ = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=args.seed
    )
    outer = RepeatedStratifiedKFold(n_splits=FOLDS, n_repeats=REPEATS, random_state=args.seed)
    shipped: np.ndarray | None = None
    print(
        f"{'variant':<18}{'nested CV ROC-AUC':>20}{'vs shipped':>11}{'corrected t':>13}  ONNX / explanation"
    )
    for name in args.variants.split(","):
        estimator = build_estimator("logistic_regression", args.seed)
        estimator.set_params(estimator__preprocess=variant(name))
        scores = cross_val_score(estimator, x_train, y_train, cv=outer, scoring="roc_auc")
        shipped = scores if shipped is None else shipped
        diff = scores - shipped
        pipeline = fitted_pipeline(estimator.fit(x_train, y_train))
        onnx = export(pipeline, x).note
        try:
            LinearExplainer.fit(pipeline, x_train)
            exact = "exact"
        except NotExplainable as exc:
            exact = str(exc)
        print(
            f"{name:<18}{scores.mean():>12.4f} ± {scores.std(ddof=1):.4f}{diff.mean():>+11.4f}"
            f"{corrected_t(diff):>13.2f}  {onnx[:48]} / {exact}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
