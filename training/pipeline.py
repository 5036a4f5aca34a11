"""The scikit-learn pipelines: preprocessing from the schema plus a classifier."""

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from training.schema import NOMINAL, NUMERIC, ORDINAL, categories

FAMILIES = ("logistic_regression", "gradient_boosting")


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
