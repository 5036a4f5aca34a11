"""The data loaders: the bundled reference data and user CSVs in both layouts, and refusals."""

from pathlib import Path

import pandas as pd
import pytest

from training.data import IBM_NON_FEATURES, DataError, load_csv, load_reference
from training.schema import FEATURES, ORDINAL, TARGET, categories


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return load_reference()


def to_ibm_layout(frame: pd.DataFrame) -> pd.DataFrame:
    """The reference data written the way the original IBM/Kaggle file is."""
    out = frame.copy()
    for col in ORDINAL:
        levels = list(categories(col) or ())
        out[col] = out[col].map(lambda v, lv=levels: lv.index(v) + 1)
    out["Department"] = out["Department"].str.replace("_", " & ", regex=False)
    for col in ("EducationField", "JobRole"):
        out[col] = out[col].str.replace("_", " ", regex=False)
    out["EmployeeCount"] = 1
    out["Over18"] = "Y"
    out["StandardHours"] = 80
    out["EmployeeNumber"] = range(1, len(out) + 1)
    return out.sample(frac=1.0, axis=1, random_state=0)  # column order must not matter


def test_reference_data_is_the_ibm_attrition_set(reference: pd.DataFrame) -> None:
    assert reference.shape == (1470, 31)
    assert list(reference.columns) == [*FEATURES, TARGET]
    assert (reference[TARGET] == "Yes").sum() == 237


def test_labelled_csv_round_trips(reference: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "labelled.csv"
    reference.to_csv(path, index_label="rownames")
    pd.testing.assert_frame_equal(load_csv(path), reference)


def test_ibm_layout_csv_maps_to_the_same_data(reference: pd.DataFrame, tmp_path: Path) -> None:
    ibm = to_ibm_layout(reference)
    assert "Research & Development" in set(ibm["Department"])
    path = tmp_path / "WA_Fn-UseC_-HR-Employee-Attrition.csv"
    ibm.to_csv(path, index=False)
    pd.testing.assert_frame_equal(load_csv(path), reference)
    assert not set(IBM_NON_FEATURES) & set(load_csv(path).columns)


def write(frame: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def test_missing_columns_are_named(reference: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing columns: Age, OverTime"):
        load_csv(write(reference.drop(columns=["Age", "OverTime"]), tmp_path))


def test_unknown_category_names_rows_and_column(reference: pd.DataFrame, tmp_path: Path) -> None:
    bad = reference.copy()
    bad.loc[[3, 10], "BusinessTravel"] = "Sometimes"
    with pytest.raises(DataError) as exc:
        load_csv(write(bad, tmp_path))
    msg = str(exc.value)
    # CSV line numbers: the header is line 1, so row 3 is line 5.
    assert "column BusinessTravel" in msg and "'Sometimes'" in msg and "rows 5, 12" in msg
    assert "Travel_Rarely" in msg  # the allowed values are listed


def test_impossible_values_are_refused(reference: pd.DataFrame, tmp_path: Path) -> None:
    bad = reference.copy().astype({"Age": object, "MonthlyIncome": object})
    bad.loc[0, "Age"] = -3
    bad.loc[1, "MonthlyIncome"] = "lots"
    bad.loc[2, "YearsAtCompany"] = 39  # more than TotalWorkingYears
    bad.loc[4, TARGET] = "Maybe"
    with pytest.raises(DataError) as exc:
        load_csv(write(bad, tmp_path))
    problems = exc.value.problems
    assert "column Age: outside [14, 100] at rows 2" in problems
    assert "column MonthlyIncome: not an integer at rows 3" in problems
    assert "YearsAtCompany exceeds TotalWorkingYears at rows 4" in problems
    assert "column Attrition: must be Yes or No at rows 6" in problems


def test_empty_cells_are_refused(reference: pd.DataFrame, tmp_path: Path) -> None:
    bad = reference.copy().astype({"DailyRate": object})
    bad.loc[7, "DailyRate"] = None
    with pytest.raises(DataError, match="column DailyRate: not an integer at rows 9"):
        load_csv(write(bad, tmp_path))


def test_unexpected_columns_are_refused(reference: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unexpected columns: Salary"):
        load_csv(write(reference.assign(Salary=1), tmp_path))
