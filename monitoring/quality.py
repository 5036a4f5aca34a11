"""Data quality of the logged inputs: values outside what training saw, volume and mix.

The logged range of a number is bottom- and top-coded, a new category is named only when at
least `min_group_size` rows have it, and with fewer rows than that in the window no share is
given (monitoring/privacy.py).
"""

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from monitoring.privacy import MIN_GROUP_SIZE, coded_range, suppressed_note


@dataclass(frozen=True)
class RangeCheck:
    feature: str
    training: str  # "[min, max]" or the set of categories
    # The k-th lowest and k-th highest logged value, or the new categories at least k rows have.
    current: str
    share_outside: float | None  # share of logged rows with a value training never had


@dataclass(frozen=True)
class QualityResult:
    rows: int
    rows_per_day: dict[str, int]
    batch_share: float  # rows that came in a batch request
    routes: dict[str, int]
    ranges: list[RangeCheck]
    min_group_size: int = MIN_GROUP_SIZE

    @property
    def features_outside(self) -> list[str]:
        return [r.feature for r in self.ranges if r.share_outside]

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_per_day": self.rows_per_day,
            "batch_share": self.batch_share,
            "single_share": 1 - self.batch_share if self.rows else 0.0,
            "routes": self.routes,
            "features_outside_training_range": self.features_outside,
            "min_group_size": self.min_group_size,
            "ranges": [asdict(r) for r in self.ranges],
        }


def quality(
    reference: pd.DataFrame,
    log: pd.DataFrame,
    *,
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
    min_group_size: int = MIN_GROUP_SIZE,
) -> QualityResult:
    """`log` has created_at, route, batch_id and the feature columns."""
    k = min_group_size
    enough = len(log) >= k
    ranges = []
    for f in numeric:
        lo, hi = reference[f].min(), reference[f].max()
        values = log[f]
        outside = float(((values < lo) | (values > hi)).mean()) if enough else None
        coded = coded_range(values.to_numpy(float), k)
        if coded is not None:
            current = f"[{coded[0]:g}, {coded[1]:g}]"
        else:
            current = "-" if log.empty else suppressed_note(2 * k)
        ranges.append(RangeCheck(f, f"[{lo}, {hi}]", current, outside))
    for f in categorical:
        seen = set(reference[f].unique())
        values = log[f]
        new = values[~values.isin(seen)].value_counts()
        named = sorted(str(v) for v, n in new.items() if n >= k)
        rare = int(new[new < k].sum())
        outside = float((~values.isin(seen)).mean()) if enough else None
        if log.empty:
            current = "-"
        elif not enough:
            current = suppressed_note(k)
        else:
            parts = [f"new: {', '.join(named)}"] if named else []
            parts += [f"{rare} rows with new values fewer than {k} rows have"] if rare else []
            current = "; ".join(parts) or "no new values"
        ranges.append(RangeCheck(f, f"{len(seen)} values", current, outside))
    days = pd.to_datetime(log["created_at"], utc=True).dt.normalize().value_counts().sort_index()
    return QualityResult(
        rows=len(log),
        rows_per_day={day.strftime("%Y-%m-%d"): int(v) for day, v in days.items()},
        batch_share=float(log["batch_id"].notna().mean()) if len(log) else 0.0,
        routes={str(r): int(v) for r, v in log["route"].value_counts().items()},
        ranges=ranges,
        min_group_size=k,
    )
