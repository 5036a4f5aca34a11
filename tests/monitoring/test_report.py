"""The whole report on a log: sections together, what-if rows left out, an empty window, and a
quiet day whose few rows no stored or written statistic gives away."""

import json
import uuid
from datetime import UTC, datetime

import pandas as pd

from monitoring.render import render
from monitoring.report import WHAT_IF_ROUTE, Reference, build, empty_log
from tests.monitoring.conftest import split

SINCE, UNTIL = datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)


def log_from(rows: pd.DataFrame, route: str = "/predict/attrition") -> pd.DataFrame:
    log = rows.copy()
    log["id"] = [uuid.uuid4() for _ in range(len(log))]
    log["created_at"] = pd.Timestamp("2027-01-05T10:00Z")
    log["subject"], log["route"], log["batch_id"] = "s", route, None
    log["label"] = (log["probability"] >= 0.4).map({True: "Yes", False: "No"})
    return log


def test_report_runs_every_section_and_leaves_what_if_rows_out(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = pd.concat([log_from(held), log_from(held.head(50).assign(Age=99), WHAT_IF_ROUTE)])
    outcomes = pd.DataFrame({"inference_id": log["id"][:100], "outcome": ["left", "stayed"] * 50})
    ref = Reference("attrition:test", reference, "abc", 0.4)
    report = build(log=log, outcomes=outcomes, reference=ref, since=SINCE, until=UNTIL)
    summary = report.summary()
    assert summary["rows"] == len(held) and summary["excluded_what_if_rows"] == 50
    assert summary["drift"]["drifted_features"] == []  # the Age=99 rows were what-if
    assert summary["performance"]["n_outcomes"] == 100
    assert summary["fairness"]["groups"]
    html = render(report, log[log["route"] != WHAT_IF_ROUTE])
    assert html.count("<img") >= 4 and "Realized performance" in html


def test_empty_window(scored: pd.DataFrame) -> None:
    reference, _ = split(scored, 0)
    ref = Reference("attrition:test", reference, None, 0.4)
    empty_outcomes = pd.DataFrame(columns=["inference_id", "outcome", "observed_at"])
    report = build(
        log=empty_log(), outcomes=empty_outcomes, reference=ref, since=SINCE, until=UNTIL
    )
    summary = report.summary()
    assert summary["rows"] == 0 and summary["drift"]["note"]
    assert summary["performance"]["n_outcomes"] == 0 and summary["fairness"]["lowest_ratio"] is None
    assert "Monitoring report" in render(report, empty_log())


def test_a_quiet_day_stores_and_writes_no_ones_values(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    rows = held.head(3).assign(MonthlyIncome=[12345, 23456, 34567], Age=[19, 58, 33])
    rows["probability"] = [0.987654, 0.123456, 0.555555]
    log = log_from(rows)
    outcomes = pd.DataFrame({"inference_id": log["id"], "outcome": ["left", "stayed", "left"]})
    ref = Reference("attrition:test", reference, "abc", 0.4)
    report = build(log=log, outcomes=outcomes, reference=ref, since=SINCE, until=UNTIL)
    stored = json.dumps(report.summary(), default=str)
    written = stored + render(report, log)
    for value in ("12345", "23456", "34567", "0.98765", "0.12345", "0.55555"):
        assert value not in written, value
    fairness = report.summary()["fairness"]
    assert all(g["suppressed"] and g["n"] is None for g in fairness["groups"])
    assert fairness["lowest_ratio"] is None and fairness["min_group_size"] == 10
    age = next(r for r in report.quality.ranges if r.feature == "Age")
    assert "suppressed" in age.current and age.share_outside is None
    assert report.performance.roc_auc is None and report.performance.groups == []
    assert "suppressed" in written
