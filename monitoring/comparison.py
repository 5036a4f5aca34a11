"""The served model against the challenger scored on the same rows (its shadow scores).

Each logged prediction made while a challenger was configured carries both models' probability
and label; which of the two answered depends on promotions, so rows are put the same way round:
"served" is the report's model, "challenger" the other one. Compared: how often their labels
agree, how the challenger's probability differs (mean and quantiles of challenger minus served),
the share labelled Yes by group for both (groups under k rows suppressed, monitoring/privacy.py),
and, on the predictions whose outcome has arrived, ROC-AUC, PR-AUC (average precision) and
Brier score of both with a bootstrap confidence interval of each difference.

The bootstrap is seeded and fixed, so a report can be recomputed: with the predictions that have
an outcome in order of their id, for each of `resamples` draws `rng.integers(0, n, size=n)`
from `numpy.random.default_rng(seed)` picks the outcomes; draws
holding one class only are skipped (and counted); the interval is the 2.5th and 97.5th
percentile (numpy's default, linear) of challenger minus served over the draws kept.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from monitoring.fairness import fairness
from monitoring.performance import MIN_OUTCOMES
from monitoring.privacy import MIN_GROUP_SIZE

RESAMPLES = 1000
SEED = 0
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
NO_SCORES = "no challenger scores in this window (ATTRITION_CHALLENGER_TAG unset)"


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "pr_auc": lambda y, p: float(average_precision_score(y, p)),
    "brier": brier,
}


@dataclass(frozen=True)
class GroupSelection:
    attribute: str
    group: str
    suppressed: bool  # fewer rows than the minimum group size: no values
    n: int | None
    served_rate: float | None  # share labelled Yes
    challenger_rate: float | None


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    served: float
    challenger: float
    difference: float  # challenger - served
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ComparisonResult:
    served_tag: str
    challenger_tag: str | None
    n_pairs: int
    agreement: float | None = None  # share of rows whose labels agree
    both_yes: int | None = None
    only_served_yes: int | None = None
    only_challenger_yes: int | None = None
    shift_mean: float | None = None  # mean of challenger - served probability
    shift_std: float | None = None
    shift_quantiles: dict[str, float] | None = None  # None under 2k rows (could be one person's)
    groups: list[GroupSelection] = field(default_factory=list)
    n_outcomes: int = 0
    n_left: int = 0
    metrics: list[MetricComparison] = field(default_factory=list)
    resamples: int = RESAMPLES
    resamples_used: int = 0
    seed: int = SEED
    other_challengers: dict[str, int] = field(default_factory=dict)  # rows left out, by tag
    note: str | None = None
    performance_note: str | None = None
    min_group_size: int = MIN_GROUP_SIZE

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def oriented(log: pd.DataFrame, served_tag: str) -> pd.DataFrame:
    """The rows with both scores, as served_* and challenger_* of the report's model and the
    other one, whichever of them answered."""
    both = log[log["challenger_probability"].notna()]
    answered = both["model_tag"] == served_tag
    return pd.DataFrame(
        {
            "id": both["id"],
            "other_tag": both["challenger_tag"].where(answered, both["model_tag"]),
            "served_p": both["probability"].where(answered, both["challenger_probability"]),
            "challenger_p": both["challenger_probability"].where(answered, both["probability"]),
            "served_label": both["label"].where(answered, both["challenger_label"]),
            "challenger_label": both["challenger_label"].where(answered, both["label"]),
            "Age": both["Age"],
            "Gender": both["Gender"],
            "MaritalStatus": both["MaritalStatus"],
        },
        index=both.index,
    ).astype({"served_p": float, "challenger_p": float})


def bootstrap(
    y: np.ndarray, served: np.ndarray, challenger: np.ndarray, *, resamples: int, seed: int
) -> tuple[dict[str, np.ndarray], int]:
    """Challenger minus served of each metric over the draws holding both classes."""
    rng = np.random.default_rng(seed)
    n = len(y)
    differences: dict[str, list[float]] = {name: [] for name in METRICS}
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        for name, metric in METRICS.items():
            differences[name].append(metric(yb, challenger[idx]) - metric(yb, served[idx]))
    used = len(differences["brier"])
    return {k: np.asarray(v) for k, v in differences.items()}, used


def comparison(
    log: pd.DataFrame,
    outcomes: pd.DataFrame,
    *,
    served_tag: str,
    min_group_size: int = MIN_GROUP_SIZE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> ComparisonResult:
    """`log`: read_log's frame (model_tag, probability, label, challenger_tag,
    challenger_probability, challenger_label, the sensitive features); `outcomes`: inference_id
    and outcome (left or stayed)."""
    k = min_group_size
    base: dict[str, Any] = {
        "served_tag": served_tag,
        "resamples": resamples,
        "seed": seed,
        "min_group_size": k,
    }
    if "challenger_probability" not in log or log["challenger_probability"].isna().all():
        return ComparisonResult(challenger_tag=None, n_pairs=0, note=NO_SCORES, **base)
    rows = oriented(log, served_tag)
    counts = rows["other_tag"].value_counts()
    challenger_tag = str(counts.index[0])
    others = {str(t): int(n) for t, n in counts.iloc[1:].items()}
    rows = rows[rows["other_tag"] == challenger_tag]
    n = len(rows)
    base.update(challenger_tag=challenger_tag, n_pairs=n, other_challengers=others)
    if n < k:
        return ComparisonResult(
            **base, note=f"{n} rows with both scores: fewer than {k}, suppressed"
        )
    served_yes = (rows["served_label"] == "Yes").to_numpy()
    challenger_yes = (rows["challenger_label"] == "Yes").to_numpy()
    shift = (rows["challenger_p"] - rows["served_p"]).to_numpy()
    quantiles = (
        {f"p{round(q * 100):02d}": float(np.quantile(shift, q)) for q in QUANTILES}
        if n >= 2 * k
        else None
    )
    served_groups = fairness(rows.assign(label=rows["served_label"],
                                         probability=rows["served_p"]), min_group_size=k).groups  # fmt: skip
    challenger_groups = fairness(rows.assign(label=rows["challenger_label"],
                                             probability=rows["challenger_p"]),
                                 min_group_size=k).groups  # fmt: skip
    groups = [
        GroupSelection(s.attribute, s.group, s.suppressed, s.n, s.selection_rate, c.selection_rate)
        for s, c in zip(served_groups, challenger_groups, strict=True)
    ]
    result: dict[str, Any] = {
        **base,
        "agreement": float(np.mean(served_yes == challenger_yes)),
        "both_yes": int(np.sum(served_yes & challenger_yes)),
        "only_served_yes": int(np.sum(served_yes & ~challenger_yes)),
        "only_challenger_yes": int(np.sum(~served_yes & challenger_yes)),
        "shift_mean": float(shift.mean()),
        "shift_std": float(shift.std(ddof=1)) if n > 1 else 0.0,
        "shift_quantiles": quantiles,
        "groups": groups,
    }
    outcome = rows["id"].map(dict(zip(outcomes["inference_id"], outcomes["outcome"], strict=True)))
    known = rows.assign(outcome=outcome)[outcome.notna()].sort_values("id")
    y = (known["outcome"] == "left").astype(int).to_numpy()
    left = int(y.sum())
    result.update(n_outcomes=len(y), n_left=left)
    if len(y) < MIN_OUTCOMES or min(left, len(y) - left) < max(k, 1):
        result["performance_note"] = (
            f"{len(y)} outcomes ({left} left): need {MIN_OUTCOMES}, with at least "
            f"{max(k, 1)} who left and {max(k, 1)} who stayed"
        )
        return ComparisonResult(**result)
    served_p = known["served_p"].to_numpy(float)
    challenger_p = known["challenger_p"].to_numpy(float)
    differences, used = bootstrap(y, served_p, challenger_p, resamples=resamples, seed=seed)
    metrics = []
    for name, metric in METRICS.items():
        s, c = metric(y, served_p), metric(y, challenger_p)
        low, high = (
            (
                float(np.percentile(differences[name], 2.5)),
                float(np.percentile(differences[name], 97.5)),
            )
            if used
            else (float("nan"), float("nan"))
        )
        metrics.append(MetricComparison(name, s, c, c - s, low, high))
    return ComparisonResult(**result, metrics=metrics, resamples_used=used)
