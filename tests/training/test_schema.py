"""The Employee contract: types, closed categories, bounds, cross-field rules, documentation."""

import math
from typing import Any

import pytest
from pydantic import ValidationError

from training.schema import CATEGORICAL, FEATURES, NUMERIC, Employee, bounds, categories


@pytest.fixture
def row() -> dict[str, Any]:
    return {name: info.examples[0] for name, info in Employee.model_fields.items()}


def errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as exc:
        Employee.model_validate(data)
    return exc.value.errors()


def test_examples_form_a_valid_employee(row: dict[str, Any]) -> None:
    assert Employee.model_validate(row).Age == row["Age"]


def test_thirty_features_split_into_numeric_and_categorical() -> None:
    assert len(FEATURES) == 30
    assert set(NUMERIC) | set(CATEGORICAL) == set(FEATURES)


def test_every_field_is_documented_with_an_example() -> None:
    props = Employee.model_json_schema()["properties"]
    for name in FEATURES:
        assert props[name].get("description"), name
        assert props[name].get("examples"), name


def test_unknown_category_lists_allowed_values(row: dict[str, Any]) -> None:
    [err] = errors({**row, "Department": "Marketing"})
    assert err["loc"] == ("Department",)
    for value in categories("Department") or ():
        assert value in err["msg"]


@pytest.mark.parametrize("field", NUMERIC)
def test_numbers_outside_bounds_are_refused(row: dict[str, Any], field: str) -> None:
    lo, hi = bounds(field)
    for bad in (lo - 1, hi + 1):
        errs = errors({**row, field: bad})
        assert any(e["loc"] == (field,) for e in errs), (field, bad, errs)


@pytest.mark.parametrize("bad", ["41", 41.5, 41.0, None, True, math.nan, math.inf])
def test_age_must_be_a_real_integer(row: dict[str, Any], bad: Any) -> None:
    [err] = errors({**row, "Age": bad})
    assert err["loc"] == ("Age",)


def test_missing_and_extra_fields_are_named(row: dict[str, Any]) -> None:
    data = {k: v for k, v in row.items() if k != "OverTime"} | {"EmployeeNumber": 7}
    locs = {e["loc"]: e["type"] for e in errors(data)}
    assert locs == {("OverTime",): "missing", ("EmployeeNumber",): "extra_forbidden"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("YearsAtCompany", 9),  # > TotalWorkingYears (8)
        ("YearsInCurrentRole", 7),  # > YearsAtCompany (6)
        ("YearsSinceLastPromotion", 7),
        ("YearsWithCurrManager", 7),
        ("TotalWorkingYears", 28),  # > Age - 14 (27); YearsAtCompany stays 6
    ],
)
def test_impossible_career_years_are_refused(row: dict[str, Any], field: str, value: int) -> None:
    errs = errors({**row, field: value})
    assert [e["loc"] for e in errs] == [(field,)]
    assert "must not exceed" in errs[0]["msg"]
