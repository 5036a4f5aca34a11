"""Fairness numbers on a hand-built log equal the hand-computed ones."""

import pandas as pd
import pytest

from monitoring.fairness import fairness

# Gender, Age, MaritalStatus, label, probability
ROWS = [
    ("Female", 25, "Single", "Yes", 0.8),
    ("Female", 28, "Married", "Yes", 0.6),
    ("Female", 35, "Single", "No", 0.2),
    ("Female", 45, "Divorced", "No", 0.1),
    ("Male", 22, "Single", "Yes", 0.7),
    ("Male", 33, "Married", "No", 0.3),
    ("Male", 38, "Married", "No", 0.2),
    ("Male", 41, "Married", "No", 0.1),
    ("Male", 52, "Divorced", "No", 0.3),
    ("Male", 57, "Single", "No", 0.2),
]


@pytest.fixture()
def result():  # type: ignore[no-untyped-def]
    log = pd.DataFrame(ROWS, columns=["Gender", "Age", "MaritalStatus", "label", "probability"])
    return fairness(log)


def group(result, attribute: str, name: str):  # type: ignore[no-untyped-def]
    return next(g for g in result.groups if g.attribute == attribute and g.group == name)


def test_selection_rates_mean_risk_and_ratios_by_gender(result) -> None:  # type: ignore[no-untyped-def]
    female, male = group(result, "Gender", "Female"), group(result, "Gender", "Male")
    assert (female.n, male.n) == (4, 6)
    assert female.selection_rate == pytest.approx(2 / 4)
    assert male.selection_rate == pytest.approx(1 / 6)
    assert female.mean_risk == pytest.approx((0.8 + 0.6 + 0.2 + 0.1) / 4)
    assert male.mean_risk == pytest.approx((0.7 + 0.3 + 0.2 + 0.1 + 0.3 + 0.2) / 6)
    assert female.ratio == pytest.approx(1.0) and not female.flagged
    assert male.ratio == pytest.approx((1 / 6) / (2 / 4)) and male.flagged


def test_age_bands(result) -> None:  # type: ignore[no-untyped-def]
    young = group(result, "age band", "under 30")  # 25, 28, 22: all Yes
    assert young.n == 3 and young.selection_rate == 1.0 and young.ratio == 1.0
    thirties = group(result, "age band", "30-39")  # 35, 33, 38: none
    assert thirties.n == 3 and thirties.selection_rate == 0.0 and thirties.flagged
    assert group(result, "age band", "40-49").n == 2  # 45, 41
    older = group(result, "age band", "50 and over")
    assert older.n == 2 and older.mean_risk == pytest.approx(0.25)


def test_marital_status_and_the_lowest_ratio(result) -> None:  # type: ignore[no-untyped-def]
    single = group(result, "MaritalStatus", "Single")  # 4 rows, 2 Yes
    married = group(result, "MaritalStatus", "Married")  # 4 rows, 1 Yes
    divorced = group(result, "MaritalStatus", "Divorced")  # 2 rows, 0 Yes
    assert single.selection_rate == 0.5 and married.selection_rate == 0.25
    assert married.ratio == pytest.approx(0.5) and divorced.ratio == 0.0
    assert result.lowest_ratio == 0.0
    flagged = result.summary()["flagged"]
    assert "Gender=Male" in flagged and "MaritalStatus=Married" in flagged
    assert "Gender=Female" not in flagged and "MaritalStatus=Single" not in flagged
