"""Data quality of the logged inputs: values outside what training saw, volume and mix."""

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class RangeCheck:
    feature: str
    training: str  # "[min, max]" or the set of categories
    current: str
    share_outside: float  # share of logged rows with a value training never had


@dataclass(frozen=True)
class QualityResult:
    rows: int
    rows_per_day: dict[str, int]
    batch_share: float  # rows that came in a batch request
    routes: dict[str, int]
    ranges: list[RangeCheck]

    @property
    def features_outside(self) -> list[str]:
        return [r.feature for r in self.ranges if r.share_outside > 0]

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_per_day": self.rows_per_day,
            "batch_share": self.batch_share,
            "single_share": 1 - self.batch_share if self.rows else 0.0,
            "routes": self.routes,
            "features_outside_training_range": self.features_outside,
            "ranges": [asdict(r) for r in self.ranges],
        }


def quality(
    reference: pd.DataFrame,
    log: pd.DataFrame,
    *,
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
) -> QualityResult:
    """`log` has created_at, route, batch_id and the feature columns."""
    ranges = []
    for f in numeric:
        lo, hi = reference[f].min(), reference[f].max()
        values = log[f]
        outside = float(((values < lo) | (values > hi)).mean()) if len(log) else 0.0
        current = f"[{values.min()}, {values.max()}]" if len(log) else "-"
        ranges.append(RangeCheck(f, f"[{lo}, {hi}]", current, outside))
    for f in categorical:
        seen = set(reference[f].unique())
        values = log[f]
        new = sorted(set(values.unique()) - seen)
        outside = float((~values.isin(seen)).mean()) if len(log) else 0.0
        current = ("new: " + ", ".join(map(str, new))) if new else "no new values"
        ranges.append(RangeCheck(f, f"{len(seen)} values", current, outside))
    days = pd.to_datetime(log["created_at"], utc=True).dt.normalize().value_counts().sort_index()
    return QualityResult(
        rows=len(log),
        rows_per_day={k.strftime("%Y-%m-%d"): int(v) for k, v in days.items()},
        batch_share=float(log["batch_id"].notna().mean()) if len(log) else 0.0,
        routes={str(k): int(v) for k, v in log["route"].value_counts().items()},
        ranges=ranges,
    )
