"""Outcomes: what became of scored employees, checked against the inference log and stored."""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from persistence.models import Inference, Outcome
from persistence.retention import hold_erasures

# Clock skew tolerated between the HR system and this service for "not in the future".
CLOCK_SKEW = timedelta(seconds=60)
# HR systems often know only the day something happened: an observation dated up to a day
# before the prediction is taken as that day; earlier ones cannot be about this prediction.
BEFORE_PREDICTION = timedelta(days=1)
MAX_OUTCOMES = 1000


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference_id: uuid.UUID = Field(description="Id of a recorded prediction (its request_id).")
    outcome: Literal["left", "stayed"] = Field(description="What became of the employee.")
    observed_at: AwareDatetime = Field(
        description="When it was observed (ISO 8601 with offset); not in the future, not "
        "more than a day before the prediction."
    )
    correction: bool = Field(
        default=False,
        description="Replace an outcome already recorded for this prediction (kept as history).",
    )


class OutcomesIn(BaseModel):
    """Outcomes to record together: all or none."""

    model_config = ConfigDict(extra="forbid")
    outcomes: list[OutcomeIn] = Field(min_length=1, max_length=MAX_OUTCOMES)


@dataclass(frozen=True)
class Problem:
    status: int  # 404 unknown (or someone else's) id, 409 duplicate, 400 invalid
    loc: tuple[str | int, ...]
    msg: str
    type: str


class OutcomesRefused(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        # Most fundamental first: an invalid body, then unknown ids, then conflicts.
        self.status = min(problems, key=lambda p: (p.status != 400, p.status != 404)).status
        super().__init__("; ".join(p.msg for p in problems))


def record_outcomes(
    *,
    session: Session,
    outcomes: list[OutcomeIn],
    subject: str,
    is_admin: bool,
    now: datetime,
) -> list[Outcome]:
    """Check every outcome, then store all of them in one transaction, or raise OutcomesRefused.

    A caller may only attach outcomes to their own predictions unless admin; someone else's id
    is reported exactly like an unknown one, so ids of other callers cannot be probed.
    """
    # An erasure of these predictions runs wholly before or after: none is left an outcome.
    hold_erasures(session.connection())
    ids = [o.inference_id for o in outcomes]
    query = select(Inference.id, Inference.subject, Inference.created_at).where(
        col(Inference.id).in_(ids)
    )
    found: dict[uuid.UUID, Any] = {row[0]: row for row in session.exec(query)}
    latest = dict(
        session.exec(  # type: ignore[call-overload]
            select(Outcome.inference_id, func.max(Outcome.revision))
            .where(col(Outcome.inference_id).in_(ids))
            .group_by(col(Outcome.inference_id))
        ).all()
    )
    problems: list[Problem] = []
    seen: set[uuid.UUID] = set()
    rows: list[Outcome] = []
    for i, item in enumerate(outcomes):
        loc: tuple[str | int, ...] = ("outcomes", i)
        inference = found.get(item.inference_id)
        if item.inference_id in seen:
            problems.append(
                Problem(400, (*loc, "inference_id"), "listed twice in this request", "duplicate")
            )
            continue
        seen.add(item.inference_id)
        if inference is None or (not is_admin and inference.subject != subject):
            problems.append(Problem(404, (*loc, "inference_id"), "no such inference", "not_found"))
            continue
        if item.observed_at > now + CLOCK_SKEW:
            problems.append(Problem(400, (*loc, "observed_at"), "is in the future", "future"))
        elif item.observed_at < inference.created_at - BEFORE_PREDICTION:
            msg = f"is more than a day before the prediction ({inference.created_at.isoformat()})"
            problems.append(Problem(400, (*loc, "observed_at"), msg, "before_prediction"))
        previous = latest.get(item.inference_id)
        if previous is not None and not item.correction:
            msg = "an outcome is already recorded; send correction: true to replace it"
            problems.append(Problem(409, (*loc, "inference_id"), msg, "duplicate"))
        elif previous is None and item.correction:
            problems.append(
                Problem(409, (*loc, "correction"), "no outcome to correct", "nothing_to_correct")
            )
        rows.append(
            Outcome(
                inference_id=item.inference_id,
                revision=0 if previous is None else previous + 1,
                outcome=item.outcome,
                observed_at=item.observed_at,
                recorded_at=now,
                recorded_by=subject,
            )
        )
    if problems:
        session.rollback()  # ends the transaction and its hold on erasures
        raise OutcomesRefused(problems)
    session.add_all(rows)
    try:
        session.commit()
    except IntegrityError as exc:  # a concurrent request recorded the same revision first
        session.rollback()
        raise OutcomesRefused(
            [
                Problem(
                    409,
                    ("outcomes",),
                    "recorded concurrently by another request; retry",
                    "conflict",
                )
            ]
        ) from exc
    for row in rows:
        session.refresh(row)
    return rows
