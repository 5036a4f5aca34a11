"""Fairness of a model before it serves: selection rates by group at its threshold, in both
directions, and how well the features it keeps stand in for the protected attributes it drops.

Groups are the monitoring report's (`monitoring.fairness.sensitive_features`: Gender, the age
bands, MaritalStatus), so the card and the report on live traffic compare like with like.
"""

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, count, selection_rate
from sklearn.model_selection import StratifiedKFold, cross_val_score

from monitoring.fairness import AGE_LABELS, FOUR_FIFTHS, sensitive_features
from training.pipeline import build_pipeline
from training.schema import FEATURES, categories

# Left out by the fairness-aware variant unless told otherwise.
PROTECTED: tuple[str, ...] = ("Gender", "Age", "MaritalStatus")
LABELS = ("Yes", "No")
PROXY_FOLDS = 5


def group_selection(features: pd.DataFrame, labels: Sequence[str] | np.ndarray) -> dict[str, Any]:
    """Share labelled Yes and share labelled No by group, and min/max of each across groups.

    The four-fifths rule compares the rates of the favourable outcome; which label that is
    depends on what the team does with a flag, so both are given (docs/user-guide/model-governance.md).
    """
    values = np.asarray(labels, dtype=object)
    rates = {label: partial(selection_rate, pos_label=label) for label in LABELS}
    out: dict[str, Any] = {"rule": f"min group rate / max group rate; flagged under {FOUR_FIFTHS}"}
    attributes: dict[str, Any] = {}
    for attribute, groups in sensitive_features(features).items():
        frame = MetricFrame(
            metrics={"n": count, **rates},
            y_true=values,
            y_pred=values,
            sensitive_features=groups.to_numpy(),
        )
        ratios = frame.ratio(method="between_groups")
        rows = sorted(frame.by_group.iterrows(), key=lambda item: _order(str(item[0])))
        entry: dict[str, Any] = {
            "groups": [
                {"group": str(group), "n": int(row["n"]),
                 **{f"rate_{label}": float(row[label]) for label in LABELS}}
                for group, row in rows
            ],
        }  # fmt: skip
        for label in LABELS:
            ratio = float(ratios[label])
            entry[f"ratio_{label}"] = None if math.isnan(ratio) else ratio
            entry[f"flagged_{label}"] = not math.isnan(ratio) and ratio < FOUR_FIFTHS
        attributes[str(attribute)] = entry
    out["attributes"] = attributes
    for label in LABELS:
        known = [
            a[f"ratio_{label}"] for a in attributes.values() if a[f"ratio_{label}"] is not None
        ]
        out[f"lowest_ratio_{label}"] = min(known) if known else None
    return out


def _order(group: str) -> tuple[int, str]:
    """Age bands youngest first, other groups alphabetically."""
    return (AGE_LABELS.index(group), "") if group in AGE_LABELS else (len(AGE_LABELS), group)


def proxy_target(features: pd.DataFrame, attribute: str) -> pd.Series:
    """What the proxy check predicts: a categorical attribute's values, Age as the report's
    bands, another number as its quartiles."""
    if attribute == "Age":
        return sensitive_features(features)["age band"]
    if categories(attribute):
        return features[attribute].astype(str)
    return pd.qcut(features[attribute], 4, duplicates="drop").astype(str)


def proxy_check(
    features: pd.DataFrame,
    excluded: Sequence[str],
    *,
    family: str,
    seed: int,
    folds: int = PROXY_FOLDS,
) -> dict[str, Any]:
    """Cross-validated ROC-AUC of predicting each excluded attribute from the features that are
    left (one-vs-rest, macro-averaged over groups when there are more than two): 0.5 means the
    remaining features carry nothing of it, 1.0 that they give it away. The model is the family
    the fairness-aware variant uses, on its preprocessing: what that model could reconstruct."""
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    x = features[list(FEATURES)]
    attributes: dict[str, Any] = {}
    for attribute in excluded:
        target = proxy_target(x, attribute)
        scoring = "roc_auc" if target.nunique() == 2 else "roc_auc_ovr"
        pipeline = build_pipeline(family, seed, exclude=excluded)
        scores = cross_val_score(pipeline, x, target, cv=cv, scoring=scoring)
        attributes[attribute] = {
            "target": "age band" if attribute == "Age" else attribute,
            "groups": sorted(map(str, target.unique()), key=_order),
            "roc_auc": {"mean": float(scores.mean()), "std": float(scores.std(ddof=1))},
        }
    return {
        "what": f"ROC-AUC of predicting each excluded attribute from the remaining features with "
        f"the {family} pipeline, {folds}-fold stratified CV on the training split (macro "
        "one-vs-rest for more than two groups)",
        "family": family,
        "attributes": attributes,
    }
