"""Run every section on a window of the log and put the results together."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from monitoring.comparison import ComparisonResult, comparison
from monitoring.drift import DriftResult, drift
from monitoring.fairness import DEFAULT_ADVERSE, FairnessResult, Label, fairness
from monitoring.performance import PerformanceResult, performance
from monitoring.privacy import MIN_GROUP_SIZE
from monitoring.quality import QualityResult, quality
from training.schema import CATEGORICAL, FEATURES, NUMERIC

# Hypothetical employees, not people scored: kept out of every section (counted in the summary).
WHAT_IF_ROUTE = "/predict/attrition/what-if"


@dataclass(frozen=True)
class Reference:
    """What the model was trained on: the training split's inputs and the model's probability."""

    model_tag: str
    frame: pd.DataFrame
    sha256: str | None
    threshold: float


@dataclass
class Report:
    model_tag: str
    since: datetime
    until: datetime
    reference: Reference
    excluded_what_if: int
    drift: DriftResult
    quality: QualityResult
    fairness: FairnessResult
    performance: PerformanceResult
    comparison: ComparisonResult
    seconds: float = 0.0
    min_group_size: int = MIN_GROUP_SIZE

    def summary(self) -> dict[str, Any]:
        return {
            "model_tag": self.model_tag,
            "window": {"since": self.since.isoformat(), "until": self.until.isoformat()},
            "generated_at": datetime.now(UTC).isoformat(),
            "rows": self.quality.rows,
            "excluded_what_if_rows": self.excluded_what_if,
            "reference": {"rows": len(self.reference.frame), "sha256": self.reference.sha256},
            "min_group_size": self.min_group_size,
            "drift": self.drift.summary(),
            "quality": self.quality.summary(),
            "fairness": self.fairness.summary(),
            "performance": self.performance.summary(),
            "comparison": self.comparison.summary(),
            "seconds": round(self.seconds, 2),
        }


def load_reference(model_tag: str) -> Reference:
    """The reference sample stored with the model at training time (nothing is downloaded)."""
    import bentoml

    model = bentoml.models.get(model_tag)
    frame = model.custom_objects.get("reference")
    if frame is None:
        raise SystemExit(f"{model.tag} has no reference sample; retrain it with python -m training")
    meta: dict[str, Any] = dict(model.info.metadata)
    return Reference(
        str(model.tag), frame, meta.get("reference", {}).get("sha256"), float(meta["threshold"])
    )


def build(
    *,
    log: pd.DataFrame,
    outcomes: pd.DataFrame,
    reference: Reference,
    since: datetime,
    until: datetime,
    min_group_size: int = MIN_GROUP_SIZE,
    adverse: Label = DEFAULT_ADVERSE,
) -> Report:
    """All sections on `log` (read_log's frame); pure apart from the clock. No statistic is
    over fewer than min_group_size rows (monitoring/privacy.py). The comparison reads every row
    with both models' scores; the other sections, the rows the report's model answered."""
    started = time.perf_counter()
    what_if = log["route"] == WHAT_IF_ROUTE
    shadowed = log[~what_if]
    scored = (
        shadowed[shadowed["model_tag"] == reference.model_tag]
        if "model_tag" in shadowed
        else shadowed
    )
    k = min_group_size
    report = Report(
        model_tag=reference.model_tag,
        since=since,
        until=until,
        reference=reference,
        excluded_what_if=int(what_if.sum()),
        drift=drift(
            reference.frame, scored, numeric=NUMERIC, categorical=CATEGORICAL, min_group_size=k
        ),
        quality=quality(
            reference.frame, scored, numeric=NUMERIC, categorical=CATEGORICAL, min_group_size=k
        ),
        fairness=fairness(scored, adverse=adverse, min_group_size=k),
        performance=performance(scored, outcomes, min_group_size=k),
        comparison=comparison(shadowed, outcomes, served_tag=reference.model_tag, min_group_size=k),
        min_group_size=k,
    )
    report.seconds = time.perf_counter() - started
    return report


def empty_log() -> pd.DataFrame:
    columns = ["id", "created_at", "subject", "route", "batch_id", "model_tag", "probability",
               "label", "challenger_tag", "challenger_probability", "challenger_label"]  # fmt: skip
    return pd.DataFrame(columns=[*columns, *FEATURES])
