"""The employee feature contract shared by training and serving."""

import operator
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator


def _cat(description: str, example: str) -> Any:
    return Field(description=description, examples=[example])


BusinessTravelValue = Literal["Non-Travel", "Travel_Rarely", "Travel_Frequently"]
DepartmentValue = Literal["Human_Resources", "Research_Development", "Sales"]
EducationValue = Literal["Below_College", "College", "Bachelor", "Master", "Doctor"]
EducationFieldValue = Literal[
    "Human_Resources",
    "Life_Sciences",
    "Marketing",
    "Medical",
    "Other",
    "Technical_Degree",
]
SatisfactionValue = Literal["Low", "Medium", "High", "Very_High"]
GenderValue = Literal["Female", "Male"]
JobRoleValue = Literal[
    "Healthcare_Representative",
    "Human_Resources",
    "Laboratory_Technician",
    "Manager",
    "Manufacturing_Director",
    "Research_Director",
    "Research_Scientist",
    "Sales_Executive",
    "Sales_Representative",
]
MaritalStatusValue = Literal["Single", "Married", "Divorced"]
YesNoValue = Literal["No", "Yes"]
PerformanceRatingValue = Literal["Low", "Good", "Excellent", "Outstanding"]
WorkLifeBalanceValue = Literal["Bad", "Good", "Better", "Best"]


# Cross-field rules every real employee satisfies: (smaller, larger, slack).
YEAR_RULES: tuple[tuple[str, str, int], ...] = (
    ("YearsAtCompany", "TotalWorkingYears", 0),
    ("YearsInCurrentRole", "YearsAtCompany", 0),
    ("YearsSinceLastPromotion", "YearsAtCompany", 0),
    ("YearsWithCurrManager", "YearsAtCompany", 0),
    ("TotalWorkingYears", "Age", -14),
)


