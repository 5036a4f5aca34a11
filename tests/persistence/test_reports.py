"""Reading a window of the log for the report, and keeping report summaries."""

import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
from sqlmodel import Session

from api.metrics import monitoring_gauges
from monitoring.drift import MIN_ROWS, drift
from persistence.db import make_engine
from persistence.models import Inference
from persistence.reports import latest_report, read_log, save_report
from tests.persistence.conftest import partitions_for
from training.schema import CATEGORICAL, NUMERIC

T0 = datetime(2027, 1, 10, tzinfo=UTC)


def test_read_log_takes_the_window_and_the_model_and_spreads_the_inputs(url: str) -> None:
    partitions_for(url, T0 - timedelta(hours=1), T0 + timedelta(hours=24))
    engine = make_engine(url)
    with Session(engine) as session:
        for i, (tag, hours) in enumerate(
            [("a:1", -1), ("a:1", 0), ("a:1", 5), ("b:2", 1), ("a:1", 24)]
        ):
            session.add(Inference(
                id=uuid.uuid4(), created_at=T0 + timedelta(hours=hours), subject="s",
                route="/predict/attrition", model_tag=tag, inputs={"Age": 30 + i, "Gender": "Male"},
                probability=0.1 * i, label="No", threshold=0.4, latency_ms=1.0,
            ))  # fmt: skip
        session.commit()
    log = read_log(engine=engine, since=T0, until=T0 + timedelta(hours=24), model_tag="a:1")
    assert sorted(log["Age"]) == [31, 32] and set(log["Gender"]) == {"Male"}
    assert {"id", "created_at", "route", "batch_id", "probability", "label"} <= set(log.columns)
    empty = read_log(engine=engine, since=T0, until=T0, model_tag=None)
    assert empty.empty
    engine.dispose()


def test_the_latest_summary_is_served_and_becomes_gauges(url: str) -> None:
    engine = make_engine(url)
    with Session(engine) as session:
        assert latest_report(session=session) is None
        save_report(session=session, model_tag="a:1", summary={"drift": {"share_drifted": 0.5}})
        last = save_report(session=session, model_tag="a:1",
                           summary={"drift": {"share_drifted": 0.1}, "fairness": {"lowest_ratio": 0.75}})  # fmt: skip
        got = latest_report(session=session)
        assert got is not None and got.id == last.id
    engine.dispose()
    text = monitoring_gauges((got.created_at, got.summary), got.created_at + timedelta(seconds=90))
    assert "attrition_monitoring_drift_share 0.1\n" in text
    assert "attrition_monitoring_min_selection_ratio 0.75\n" in text
    assert "attrition_monitoring_report_age_seconds 90.0\n" in text
    assert monitoring_gauges(None, T0) == ""


def test_a_report_that_ran_no_drift_test_has_no_drift_gauge() -> None:
    """Fewer rows than the drift test needs: no share at all, rather than 0.0 ("no drift")."""
    few = drift(pd.DataFrame(), pd.DataFrame(index=range(MIN_ROWS - 1)),
                numeric=NUMERIC, categorical=CATEGORICAL)  # fmt: skip
    summary = {"drift": few.summary(), "fairness": {"lowest_ratio": 0.9}}
    text = monitoring_gauges((T0, summary), T0 + timedelta(seconds=5))
    assert "attrition_monitoring_drift_share" not in text
    assert "attrition_monitoring_min_selection_ratio 0.9\n" in text
    assert "attrition_monitoring_report_age_seconds 5.0\n" in text
