"""The scikit-learn pipelines: preprocessing from the schema plus a classifier."""

from collections.abc import Sequence

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from training.schema import FEATURES, NOMINAL, NUMERIC, ORDINAL, categories

FAMILIES = ("logistic_regression", "gradient_boosting")
# Inverse regularisation strengths the inner CV chooses from, and its folds: 5 folds scored no
# better than 3 for two thirds more fits (docs/adr/0022-nested-cv-folds.md).
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
INNER_FOLDS = 3


def preprocessor(exclude: Sequence[str] = ()) -> ColumnTransformer:
    """Scale numbers, rank ordinal categories, one-hot the rest; categories come from the schema.

    Columns in `exclude` are dropped here, inside the pipeline: the model still takes all of
    FEATURES (as the service sends them) and never sees those columns' values.
    """
    unknown = sorted(set(exclude) - set(FEATURES))
    if unknown:
        raise ValueError(f"not features: {', '.join(unknown)}")
    numeric, ordinal, nominal = ([c for c in group if c not in exclude]
                                 for group in (NUMERIC, ORDINAL, NOMINAL))  # fmt: skip
    dropped = [("excluded", "drop", [c for c in FEATURES if c in exclude])] if exclude else []
    return ColumnTransformer(
        [
            ("numeric", StandardScaler(), numeric),
            # Ranks 0..4 are already on a unit-ish scale; scaling them too would make the ONNX
            # export compute them in float32 (its Scaler op), off from sklearn by ~1e-8.
            (
                "ordinal",
                OrdinalEncoder(categories=[list(categories(c) or ()) for c in ordinal]),
                ordinal,
            ),
            (
                "nominal",
                OneHotEncoder(
                    categories=[list(categories(c) or ()) for c in nominal],
                    drop="if_binary",
                    sparse_output=False,
                ),
                nominal,
            ),
            *dropped,
        ],
        verbose_feature_names_out=False,
    )


def build_pipeline(family: str, seed: int, exclude: Sequence[str] = ()) -> Pipeline:
    """A fresh, unfitted pipeline of the given model family, blind to the `exclude` columns."""
    if family == "logistic_regression":
        clf = LogisticRegression(C=0.3, max_iter=2_000, random_state=seed)
    elif family == "gradient_boosting":
        clf = HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=200, max_depth=3, l2_regularization=1.0, random_state=seed
        )
    else:
        raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")
    return Pipeline([("preprocess", preprocessor(exclude)), ("classifier", clf)])


def build_estimator(family: str, seed: int, exclude: Sequence[str] = ()) -> Pipeline | GridSearchCV:
    """What training fits: the logistic regression's C is chosen by an inner stratified CV, so
    cross-validating this estimator is nested CV; other families as they are."""
    pipeline = build_pipeline(family, seed, exclude)
    if family != "logistic_regression":
        return pipeline
    return GridSearchCV(
        pipeline,
        {"classifier__C": list(C_GRID)},
        scoring="roc_auc",
        cv=StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=seed),
    )


def fitted_pipeline(estimator: Pipeline | GridSearchCV) -> Pipeline:
    """The plain pipeline of a fitted estimator (refit on all its data with the chosen C)."""
    return estimator.best_estimator_ if isinstance(estimator, GridSearchCV) else estimator
