"""Fairness numbers on a hand-built log equal the hand-computed ones, in both directions of the
four-fifths rule, and groups under the minimum size are suppressed and compared with nobody."""

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
    return fairness(log, min_group_size=1)  # every group shown: the arithmetic


def group(result, attribute: str, name: str):  # type: ignore[no-untyped-def]
    return next(g for g in result.groups if g.attribute == attribute and g.group == name)


def test_selection_rates_mean_risk_and_ratios_by_gender(result) -> None:  # type: ignore[no-untyped-def]
    female, male = group(result, "Gender", "Female"), group(result, "Gender", "Male")
    assert (female.n, male.n) == (4, 6)
    assert female.selection_rate == pytest.approx(2 / 4)
    assert male.selection_rate == pytest.approx(1 / 6)
    assert female.mean_risk == pytest.approx((0.8 + 0.6 + 0.2 + 0.1) / 4)
    assert male.mean_risk == pytest.approx((0.7 + 0.3 + 0.2 + 0.1 + 0.3 + 0.2) / 6)
    assert female.yes_ratio == pytest.approx(1.0) and not female.flagged
    assert male.yes_ratio == pytest.approx((1 / 6) / (2 / 4)) and male.flagged


def test_age_bands(result) -> None:  # type: ignore[no-untyped-def]
    young = group(result, "age band", "under 30")  # 25, 28, 22: all Yes
    assert young.n == 3 and young.selection_rate == 1.0 and young.yes_ratio == 1.0
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
    assert married.yes_ratio == pytest.approx(0.5) and divorced.yes_ratio == 0.0
    assert result.lowest_ratio == 0.0
    flagged = result.summary()["flagged"]
    assert "Gender=Male" in flagged and "MaritalStatus=Married" in flagged
    assert "Gender=Female" not in flagged and "MaritalStatus=Single" not in flagged


def test_both_directions_are_reported_and_the_assumption_decides_the_rule() -> None:
    # Every group ten times over: large enough to be shown at the default minimum group size.
    log = pd.DataFrame(
        ROWS * 10, columns=["Gender", "Age", "MaritalStatus", "label", "probability"]
    )
    default = fairness(log)
    male = group(default, "Gender", "Male")
    # Shares of No: Female 2/4, Male 5/6; the highest is Male's.
    assert male.no_ratio == pytest.approx(1.0)
    assert group(default, "Gender", "Female").no_ratio == pytest.approx((2 / 4) / (5 / 6))
    summary = default.summary()
    assert summary["adverse_outcome"] == "No" and summary["compared_rate"] == "Yes"
    assert '"No" is the adverse outcome' in summary["rule"]
    assert summary["lowest_ratio_of"]["Yes"] == summary["lowest_ratio"] == 0.0
    assert summary["lowest_ratio_of"]["No"] == 0.0  # under 30: all three labelled Yes
    assert "Gender=Male" in summary["under_four_fifths_of"]["Yes"]
    assert "Gender=Female" in summary["under_four_fifths_of"]["No"]

    flagged_adverse = fairness(log, adverse="Yes")
    summary = flagged_adverse.summary()
    assert summary["compared_rate"] == "No" and '"Yes" is the adverse outcome' in summary["rule"]
    assert summary["lowest_ratio"] == summary["lowest_ratio_of"]["No"]
    assert "Gender=Female" in summary["flagged"] and "Gender=Male" not in summary["flagged"]


def test_small_groups_are_suppressed_and_left_out_of_every_ratio() -> None:
    rows = [("Female", 30, "Married", "Yes", 0.9)] * 3 + [("Male", 30, "Married", "No", 0.2)] * 12
    rows += [("Male", 30, "Married", "Yes", 0.7)] * 4
    log = pd.DataFrame(rows, columns=["Gender", "Age", "MaritalStatus", "label", "probability"])
    result = fairness(log)  # the default minimum: 10 rows
    female, male = group(result, "Gender", "Female"), group(result, "Gender", "Male")
    assert female.suppressed and female.n is None and female.selection_rate is None
    assert female.mean_risk is None and female.yes_ratio is None and female.no_ratio is None
    # Male is compared with shown groups only: itself (Female's 3/3 would give 0.25).
    assert male.n == 16 and male.yes_ratio == 1.0 and not male.flagged
    assert result.summary()["suppressed"] == ["Gender=Female"]
