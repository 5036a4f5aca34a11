"""Fairness of the logged predictions: selection rate and mean risk by group (fairlearn).

The selection rate is the share labelled Yes. Each group's rate is divided by the highest
group's; a ratio under 0.8 is flagged (the four-fifths rule of US employment guidance).
"""

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, mean_prediction, selection_rate

FOUR_FIFTHS = 0.8
AGE_BANDS = (0, 30, 40, 50, 200)
AGE_LABELS = ("under 30", "30-39", "40-49", "50 and over")
ATTRIBUTES = ("Gender", "age band", "MaritalStatus")


@dataclass(frozen=True)
class GroupRate:
    attribute: str
    group: str
    n: int
    selection_rate: float
    mean_risk: float
    ratio: float | None  # selection rate / the highest group's (None when nobody is selected)
    flagged: bool


@dataclass(frozen=True)
class FairnessResult:
    groups: list[GroupRate]

    @property
    def lowest_ratio(self) -> float | None:
        ratios = [g.ratio for g in self.groups if g.ratio is not None]
        return min(ratios) if ratios else None

    def summary(self) -> dict[str, Any]:
        return {
            "lowest_ratio": self.lowest_ratio,
            "threshold": FOUR_FIFTHS,
            "flagged": [f"{g.attribute}={g.group}" for g in self.groups if g.flagged],
            "groups": [asdict(g) for g in self.groups],
        }


def age_band(age: pd.Series) -> pd.Series:
    return pd.cut(age, AGE_BANDS, right=False, labels=AGE_LABELS).astype(str)


def sensitive_features(log: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Gender": log["Gender"],
            "age band": age_band(log["Age"]),
            "MaritalStatus": log["MaritalStatus"],
        },
        index=log.index,
    )


def fairness(log: pd.DataFrame) -> FairnessResult:
    """`log` has Age, Gender, MaritalStatus, label (Yes/No) and probability."""
    if log.empty:
        return FairnessResult([])
    groups: list[GroupRate] = []
    sensitive = sensitive_features(log)
    for attribute in ATTRIBUTES:
        # MetricFrame converts its input row by row (28 of the 44 s a 100,000-row report took);
        # one row per (group, label) weighted by its count gives the same numbers at once.
        cells = (
            pd.DataFrame({"group": sensitive[attribute], "selected": (log["label"] == "Yes").astype(int),
                          "probability": log["probability"].astype(float)})
            .groupby(["group", "selected"], observed=True)["probability"]
            .agg(["size", "mean"])
            .reset_index()
        )  # fmt: skip
        selected, weight = cells["selected"].to_numpy(), cells["size"].to_numpy()
        frame = MetricFrame(
            metrics={"selection_rate": selection_rate, "count": _count},
            y_true=selected,
            y_pred=selected,
            sensitive_features=cells["group"],
            sample_params={"selection_rate": {"sample_weight": weight},
                           "count": {"sample_weight": weight}},
        ).by_group  # fmt: skip
        risk = MetricFrame(
            metrics=mean_prediction,
            y_true=selected,
            y_pred=cells["mean"].to_numpy(),
            sensitive_features=cells["group"],
            sample_params={"sample_weight": weight},
        ).by_group
        top = float(frame["selection_rate"].max())
        for group, row in frame.iterrows():
            rate = float(row["selection_rate"])
            ratio = rate / top if top > 0 else None
            groups.append(GroupRate(attribute, str(group), int(row["count"]), rate,
                                    float(risk[group]), ratio,
                                    ratio is not None and ratio < FOUR_FIFTHS))  # fmt: skip
    return FairnessResult(groups)


def _count(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
    return int(np.sum(sample_weight))
