"""python -m training.search: the model search behind the shipped pipeline, by nested CV.

Each variant is cross-validated with the same outer folds as training (5 x 3 repeated
stratified) and its C chosen by the inner CV inside every outer fold, so the numbers are
honest estimates of the whole procedure. A variant is only worth shipping if it beats the
shipped one by more than the paired standard error over the outer folds, still exports to ONNX
within 1e-6 and still has exact explanations.
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


class Hinges(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """max(0, x - knot) / sd(x) at each inner quartile: piecewise-linear terms."""

    def __init__(self, n_knots: int = 3) -> None:
        self.n_knots = n_knots

    def fit(self, x: Any, y: Any = None) -> "Hinges":
        x = np.asarray(x, float)
        inner = np.linspace(0, 1, self.n_knots + 2)[1:-1]
        self.knots_ = [np.unique(np.quantile(x[:, j], inner)) for j in range(x.shape[1])]
        self.feature_widths_ = [len(k) for k in self.knots_]
        self.scale_ = x.std(axis=0) + 1e-12
        return self

    def transform(self, x: Any) -> np.ndarray:
        x = np.asarray(x, float)
        return np.column_stack(
            [np.maximum(0, x[:, [j]] - k) / self.scale_[j] for j, k in enumerate(self.knots_)]
        )

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        names = zip(input_features, self.knots_, strict=True)
        return np.array([f"{f}_hinge{i}" for f, k in names for i in range(len(k))])


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
    elif name == "hinges":  # what splines do, in ops an ONNX converter could express
        steps.append(("hinges", Hinges(), list(SKEWED)))
    else:
        raise ValueError(name)
    return ColumnTransformer(steps, verbose_feature_names_out=False)


VARIANTS = ("shipped", "ordinal one-hot", "quartile bins", "splines", "linear splines", "hinges")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.search", description=__doc__)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)  # KBins: collapsed bins
    x, y = split_xy(load_reference())
    x_train, _, y_train, _ = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=args.seed
    )
    outer = RepeatedStratifiedKFold(n_splits=5, n_repeats=3, random_state=args.seed)
    shipped_scores: np.ndarray | None = None
    print(f"{'variant':<18}{'nested CV ROC-AUC':>22}{'vs shipped':>18}  ONNX / explanation")
    for name in args.variants.split(","):
        estimator = build_estimator("logistic_regression", args.seed)
        estimator.set_params(estimator__preprocess=variant(name))
        scores = cross_val_score(estimator, x_train, y_train, cv=outer, scoring="roc_auc")
        if shipped_scores is None:
            shipped_scores = scores
        diff = scores - shipped_scores
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if diff.any() else 0.0
        pipeline = fitted_pipeline(estimator.fit(x_train, y_train))
        onnx = export(pipeline, x).note
        try:
            LinearExplainer.fit(pipeline, x_train)
            exact = "exact"
        except NotExplainable as exc:
            exact = str(exc)
        print(
            f"{name:<18}{scores.mean():>14.4f} ± {scores.std(ddof=1):.4f}"
            f"{diff.mean():>+11.4f} ± {se:.4f}  {onnx[:60]} / {exact}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
