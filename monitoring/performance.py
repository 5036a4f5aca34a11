"""Realized performance: the logged predictions that have an outcome, scored against it."""

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, roc_auc_score

from monitoring.fairness import ATTRIBUTES, sensitive_features

MIN_OUTCOMES = 20  # fewer, or only one class: no metric is computed


@dataclass(frozen=True)
class GroupError:
    attribute: str
    group: str
    n: int
    true_positive_rate: float | None
    false_positive_rate: float | None


@dataclass(frozen=True)
class PerformanceResult:
    n_predictions: int
    n_outcomes: int
    n_left: int
    roc_auc: float | None = None
    brier: float | None = None
    calibration: list[tuple[float, float]] = field(default_factory=list)  # (predicted, observed)
    groups: list[GroupError] = field(default_factory=list)
    note: str | None = None

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "groups": [asdict(g) for g in self.groups]}


def performance(log: pd.DataFrame, outcomes: pd.DataFrame) -> PerformanceResult:
    """`log`: id, label, probability and the sensitive features; `outcomes`: inference_id and
    outcome (left or stayed), the current outcome of each prediction that has one."""
    outcome = log["id"].map(dict(zip(outcomes["inference_id"], outcomes["outcome"], strict=True)))
    joined = log[outcome.notna()].assign(outcome=outcome[outcome.notna()])
    y = (joined["outcome"] == "left").astype(int).to_numpy()
    n: dict[str, Any] = {
        "n_predictions": len(log),
        "n_outcomes": len(joined),
        "n_left": int(y.sum()),
    }
    if len(joined) < MIN_OUTCOMES or len(set(y)) < 2:
        note = (
            f"{len(joined)} outcomes ({int(y.sum())} left): need {MIN_OUTCOMES} with both classes"
        )
        return PerformanceResult(**n, note=note)
    p = joined["probability"].to_numpy(float)
    predicted = (joined["label"] == "Yes").astype(int).to_numpy()
    observed, mean_p = calibration_curve(
        y, p, n_bins=min(10, len(joined) // 10), strategy="quantile"
    )
    groups = []
    sensitive = sensitive_features(joined)
    for attribute in ATTRIBUTES:
        # One row per (group, outcome, prediction) weighted by its count: MetricFrame converts
        # its input row by row, which cost seconds at 20,000 outcomes (see fairness.py).
        cells = (
            pd.DataFrame({"group": sensitive[attribute].to_numpy(), "y": y, "predicted": predicted})
            .groupby(["group", "y", "predicted"], observed=True)
            .size()
            .reset_index(name="n")
        )
        weight = {"sample_weight": cells["n"].to_numpy()}
        frame = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "n": _count},
            y_true=cells["y"].to_numpy(),
            y_pred=cells["predicted"].to_numpy(),
            sensitive_features=cells["group"],
            sample_params={"tpr": weight, "fpr": weight, "n": weight},
        ).by_group
        for group, row in frame.iterrows():
            groups.append(GroupError(attribute, str(group), int(row["n"]),
                                     _finite(row["tpr"]), _finite(row["fpr"])))  # fmt: skip
    return PerformanceResult(
        **n,
        roc_auc=float(roc_auc_score(y, p)),
        brier=float(brier_score_loss(y, p)),
        calibration=[(float(a), float(b)) for a, b in zip(mean_p, observed, strict=True)],
        groups=groups,
    )


def _count(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
    return int(np.sum(sample_weight))


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
