"""Data quality: values outside training, rows per day, batch share."""

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
    result = quality(reference, log, numeric=NUMERIC, categorical=CATEGORICAL)
    income = next(r for r in result.ranges if r.feature == "MonthlyIncome")
    assert income.share_outside == 0.75
    assert result.features_outside == ["MonthlyIncome"]
    assert result.rows_per_day == {"2026-11-01": 2, "2026-11-02": 1, "2026-11-03": 1}
    assert result.batch_share == 0.5 and result.summary()["single_share"] == 0.5
    assert result.routes == {"/predict/attrition": 2, "/predict/attrition/batch": 2}
