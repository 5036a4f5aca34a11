"""Reading the log for the monitoring report, and keeping the report summaries."""

import json
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Text, cast, func, or_
from sqlmodel import Session, col, select

from persistence.models import Inference, MonitoringReport, Outcome

LOG_COLUMNS = ("id", "created_at", "subject", "route", "batch_id", "model_tag", "inputs",
               "probability", "label", "challenger_tag", "challenger_probability",
               "challenger_label")  # fmt: skip


def of_model(model_tag: str) -> Any:
    """The rows `model_tag` answered, and those where it was scored as the challenger."""
    return or_(col(Inference.model_tag) == model_tag, col(Inference.challenger_tag) == model_tag)


def read_log(
    *, engine: Engine, since: datetime, until: datetime, model_tag: str | None
) -> pd.DataFrame:
    """Logged predictions in [since, until) that `model_tag` answered or shadowed, one row each,
    with the 30 inputs as columns."""
    columns = [getattr(Inference, c) for c in LOG_COLUMNS if c != "inputs"]
    # The inputs as JSON text, parsed in one call rather than value by value
    # (docs/adr/0020-monitoring-group-counts.md).
    query = select(*columns, cast(Inference.inputs, Text)).where(  # type: ignore[call-overload]
        col(Inference.created_at) >= since, col(Inference.created_at) < until
    )
    if model_tag is not None:
        query = query.where(of_model(model_tag))
    with Session(engine) as session:
        rows = session.exec(query).all()
    names = [c for c in LOG_COLUMNS if c != "inputs"]
    log = pd.DataFrame([r[:-1] for r in rows], columns=names)
    inputs = pd.DataFrame.from_records(json.loads("[" + ",".join(r[-1] for r in rows) + "]"))
    return pd.concat([log, inputs.set_axis(log.index)], axis=1)


def read_outcomes(
    *, engine: Engine, since: datetime, until: datetime, model_tag: str | None
) -> pd.DataFrame:
    """The current outcome (highest revision) of each prediction of the same window that has one.

    One join in the database, not an IN list of the window's ids
    (docs/adr/0020-monitoring-group-counts.md).
    """
    latest = (
        select(Outcome.inference_id, func.max(Outcome.revision).label("revision"))
        .group_by(col(Outcome.inference_id))
        .subquery()
    )
    query = (
        select(Outcome.inference_id, Outcome.outcome, Outcome.observed_at)
        .join(
            latest,
            (col(Outcome.inference_id) == latest.c.inference_id)
            & (col(Outcome.revision) == latest.c.revision),
        )
        .join(Inference, col(Inference.id) == col(Outcome.inference_id))
        .where(col(Inference.created_at) >= since, col(Inference.created_at) < until)
    )
    if model_tag is not None:
        query = query.where(of_model(model_tag))
    with Session(engine) as session:
        rows = session.exec(query).all()
    return pd.DataFrame(rows, columns=["inference_id", "outcome", "observed_at"])


def save_report(*, session: Session, model_tag: str, summary: dict[str, Any]) -> MonitoringReport:
    report = MonitoringReport(model_tag=model_tag, summary=summary)
    session.add(report)
    session.commit()
    session.refresh(report)
    return report


def latest_report(*, session: Session) -> MonitoringReport | None:
    query = select(MonitoringReport).order_by(col(MonitoringReport.created_at).desc()).limit(1)
    return session.exec(query).first()
