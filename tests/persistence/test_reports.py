"""Reading a window of the log for the report, and keeping report summaries."""

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
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


def test_the_comparison_of_a_logged_challenger_equals_an_independent_computation(
    url: str,
) -> None:
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from monitoring.comparison import comparison

    served, challenger = "a:1", "a-challenger:2"
    rng = np.random.default_rng(7)
    n = 400
    served_p = rng.uniform(0.01, 0.99, n)
    challenger_p = np.clip(served_p + rng.normal(0.03, 0.1, n), 0, 1)
    left = rng.uniform(size=n) < served_p
    genders = rng.choice(["Female", "Male"], n)
    ages = rng.integers(18, 60, n)
    ids = [uuid.uuid4() for _ in range(n)]
    partitions_for(url, T0)
    engine = make_engine(url)
    with Session(engine) as session:
        for i in range(n):
            s_label = "Yes" if served_p[i] >= 0.5 else "No"
            c_label = "Yes" if challenger_p[i] >= 0.4 else "No"
            # After a promotion (the last 100 rows) the challenger answered, the served one shadowed.
            promoted = i >= n - 100
            session.add(Inference(
                id=ids[i], created_at=T0 + timedelta(seconds=i), subject="s",
                route="/predict/attrition", model_tag=challenger if promoted else served,
                inputs={"Age": int(ages[i]), "Gender": str(genders[i]), "MaritalStatus": "Single"},
                probability=float(challenger_p[i] if promoted else served_p[i]),
                label=c_label if promoted else s_label, threshold=0.5, latency_ms=1.0,
                challenger_tag=served if promoted else challenger,
                challenger_probability=float(served_p[i] if promoted else challenger_p[i]),
                challenger_label=s_label if promoted else c_label,
            ))  # fmt: skip
        # Neither model's, and one of the served model's before a challenger was configured.
        for tag, shadow in (("b:3", challenger), (served, None)):
            session.add(Inference(
                id=uuid.uuid4(), created_at=T0, subject="s", route="/predict/attrition",
                model_tag=tag, inputs={"Age": 30, "Gender": "Male", "MaritalStatus": "Single"},
                probability=0.9, label="Yes", threshold=0.5, latency_ms=1.0, challenger_tag=shadow,
                challenger_probability=None if shadow is None else 0.1,
                challenger_label=None if shadow is None else "No",
            ))  # fmt: skip
        session.commit()
    since, until = T0 - timedelta(hours=1), T0 + timedelta(hours=1)
    log = read_log(engine=engine, since=since, until=until, model_tag=served)
    with_outcome = list(range(0, n, 2))  # every other prediction has an outcome
    outcomes = pd.DataFrame({"inference_id": [ids[i] for i in with_outcome],
                             "outcome": ["left" if left[i] else "stayed" for i in with_outcome]})  # fmt: skip
    engine.dispose()
    assert len(log) == n + 1
    got = comparison(log, outcomes, served_tag=served, resamples=200, seed=3)

    s_yes, c_yes = served_p >= 0.5, challenger_p >= 0.4
    assert (got.challenger_tag, got.n_pairs) == (challenger, n)
    assert got.agreement == pytest.approx(np.mean(s_yes == c_yes))
    assert got.only_challenger_yes == int(np.sum(c_yes & ~s_yes))
    shift = challenger_p - served_p
    assert got.shift_mean == pytest.approx(shift.mean())
    assert got.shift_quantiles is not None
    assert got.shift_quantiles["p50"] == pytest.approx(np.quantile(shift, 0.5))
    by_gender = {g.group: g for g in got.groups if g.attribute == "Gender"}
    for gender in ("Female", "Male"):
        rows = genders == gender
        assert by_gender[gender].n == rows.sum()
        assert by_gender[gender].served_rate == pytest.approx(s_yes[rows].mean())
        assert by_gender[gender].challenger_rate == pytest.approx(c_yes[rows].mean())

    order = sorted(with_outcome, key=lambda i: ids[i])  # the documented order: by id
    y, sp, cp = left[order].astype(int), served_p[order], challenger_p[order]
    metrics = {"roc_auc": roc_auc_score, "pr_auc": average_precision_score,
               "brier": brier_score_loss}  # fmt: skip
    draws = np.random.default_rng(3)
    differences: dict[str, list[float]] = {name: [] for name in metrics}
    for _ in range(200):
        idx = draws.integers(0, len(y), size=len(y))
        if len(set(y[idx])) == 2:
            for name, metric in metrics.items():
                differences[name].append(metric(y[idx], cp[idx]) - metric(y[idx], sp[idx]))
    assert got.n_outcomes == len(y) and got.n_left == y.sum()
    assert got.resamples_used == len(differences["brier"])
    for m in got.metrics:
        metric = metrics[m.metric]
        assert (m.served, m.challenger) == pytest.approx((metric(y, sp), metric(y, cp)))
        low, high = np.percentile(differences[m.metric], [2.5, 97.5])
        assert (m.ci_low, m.ci_high) == pytest.approx((low, high))
