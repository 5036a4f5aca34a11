"""The challenger comparison in the report: no challenger, too few rows, and the full section."""

import json
import uuid
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from monitoring.comparison import NO_SCORES
from monitoring.render import render
from monitoring.report import Reference, build
from tests.monitoring.conftest import split

SINCE, UNTIL = datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)
SERVED, CHALLENGER = "attrition:test", "attrition-challenger:test"


def shadowed(rows: pd.DataFrame, shift: float | None) -> pd.DataFrame:
    log = rows.copy()
    log["id"] = [uuid.uuid4() for _ in range(len(log))]
    log["created_at"] = pd.Timestamp("2027-01-05T10:00Z")
    log["subject"], log["route"], log["batch_id"] = "s", "/predict/attrition", None
    log["model_tag"] = SERVED
    log["label"] = np.where(log["probability"] >= 0.4, "Yes", "No")
    if shift is None:
        log["challenger_tag"] = log["challenger_probability"] = log["challenger_label"] = None
    else:
        log["challenger_tag"] = CHALLENGER
        log["challenger_probability"] = (log["probability"] + shift).clip(0, 1)
        log["challenger_label"] = np.where(log["challenger_probability"] >= 0.5, "Yes", "No")
    return log


def test_without_challenger_scores_the_section_says_so(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = shadowed(held, None)
    report = build(log=log, outcomes=pd.DataFrame(columns=["inference_id", "outcome"]),
                   reference=Reference(SERVED, reference, None, 0.4), since=SINCE, until=UNTIL)  # fmt: skip
    assert report.summary()["comparison"]["note"] == NO_SCORES
    assert report.summary()["rows"] == len(held)
    assert NO_SCORES in render(report, log)


def test_the_section_compares_both_models_and_shows_intervals(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = shadowed(held, 0.05)
    outcomes = pd.DataFrame({"inference_id": log["id"][:200], "outcome": ["left", "stayed"] * 100})
    report = build(log=log, outcomes=outcomes, reference=Reference(SERVED, reference, None, 0.4),
                   since=SINCE, until=UNTIL)  # fmt: skip
    c = report.comparison
    assert c.challenger_tag == CHALLENGER and c.n_pairs == len(held)
    assert c.shift_mean is not None and 0 < c.shift_mean <= 0.05 + 1e-9
    assert [m.metric for m in c.metrics] == ["roc_auc", "pr_auc", "brier"]
    assert all(m.ci_low <= m.ci_high for m in c.metrics) and c.resamples_used > 900
    json.dumps(report.summary())  # storable as it is
    html = render(report, log)
    assert "Challenger comparison" in html and "95% interval" in html


def test_a_few_shadowed_rows_give_no_values_away(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = shadowed(held.head(4), 0.012345)
    outcomes = pd.DataFrame({"inference_id": log["id"], "outcome": ["left", "stayed"] * 2})
    report = build(log=log, outcomes=outcomes, reference=Reference(SERVED, reference, None, 0.4),
                   since=SINCE, until=UNTIL)  # fmt: skip
    c = report.comparison
    assert c.n_pairs == 4 and c.agreement is None and c.shift_mean is None and c.groups == []
    written = json.dumps(report.summary(), default=str) + render(report, log)
    for p in log["challenger_probability"]:
        assert f"{p:.5f}" not in written
    assert "suppressed" in c.note  # type: ignore[operator]
