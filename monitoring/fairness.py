"""Fairness of the logged predictions: the share labelled Yes and mean risk by group (fairlearn),
compared between groups by the four-fifths rule in both directions.

The four-fifths rule (US employment guidance) compares the rates of the favourable outcome: a
group whose rate is under 4/5 of the most favoured group's shows adverse impact. Which label is
favourable depends on what a "Yes" (likely to leave) leads to:
- to a retention conversation or offer: "Yes" is favourable, "No" adverse, and the rule
  compares the rates of "Yes" (the share flagged). This is the default (the model card's
  intended use: helping HR decide where to look and talk);
- to being passed over (promotion, projects, investment): "Yes" is adverse, and the rule
  compares the rates of "No". Choose it with `adverse="Yes"` (`--adverse-outcome Yes`).
Both ratios are computed and shown either way; `lowest_ratio` and `flagged` follow the choice.

Groups under the minimum group size are suppressed and left out of the comparisons
(monitoring/privacy.py): a ratio against a suppressed group would give its rate away.
"""

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, mean_prediction, selection_rate

from monitoring.privacy import MIN_GROUP_SIZE

FOUR_FIFTHS = 0.8
AGE_BANDS = (0, 30, 40, 50, 200)
AGE_LABELS = ("under 30", "30-39", "40-49", "50 and over")
ATTRIBUTES = ("Gender", "age band", "MaritalStatus")
Label = Literal["Yes", "No"]
DEFAULT_ADVERSE: Label = "No"


@dataclass(frozen=True)
class GroupRate:
    attribute: str
    group: str
    suppressed: bool  # fewer rows than the minimum group size: no values
    n: int | None
    selection_rate: float | None  # share labelled Yes
    mean_risk: float | None
    yes_ratio: float | None  # share Yes / the highest group's (None when no group has any)
    no_ratio: float | None  # share No / the highest group's
    flagged: bool  # the favourable outcome's ratio is under 4/5

    @property
    def name(self) -> str:
        return f"{self.attribute}={self.group}"


@dataclass(frozen=True)
class FairnessResult:
    groups: list[GroupRate]
    adverse: Label = DEFAULT_ADVERSE
    min_group_size: int = MIN_GROUP_SIZE

    @property
    def favourable(self) -> Label:
        return "No" if self.adverse == "Yes" else "Yes"

    def ratios(self, label: Label) -> list[tuple[GroupRate, float]]:
        return [
            (g, r)
            for g in self.groups
            if (r := g.yes_ratio if label == "Yes" else g.no_ratio) is not None
        ]

    def lowest(self, label: Label) -> float | None:
        return min((r for _, r in self.ratios(label)), default=None)

    @property
    def lowest_ratio(self) -> float | None:
        """The rule's: the lowest ratio of the favourable outcome's rates."""
        return self.lowest(self.favourable)

    def rule(self) -> str:
        return (
            f"The four-fifths rule compares the rates of the favourable outcome. Assumed here: "
            f'"{self.adverse}" is the adverse outcome (a "Yes" leads to '
            + ("a retention conversation or offer" if self.adverse == "No" else "being passed over")
            + f'), so the rule compares the shares labelled "{self.favourable}"; a group under '
            f"{FOUR_FIFTHS} of the highest group's is flagged. The ratios of the other outcome "
            f'("{self.adverse}") are shown too, for the opposite use.'
        )

    def summary(self) -> dict[str, Any]:
        return {
            "lowest_ratio": self.lowest_ratio,
            "threshold": FOUR_FIFTHS,
            "adverse_outcome": self.adverse,
            "compared_rate": self.favourable,
            "rule": self.rule(),
            "flagged": [g.name for g in self.groups if g.flagged],
            "lowest_ratio_of": {label: self.lowest(label) for label in ("Yes", "No")},
            "under_four_fifths_of": {
                label: [g.name for g, r in self.ratios(label) if r < FOUR_FIFTHS]
                for label in ("Yes", "No")
            },
            "min_group_size": self.min_group_size,
            "suppressed": [g.name for g in self.groups if g.suppressed],
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


def fairness(
    log: pd.DataFrame, *, adverse: Label = DEFAULT_ADVERSE, min_group_size: int = MIN_GROUP_SIZE
) -> FairnessResult:
    """`log` has Age, Gender, MaritalStatus, label (Yes/No) and probability."""
    if log.empty:
        return FairnessResult([], adverse, min_group_size)
    groups: list[GroupRate] = []
    sensitive = sensitive_features(log)
    favourable = "No" if adverse == "Yes" else "Yes"
    for attribute in ATTRIBUTES:
        # MetricFrame converts its input row by row, which dominated a large report's run time;
        # one row per (group, label) weighted by its count gives the same numbers at once
        # (docs/adr/0020-monitoring-group-counts.md).
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
        shown = frame[frame["count"] >= min_group_size]
        top_yes = float(shown["selection_rate"].max()) if len(shown) else 0.0
        top_no = float((1 - shown["selection_rate"]).max()) if len(shown) else 0.0
        for group, row in frame.iterrows():
            if row["count"] < min_group_size:
                groups.append(GroupRate(attribute, str(group), True, None, None, None, None,
                                        None, False))  # fmt: skip
                continue
            rate = float(row["selection_rate"])
            yes = rate / top_yes if top_yes > 0 else None
            no = (1 - rate) / top_no if top_no > 0 else None
            ratio = yes if favourable == "Yes" else no
            groups.append(GroupRate(attribute, str(group), False, int(row["count"]), rate,
                                    float(risk[group]), yes, no,
                                    ratio is not None and ratio < FOUR_FIFTHS))  # fmt: skip
    return FairnessResult(groups, adverse, min_group_size)


def _count(y_true: Any, y_pred: Any, sample_weight: Any) -> int:
    return int(np.sum(sample_weight))
