"""A labelled training set from the inference log: the logged inputs of real predictions, each
labelled by the outcome an HR system recorded for it (persistence/outcomes.py).

Only the 30 logged inputs become features. The outcome gives the label and nothing else; the
logged probability, label, route, caller and times never reach the features.
"""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
from pydantic import ValidationError
from sqlalchemy import Engine, Text, cast, func
from sqlmodel import Session, col, select

from persistence.models import Inference, Outcome
from training.data import DataError, validate
from training.schema import FEATURES, TARGET, Employee

# Hypothetical employees, not people scored: never training rows (as in the monitoring report).
WHAT_IF_ROUTE = "/predict/attrition/what-if"
OUTCOME_LABELS = {"left": "Yes", "stayed": "No"}
# Below this many labelled rows a 5-fold CV has fewer than about ten leavers per validation fold
# (at the reference data's 16 % rate), and its spread says little.
DEFAULT_MIN_ROWS = 300
DEFAULT_HORIZON_DAYS = 365
LISTED = 10

LABEL_RULE = (
    "A prediction is labelled by its latest outcome revision when that outcome was observed no "
    "later than the horizon after the prediction: left = Yes, stayed = No. Predictions without "
    "an outcome, with one observed after the horizon, or made by the what-if route are left out."
)
DEDUP_RULE = (
    "One row per employee: of the labelled predictions with the same employee_ref the latest is "
    "kept; predictions without employee_ref count as separate employees unless their 30 inputs "
    "are identical (then the latest is kept)."
)


@dataclass(frozen=True)
class LogSet:
    """The labelled rows (features in schema order and Attrition) and how they were chosen."""

    frame: pd.DataFrame
    provenance: dict[str, Any]
    invalid: list[str]  # ids of labelled predictions whose inputs no longer pass the contract


def labelled_rows(
    *, engine: Engine, since: datetime, until: datetime, horizon: timedelta
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Predictions made in [since, until) with their latest outcome, and the counts of those
    left out on the way: one query joining each prediction to its highest outcome revision."""
    latest = (
        select(Outcome.inference_id, func.max(Outcome.revision).label("revision"))
        .group_by(col(Outcome.inference_id))
        .subquery()
    )
    window = (col(Inference.created_at) >= since, col(Inference.created_at) < until)
    query = (
        select(  # type: ignore[call-overload]
            Inference.id, Inference.created_at, Inference.route, Inference.employee_ref,
            Outcome.outcome, Outcome.observed_at, cast(Inference.inputs, Text),
        )
        .join(latest, col(Outcome.inference_id) == latest.c.inference_id)
        .join(Inference, col(Inference.id) == col(Outcome.inference_id))
        .where(col(Outcome.revision) == latest.c.revision, *window)
    )  # fmt: skip
    with Session(engine) as session:
        in_window = session.exec(select(func.count()).select_from(Inference).where(*window)).one()
        rows = session.exec(query).all()
    columns = ["id", "created_at", "route", "employee_ref", "outcome", "observed_at", "inputs"]
    found = pd.DataFrame(rows, columns=columns)
    what_if = found["route"] == WHAT_IF_ROUTE
    found = found[~what_if]
    # Times compared as UTC instants: SQLite hands back what was stored, PostgreSQL the session zone.
    created = pd.to_datetime(found["created_at"], utc=True)
    within = pd.to_datetime(found["observed_at"], utc=True) <= created + horizon
    counts = {
        "predictions_in_window": int(in_window),
        "with_an_outcome": int(len(found)),
        "what_if_left_out": int(what_if.sum()),
        "outcome_after_horizon": int((~within).sum()),
    }
    return found[within].assign(created_at=created[within]), counts


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in counts.items())


def one_per_employee(rows: pd.DataFrame) -> pd.DataFrame:
    """DEDUP_RULE: the latest labelled prediction per employee_ref, or per identical inputs
    where there is no employee_ref."""
    rows = rows.sort_values(["created_at", "id"], kind="stable")
    key = rows["employee_ref"].where(rows["employee_ref"].notna(), "inputs:" + rows["inputs"])
    return rows[~key.duplicated(keep="last")]


def from_log(
    *,
    engine: Engine,
    since: datetime,
    until: datetime,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> LogSet:
    """The labelled set of the window, or DataError saying what is missing."""
    if since >= until:
        raise DataError([f"since ({since.isoformat()}) must be before until ({until.isoformat()})"])
    horizon = timedelta(days=horizon_days)
    rows, counts = labelled_rows(engine=engine, since=since, until=until, horizon=horizon)
    # Re-parsed as text so that JSON's key order (which differs between PostgreSQL and SQLite)
    # does not make one employee's identical inputs look different.
    rows = rows.assign(inputs=[json.dumps(json.loads(i), sort_keys=True) for i in rows["inputs"]])
    kept = one_per_employee(rows)
    counts["duplicates_left_out"] = len(rows) - len(kept)
    records, invalid = [], []
    for inference_id, inputs, outcome in zip(
        kept["id"], kept["inputs"], kept["outcome"], strict=True
    ):
        try:
            employee = Employee.model_validate_json(inputs)
        except ValidationError:
            invalid.append(str(inference_id))
            continue
        records.append({**employee.model_dump(), TARGET: OUTCOME_LABELS[outcome]})
    counts["invalid_inputs_left_out"] = len(invalid)
    counts["labelled"] = len(records)
    if len(records) < min_rows:
        raise DataError(
            [f"{len(records)} labelled predictions in [{since.isoformat()}, {until.isoformat()}) "
             f"with outcomes within {horizon_days} days; at least {min_rows} needed "
             f"({counts_text(counts)})"]
        )  # fmt: skip
    frame = validate(pd.DataFrame.from_records(records, columns=[*FEATURES, TARGET]))
    provenance = {
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "horizon_days": horizon_days,
        "min_rows": min_rows,
        "rows_from_log": len(frame),
        "rows_from_original": 0,
        "original_source": None,
        "database": engine.dialect.name,
        "label_rule": LABEL_RULE,
        "dedup_rule": DEDUP_RULE,
        "counts": counts,
        "invalid_inference_ids": invalid[:LISTED],
    }
    return LogSet(frame, provenance, invalid)


def with_original(log_set: LogSet, original: pd.DataFrame, source: str) -> LogSet:
    """The log's rows followed by the original training data's (both validated)."""
    frame = pd.concat([log_set.frame, original], ignore_index=True)
    provenance = {**log_set.provenance, "rows_from_original": len(original),
                  "original_source": source}  # fmt: skip
    return LogSet(frame, provenance, log_set.invalid)
