"""Outcomes: known ids only, own predictions only (unless admin), not in the future, not before
the prediction, no duplicate without a correction; corrections keep the history."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import Session

from persistence.db import make_engine
from persistence.models import Inference
from persistence.outcomes import OutcomeIn, OutcomesRefused, record_outcomes
from persistence.reports import read_outcomes as read_window_outcomes
from tests.persistence.conftest import partitions_for

NOW = datetime(2027, 3, 1, tzinfo=UTC)
PREDICTED = NOW - timedelta(days=90)


def read_outcomes(*, engine, inference_ids):  # type: ignore[no-untyped-def]
    """Current outcomes of these predictions (all made at PREDICTED)."""
    frame = read_window_outcomes(
        engine=engine,
        since=PREDICTED,
        until=PREDICTED + timedelta(seconds=1),
        model_tag="attrition:test",
    )
    return frame[frame["inference_id"].isin(inference_ids)]


@pytest.fixture()
def engine(url: str):  # type: ignore[no-untyped-def]
    partitions_for(url, PREDICTED)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def inference(session: Session, subject: str) -> uuid.UUID:
    row = Inference(
        id=uuid.uuid4(), created_at=PREDICTED, subject=subject, route="/predict/attrition",
        model_tag="attrition:test", inputs={"Age": 41}, probability=0.7, label="Yes",
        threshold=0.36, latency_ms=1.0,
    )  # fmt: skip
    session.add(row)
    session.commit()
    return row.id


def item(
    inference_id: uuid.UUID, outcome: str = "left", days_after: int = 30, **kw: object
) -> OutcomeIn:
    return OutcomeIn.model_validate(
        {"inference_id": inference_id, "outcome": outcome,
         "observed_at": PREDICTED + timedelta(days=days_after), **kw}
    )  # fmt: skip


def post(session: Session, items: list[OutcomeIn], subject: str = "hr", admin: bool = False):  # type: ignore[no-untyped-def]
    return record_outcomes(
        session=session, outcomes=items, subject=subject, is_admin=admin, now=NOW
    )


def refused(session: Session, items: list[OutcomeIn], **kw: object) -> OutcomesRefused:
    with pytest.raises(OutcomesRefused) as info:
        post(session, items, **kw)  # type: ignore[arg-type]
    return info.value


def test_own_outcome_is_recorded_and_read_back(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        mine = inference(session, "hr")
        [row] = post(session, [item(mine)])
        assert row.revision == 0 and row.recorded_by == "hr" and row.observed_at.tzinfo
    frame = read_outcomes(engine=engine, inference_ids=[mine])
    assert list(frame["outcome"]) == ["left"]


def test_someone_elses_or_unknown_id_is_404_alike_and_nothing_is_written(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        mine, theirs = inference(session, "hr"), inference(session, "other-hr")
        err = refused(session, [item(mine), item(theirs), item(uuid.uuid4())])
        assert err.status == 404
        assert [p.loc for p in err.problems] == [
            ("outcomes", 1, "inference_id"),
            ("outcomes", 2, "inference_id"),
        ]
        assert {p.msg for p in err.problems} == {"no such inference"}
    assert read_outcomes(engine=engine, inference_ids=[mine]).empty  # all or nothing


def test_admin_may_attach_to_anyones(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        theirs = inference(session, "other-hr")
        [row] = post(session, [item(theirs)], subject="root", admin=True)
        assert row.recorded_by == "root"


def test_future_and_before_prediction_are_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        a, b = inference(session, "hr"), inference(session, "hr")
        err = refused(session, [item(a, days_after=91), item(b, days_after=-2)])
        assert err.status == 400
        assert [(p.loc, p.type) for p in err.problems] == [
            (("outcomes", 0, "observed_at"), "future"),
            (("outcomes", 1, "observed_at"), "before_prediction"),
        ]
        # The same day as the prediction, written without the time of day: accepted.
        day = PREDICTED.replace(hour=0, minute=0, second=0, microsecond=0)
        assert post(session, [item(a, observed_at=day.isoformat())])


def test_duplicate_needs_a_correction_which_adds_a_revision(engine) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session:
        mine = inference(session, "hr")
        post(session, [item(mine, "stayed")])
        err = refused(session, [item(mine, "left")])
        assert err.status == 409 and err.problems[0].loc == ("outcomes", 0, "inference_id")
        [fixed] = post(session, [item(mine, "left", correction=True)])
        assert fixed.revision == 1
        assert refused(session, [item(inference(session, "hr"), correction=True)]).status == 409
        assert refused(session, [item(mine), item(mine, correction=True)]).status == 400
    assert list(read_outcomes(engine=engine, inference_ids=[mine])["outcome"]) == ["left"]
