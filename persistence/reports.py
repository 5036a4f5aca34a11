"""Reading the log for the monitoring report, and keeping the report summaries."""

from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from persistence.models import Inference, MonitoringReport, Outcome

LOG_COLUMNS = ("id", "created_at", "subject", "route", "batch_id", "inputs", "probability", "label")


def read_log(
    *, engine: Engine, since: datetime, until: datetime, model_tag: str | None
) -> pd.DataFrame:
    """Logged predictions in [since, until), one row each, with the 30 inputs as columns."""
    query = select(*(getattr(Inference, c) for c in LOG_COLUMNS)).where(
        col(Inference.created_at) >= since, col(Inference.created_at) < until
    )
    if model_tag is not None:
        query = query.where(Inference.model_tag == model_tag)
    with Session(engine) as session:
        rows = session.exec(query).all()
    log = pd.DataFrame(rows, columns=list(LOG_COLUMNS))
    inputs = pd.DataFrame(list(log.pop("inputs")), index=log.index)
    return pd.concat([log, inputs], axis=1)


def read_outcomes(*, engine: Engine, inference_ids: list[Any]) -> pd.DataFrame:
    """The current outcome (highest revision) of each of these predictions that has one."""
    if not inference_ids:
        return pd.DataFrame(columns=["inference_id", "outcome", "observed_at"])
    latest = (
        select(Outcome.inference_id, func.max(Outcome.revision).label("revision"))
        .group_by(col(Outcome.inference_id))
        .subquery()
    )
    query = select(Outcome.inference_id, Outcome.outcome, Outcome.observed_at).join(
        latest,
        (col(Outcome.inference_id) == latest.c.inference_id)
        & (col(Outcome.revision) == latest.c.revision),
    )
    frames = []
    with Session(engine) as session:
        # Chunked: an IN list of 100,000 ids is past what SQLite binds in one statement.
        for start in range(0, len(inference_ids), 10_000):
            chunk = inference_ids[start : start + 10_000]
            rows = session.exec(query.where(col(Outcome.inference_id).in_(chunk))).all()
            frames.append(pd.DataFrame(rows, columns=["inference_id", "outcome", "observed_at"]))
    return pd.concat(frames, ignore_index=True)


def save_report(*, session: Session, model_tag: str, summary: dict[str, Any]) -> MonitoringReport:
    report = MonitoringReport(model_tag=model_tag, summary=summary)
    session.add(report)
    session.commit()
    session.refresh(report)
    return report


def latest_report(*, session: Session) -> MonitoringReport | None:
    query = select(MonitoringReport).order_by(col(MonitoringReport.created_at).desc()).limit(1)
    return session.exec(query).first()
