"""What-if: an employee with some fields changed, checked against the same contract."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails

from training.explain import DEFAULT_TOP_K, Explanation
from training.schema import FEATURES, EmployeeInput

MAX_SCENARIOS = 50


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100, description="Your label for it.")
    changes: dict[str, Any] = Field(
        description="Employee fields to change and their new values; {} is the baseline.",
        examples=[{"OverTime": "No", "MonthlyIncome": 7000}],
    )


class WhatIfRequest(BaseModel):
    """One employee and up to 50 scenarios of changed fields."""

    model_config = ConfigDict(extra="forbid")

    employee: EmployeeInput = Field(
        description="The employee as it is (the baseline), with the same optional employee_ref "
        "as for a prediction: stored on every row of the request (baseline and scenarios), so "
        "`python -m persistence erase --employee-ref` finds them all."
    )
    scenarios: list[Scenario] = Field(min_length=1, max_length=MAX_SCENARIOS)
    top_k: int = Field(
        default=DEFAULT_TOP_K, ge=1, le=len(FEATURES), description="Drivers per answer."
    )


class Answer(BaseModel):
    """The model's answer for one employee of a what-if request."""

    probability: float = Field(ge=0, le=1)
    label: str
    explanation: Explanation


class ScenarioResult(Answer):
    index: int = Field(description="Position of the scenario in the request.")
    name: str | None
    changes: dict[str, Any]
    change: float = Field(description="probability - the baseline's probability.")


class WhatIfResponse(BaseModel):
    request_id: str
    threshold: float
    model_tag: str
    baseline: Answer
    scenarios: list[ScenarioResult]


def relocate(
    exc: ValidationError, *prefix: str | int, changed: set[str] | None = None
) -> list[InitErrorDetails]:
    """The errors of `exc` re-rooted under `prefix`; a field the scenario did not change (a
    consistency rule broken by another change) is named beside "changes", not inside it."""
    out: list[InitErrorDetails] = []
    for e in exc.errors():
        loc: tuple[str | int, ...] = tuple(e["loc"])
        if changed is not None:
            inside = bool(loc) and loc[0] in changed
            loc = (*prefix, "changes", *loc) if inside else (*prefix, *loc)
        else:
            loc = (*prefix, *loc)
        detail: InitErrorDetails = {"type": e["type"], "loc": loc, "input": e.get("input")}
        if "ctx" in e:
            detail["ctx"] = e["ctx"]
        out.append(detail)
    return out


def scenario_employees(request: WhatIfRequest) -> list[EmployeeInput]:
    """The employee of each scenario (with the baseline's employee_ref, which no scenario can
    change), or a ValidationError naming every bad scenario and field."""
    base = request.employee.model_dump()
    employees: list[EmployeeInput] = []
    errors: list[InitErrorDetails] = []
    for i, scenario in enumerate(request.scenarios):
        unknown = [k for k in scenario.changes if k not in FEATURES]
        for key in unknown:
            errors.append(
                {
                    "type": "extra_forbidden",
                    "loc": ("scenarios", i, "changes", key),
                    "input": scenario.changes[key],
                }
            )
        if unknown:
            continue
        if not scenario.changes:
            employees.append(request.employee)  # the baseline itself: scored identically
            continue
        try:
            employees.append(EmployeeInput.model_validate({**base, **scenario.changes}))
        except ValidationError as exc:
            errors += relocate(exc, "scenarios", i, changed=set(scenario.changes))
    if errors:
        raise ValidationError.from_exception_data("WhatIfRequest", errors)
    return employees