class Employee(BaseModel):
    """One employee, as the model sees them: 30 features, no identifiers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    Age: StrictInt = Field(ge=14, le=100, description="Age in years.", examples=[41])
    BusinessTravel: BusinessTravelValue = _cat("How often the employee travels.", "Travel_Rarely")
    DailyRate: StrictInt = Field(
        ge=0, le=100_000, description="Daily rate of pay.", examples=[1102]
    )
    Department: DepartmentValue = _cat("Department.", "Sales")
    DistanceFromHome: StrictInt = Field(
        ge=0, le=1_000, description="Distance from home to work (miles).", examples=[1]
    )
    Education: EducationValue = _cat("Highest education level (ordered).", "College")
    EducationField: EducationFieldValue = _cat("Field of education.", "Life_Sciences")
    EnvironmentSatisfaction: SatisfactionValue = _cat(
        "Satisfaction with the work environment (ordered).", "Medium"
    )
    Gender: GenderValue = _cat("Gender.", "Female")
    HourlyRate: StrictInt = Field(ge=0, le=10_000, description="Hourly rate of pay.", examples=[94])
    JobInvolvement: SatisfactionValue = _cat("Job involvement (ordered).", "High")
    JobLevel: StrictInt = Field(ge=1, le=5, description="Job level, 1 (entry) to 5.", examples=[2])
    JobRole: JobRoleValue = _cat("Job role.", "Sales_Executive")
    JobSatisfaction: SatisfactionValue = _cat("Job satisfaction (ordered).", "Very_High")
    MaritalStatus: MaritalStatusValue = _cat("Marital status.", "Single")
    MonthlyIncome: StrictInt = Field(
        ge=0, le=10_000_000, description="Monthly income.", examples=[5993]
    )
    MonthlyRate: StrictInt = Field(
        ge=0, le=10_000_000, description="Monthly rate of pay.", examples=[19479]
    )
    NumCompaniesWorked: StrictInt = Field(
        ge=0, le=60, description="Number of companies worked at before.", examples=[8]
    )
    OverTime: YesNoValue = _cat("Whether the employee works overtime.", "Yes")
    PercentSalaryHike: StrictInt = Field(
        ge=0, le=1_000, description="Last salary increase, percent.", examples=[11]
    )
    PerformanceRating: PerformanceRatingValue = _cat(
        "Last performance rating (ordered).", "Excellent"
    )
    RelationshipSatisfaction: SatisfactionValue = _cat(
        "Satisfaction with work relationships (ordered).", "Low"
    )
    StockOptionLevel: StrictInt = Field(
        ge=0, le=3, description="Stock option level, 0 to 3.", examples=[0]
    )
    TotalWorkingYears: StrictInt = Field(
        ge=0, le=86, description="Total years of work experience.", examples=[8]
    )
    TrainingTimesLastYear: StrictInt = Field(
        ge=0, le=366, description="Trainings attended last year.", examples=[0]
    )
    WorkLifeBalance: WorkLifeBalanceValue = _cat("Work-life balance (ordered).", "Bad")
    YearsAtCompany: StrictInt = Field(
        ge=0, le=86, description="Years at this company.", examples=[6]
    )
    YearsInCurrentRole: StrictInt = Field(
        ge=0, le=86, description="Years in the current role.", examples=[4]
    )
    YearsSinceLastPromotion: StrictInt = Field(
        ge=0, le=86, description="Years since the last promotion.", examples=[0]
    )
    YearsWithCurrManager: StrictInt = Field(
        ge=0, le=86, description="Years with the current manager.", examples=[5]
    )

    @field_validator(
        "TotalWorkingYears",
        "YearsAtCompany",
        "YearsInCurrentRole",
        "YearsSinceLastPromotion",
        "YearsWithCurrManager",
    )
    @classmethod
    def _consistent_years(cls, value: int, info: ValidationInfo) -> int:
        # Each rule's larger field is declared before its smaller one, so it is in info.data.
        for small, large, slack in YEAR_RULES:
            if small == info.field_name and large in info.data:
                limit = info.data[large] + slack
                if value > limit:
                    bound = large if slack == 0 else f"{large} - {-slack}"
                    raise ValueError(f"must not exceed {bound} ({limit})")
        return value


FEATURES: tuple[str, ...] = tuple(Employee.model_fields)


def categories(field: str) -> tuple[str, ...] | None:
    """The closed set of values of a categorical field, in order; None if numeric."""
    return get_args(Employee.model_fields[field].annotation) or None


def bounds(field: str) -> tuple[int, int]:
    """The inclusive (low, high) bounds of a numeric field."""
    info = Employee.model_fields[field]
    lo = next(m.ge for m in info.metadata if hasattr(m, "ge"))
    hi = next(m.le for m in info.metadata if hasattr(m, "le"))
    return lo, hi


CATEGORICAL: tuple[str, ...] = tuple(f for f in FEATURES if categories(f))
NUMERIC: tuple[str, ...] = tuple(f for f in FEATURES if not categories(f))
# Categorical fields whose values have a natural order (encoded as ranks).
ORDINAL: tuple[str, ...] = (
    "Education",
    "EnvironmentSatisfaction",
    "JobInvolvement",
    "JobSatisfaction",
    "PerformanceRating",
    "RelationshipSatisfaction",
    "WorkLifeBalance",
)
NOMINAL: tuple[str, ...] = tuple(f for f in CATEGORICAL if f not in ORDINAL)
TARGET = "Attrition"

_feature_values = operator.attrgetter(*FEATURES)


def feature_matrix(employees: list[Employee]) -> np.ndarray:
    """Validated employees as an (n, len(FEATURES)) object matrix, columns in FEATURES order:
    the runner's input (it pickles and concatenates cheaply; pydantic models did not)."""
    matrix = np.empty((len(employees), len(FEATURES)), dtype=object)
    matrix[:] = [_feature_values(e) for e in employees]
    return matrix


class EmployeeInput(Employee):
    """An employee to score: the model's features, and optionally your reference for them."""

    employee_ref: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="Your reference for this employee (an HR system id, not a name): stored with "
        "the prediction so its records can be found and erased; never sent to the model.",
        examples=["E-000123"],
    )
