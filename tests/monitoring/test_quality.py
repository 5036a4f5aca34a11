"""Data quality: values outside training, rows per day, batch share; no value of fewer than the
minimum group size of rows is shown."""

import pandas as pd

from monitoring.quality import quality
from tests.monitoring.conftest import split
from training.schema import CATEGORICAL, NUMERIC


def test_ranges_volume_and_mix(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = held.head(4).copy()
    log["MonthlyIncome"] = [1, 2, 3_000_000, 5000]  # two below, one above training
    log["created_at"] = pd.to_datetime(
        ["2026-11-01T10:00Z", "2026-11-01T23:59Z", "2026-11-02T00:00Z", "2026-11-03T08:00Z"]
    )
    log["batch_id"] = [None, "b", "b", None]
    log["route"] = [
        "/predict/attrition",
        "/predict/attrition/batch",
        "/predict/attrition/batch",
        "/predict/attrition",
    ]
    result = quality(reference, log, numeric=NUMERIC, categorical=CATEGORICAL, min_group_size=1)
    income = next(r for r in result.ranges if r.feature == "MonthlyIncome")
    assert income.share_outside == 0.75
    assert result.features_outside == ["MonthlyIncome"]
    assert result.rows_per_day == {"2026-11-01": 2, "2026-11-02": 1, "2026-11-03": 1}
    assert result.batch_share == 0.5 and result.summary()["single_share"] == 0.5
    assert result.routes == {"/predict/attrition": 2, "/predict/attrition/batch": 2}


def test_a_quiet_window_shows_no_ones_values(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = held.head(4).copy()
    log["MonthlyIncome"] = [1, 2, 3_000_000, 5000]
    log["Department"] = "Astronomy"  # a category training never had
    log["created_at"] = pd.Timestamp("2026-11-01T10:00Z")
    log["batch_id"], log["route"] = None, "/predict/attrition"
    result = quality(reference, log, numeric=NUMERIC, categorical=CATEGORICAL)
    income = next(r for r in result.ranges if r.feature == "MonthlyIncome")
    department = next(r for r in result.ranges if r.feature == "Department")
    assert income.share_outside is None and "suppressed" in income.current
    assert department.share_outside is None and "Astronomy" not in department.current
    assert result.features_outside == []
    text = str(result.summary())
    assert "3000000" not in text and "Astronomy" not in text


def test_ranges_are_bottom_and_top_coded_and_rare_new_values_unnamed(scored: pd.DataFrame) -> None:
    reference, held = split(scored, 0)
    log = held.head(25).copy()
    log["MonthlyIncome"] = range(1, 26)
    log["Department"] = ["Astronomy"] * 12 + ["Botany"] * 3 + ["Sales"] * 10
    log["created_at"] = pd.Timestamp("2026-11-01T10:00Z")
    log["batch_id"], log["route"] = None, "/predict/attrition"
    result = quality(reference, log, numeric=NUMERIC, categorical=CATEGORICAL)
    income = next(r for r in result.ranges if r.feature == "MonthlyIncome")
    department = next(r for r in result.ranges if r.feature == "Department")
    assert income.current == "[10, 16]"  # the 10th lowest and 10th highest of 1..25
    assert income.share_outside == 1.0
    assert department.current == "new: Astronomy; 3 rows with new values fewer than 10 rows have"
    assert department.share_outside == 15 / 25
