"""Realized performance: the logged predictions that have an outcome, scored against it.

Nothing is computed over fewer than `min_group_size` rows (monitoring/privacy.py): the
metrics need that many employees who left and who stayed, each calibration bin holds at least
that many, and a group's true (false) positive rate needs that many who left (stayed).
"""

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
from sklearn.metrics import brier_score_loss, roc_auc_score

from monitoring.fairness import ATTRIBUTES, sensitive_features
from monitoring.privacy import MIN_GROUP_SIZE

MIN_OUTCOMES = 20  # fewer, or only one class: no metric is computed


@dataclass(frozen=True)
class GroupError:
    attribute: str
    group: str
    suppressed: bool  # fewer rows than the minimum group size: no values
    n: int | None
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
    min_group_size: int = MIN_GROUP_SIZE

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "groups": [asdict(g) for g in self.groups]}


def performance(
    log: pd.DataFrame, outcomes: pd.DataFrame, *, min_group_size: int = MIN_GROUP_SIZE
) -> PerformanceResult:
    """`log`: id, label, probability and the sensitive features; `outcomes`: inference_id and
    outcome (left or stayed), the current outcome of each prediction that has one."""
    k = min_group_size
    outcome = log["id"].map(dict(zip(outcomes["inference_id"], outcomes["outcome"], strict=True)))
    joined = log[outcome.notna()].assign(outcome=outcome[outcome.notna()])
    y = (joined["outcome"] == "left").astype(int).to_numpy()
    n: dict[str, Any] = {
        "n_predictions": len(log),
        "n_outcomes": len(joined),
        "n_left": int(y.sum()),
        "min_group_size": k,
    }
    if len(joined) < MIN_OUTCOMES or min(int(y.sum()), len(y) - int(y.sum())) < max(k, 1):
        note = (
            f"{len(joined)} outcomes ({int(y.sum())} left): need {MIN_OUTCOMES}, with at least "
            f"{max(k, 1)} who left and {max(k, 1)} who stayed"
        )
        return PerformanceResult(**n, note=note)
    p = joined["probability"].to_numpy(float)
    predicted = (joined["label"] == "Yes").astype(int).to_numpy()
    groups = []
    sensitive = sensitive_features(joined)
    for attribute in ATTRIBUTES:
        # One row per (group, outcome, prediction) weighted by its count: MetricFrame converts
        # its input row by row (docs/adr/0020-monitoring-group-counts.md).
        cells = (
            pd.DataFrame({"group": sensitive[attribute].to_numpy(), "y": y, "predicted": predicted})
            .groupby(["group", "y", "predicted"], observed=True)
            .size()
            .reset_index(name="n")
        )
        weight = {"sample_weight": cells["n"].to_numpy()}
        frame = MetricFrame(
            metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "n": _count,
                     "left": _left},
            y_true=cells["y"].to_numpy(),
            y_pred=cells["predicted"].to_numpy(),
            sensitive_features=cells["group"],
            sample_params={"tpr": weight, "fpr": weight, "n": weight, "left": weight},
        ).by_group  # fmt: skip
        for group, row in frame.iterrows():
            size, left = int(row["n"]), int(row["left"])
            if size < k:
                groups.append(GroupError(attribute, str(group), True, None, None, None))
                continue
            groups.append(GroupError(attribute, str(group), False, size,
                                     _finite(row["tpr"]) if left >= k else None,
                                     _finite(row["fpr"]) if size - left >= k else None))  # fmt: skip
    return PerformanceResult(
        **n,
        roc_auc=float(roc_auc_score(y, p)),
        brier=float(brier_score_loss(y, p)),
        calibration=calibration(y, p, k),
        groups=groups,
    )


def calibration(y: np.ndarray, p: np.ndarray, k: int) -> list[tuple[float, float]]:
    """(mean predicted, observed rate) of up to 10 bins of equal count by predicted probability,
    each of at least k rows (sklearn's calibration_curve cannot promise a bin's size)."""
    order = np.argsort(p, kind="stable")
    bins = max(1, min(10, len(p) // max(k, 10)))
    return [(float(p[i].mean()), float(y[i].mean())) for i in np.array_split(order, bins)]


def _count(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
    return int(np.sum(sample_weight))


def _left(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
    return int(np.sum(np.asarray(sample_weight) * np.asarray(y_true)))


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
