"""The scikit-learn pipelines: preprocessing from the schema plus a classifier."""

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from training.schema import NOMINAL, NUMERIC, ORDINAL, categories

FAMILIES = ("logistic_regression", "gradient_boosting")
# Inverse regularisation strengths the inner CV chooses from, and its folds: 5 folds scored no
# better than 3 for two thirds more fits (docs/adr/0022-nested-cv-folds.md).
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
INNER_FOLDS = 3


def preprocessor() -> ColumnTransformer:
    """Scale numbers, rank ordinal categories, one-hot the rest; categories come from the schema."""
    return ColumnTransformer(
        [
            ("numeric", StandardScaler(), list(NUMERIC)),
            # Ranks 0..4 are already on a unit-ish scale; scaling them too would make the ONNX
            # export compute them in float32 (its Scaler op), off from sklearn by ~1e-8.
            (
                "ordinal",
                OrdinalEncoder(categories=[list(categories(c) or ()) for c in ORDINAL]),
                list(ORDINAL),
            ),
            (
                "nominal",
                OneHotEncoder(
                    categories=[list(categories(c) or ()) for c in NOMINAL],
                    drop="if_binary",
                    sparse_output=False,
                ),
                list(NOMINAL),
            ),
        ],
        verbose_feature_names_out=False,
    )


def build_pipeline(family: str, seed: int) -> Pipeline:
    """A fresh, unfitted pipeline of the given model family."""
    if family == "logistic_regression":
        clf = LogisticRegression(C=0.3, max_iter=2_000, random_state=seed)
    elif family == "gradient_boosting":
        clf = HistGradientBoostingClassifier(
            learning_rate=0.05, max_iter=200, max_depth=3, l2_regularization=1.0, random_state=seed
        )
    else:
        raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")
    return Pipeline([("preprocess", preprocessor()), ("classifier", clf)])


def build_estimator(family: str, seed: int) -> Pipeline | GridSearchCV:
    """What training fits: the logistic regression's C is chosen by an inner stratified CV, so
    cross-validating this estimator is nested CV; other families as they are."""
    pipeline = build_pipeline(family, seed)
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
