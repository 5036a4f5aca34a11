"""What-if scenarios: applied to the employee and checked against the same contract."""

from typing import Any

import pytest
from pydantic import ValidationError

from tests.helpers import employee_rows
from training.schema import Employee
from training.whatif import WhatIfRequest, scenario_employees


def request(*changes: dict[str, Any]) -> WhatIfRequest:
    return WhatIfRequest.model_validate(
        {"employee": employee_rows(1)[0], "scenarios": [{"changes": c} for c in changes]}
    )


def test_empty_scenario_is_the_baseline_itself_and_changes_apply() -> None:
    req = request({}, {"OverTime": "No", "MonthlyIncome": 9000})
    empty, changed = scenario_employees(req)
    assert empty is req.employee
    assert changed.OverTime == "No" and changed.MonthlyIncome == 9000
    assert changed.model_dump() == {
        **req.employee.model_dump(),
        "OverTime": "No",
        "MonthlyIncome": 9000,
    }


def errors(*changes: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        scenario_employees(request(*changes))
    return info.value.errors()


def test_bad_value_is_named_by_scenario_and_field() -> None:
    [e] = errors({}, {"OverTime": "Sometimes"})
    assert e["loc"] == ("scenarios", 1, "changes", "OverTime") and e["type"] == "literal_error"


def test_unknown_field_is_refused() -> None:
    [e] = errors({"Salary": 1})
    assert e["loc"] == ("scenarios", 0, "changes", "Salary") and e["type"] == "extra_forbidden"


def test_strict_types_hold_in_scenarios() -> None:
    [e] = errors({"Age": "50"})
    assert e["loc"] == ("scenarios", 0, "changes", "Age") and e["type"] == "int_type"


def test_consistency_rule_broken_by_a_change_names_the_inconsistent_field() -> None:
    base = employee_rows(1)[0]
    assert base["YearsAtCompany"] == 6
    # Lowering TotalWorkingYears makes the unchanged YearsAtCompany impossible.
    [e] = errors({"TotalWorkingYears": 2})
    assert e["loc"] == ("scenarios", 0, "YearsAtCompany")
    assert "TotalWorkingYears" in e["msg"]
    [e] = errors({"YearsAtCompany": 9})
    assert e["loc"] == ("scenarios", 0, "changes", "YearsAtCompany")


def test_every_bad_scenario_is_reported_at_once() -> None:
    locs = [e["loc"] for e in errors({"Age": 3}, {}, {"Gender": "X"})]
    assert locs == [("scenarios", 0, "changes", "Age"), ("scenarios", 2, "changes", "Gender")]


def test_more_than_50_scenarios_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        request(*[{}] * 51)
    assert info.value.errors()[0]["loc"] == ("scenarios",)


def test_employee_stays_hashable_for_deduplication() -> None:
    a, b = (Employee.model_validate(employee_rows(1)[0]) for _ in range(2))
    assert hash(a) == hash(b) and len(dict.fromkeys([a, b])) == 1


def test_employee_ref_is_carried_by_every_scenario_and_no_scenario_changes_it() -> None:
    base = {**employee_rows(1)[0], "employee_ref": "E-000123"}
    req = WhatIfRequest.model_validate(
        {"employee": base, "scenarios": [{"changes": {}}, {"changes": {"OverTime": "No"}}]}
    )
    assert [e.employee_ref for e in scenario_employees(req)] == ["E-000123", "E-000123"]
    [e] = errors({"employee_ref": "E-999"})
    assert e["loc"] == ("scenarios", 0, "changes", "employee_ref")
    with pytest.raises(ValidationError) as info:  # the same rules as for a prediction
        WhatIfRequest.model_validate(
            {"employee": {**base, "employee_ref": "a name"}, "scenarios": [{"changes": {}}]}
        )
    assert info.value.errors()[0]["loc"] == ("employee", "employee_ref")
