"""Data drift: each input feature and the predicted probability, logged window vs training.

Numbers: two-sample Kolmogorov-Smirnov; categories: chi-squared test of homogeneity. A test
alone flags negligible shifts once samples are large, and with 30 features some p-values fall
under 0.05 by chance, so a feature drifts only when both hold:
- the test rejects at ALPHA / 30 (Bonferroni: under no drift, no feature is flagged in at
  least 95 % of reports), and
- the population stability index is at least PSI_THRESHOLD (0.1, the usual "moderate shift").
"""

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
PSI_THRESHOLD = 0.1
PSI_BINS = 10
MIN_ROWS = 30  # fewer current rows than this: no test is run
EPSILON = 1e-4  # floor of a bin's share in the PSI, so empty bins stay finite


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric or categorical
    test: str
    statistic: float | None
    p_value: float | None
    psi: float | None
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    features: list[FeatureDrift]
    probability: FeatureDrift | None
    n_reference: int
    n_current: int
    alpha: float
    corrected_alpha: float
    psi_threshold: float
    note: str | None = None

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "share_drifted": self.share_drifted,
            "drifted_features": self.drifted,
            "rule": f"p < {self.corrected_alpha:.2e} (alpha {self.alpha} / "
            f"{round(self.alpha / self.corrected_alpha)} features) and PSI >= {self.psi_threshold}",
            "n_reference": self.n_reference,
            "n_current": self.n_current,
            "probability": asdict(self.probability) if self.probability else None,
            "features": [asdict(f) for f in self.features],
            "note": self.note,
        }


def psi(reference_share: np.ndarray, current_share: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    r = np.clip(reference_share, EPSILON, None)
    c = np.clip(current_share, EPSILON, None)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_drift(
    feature: str, reference: pd.Series, current: pd.Series, alpha: float
) -> FeatureDrift:
    ref, cur = reference.to_numpy(float), current.to_numpy(float)
    ks = stats.ks_2samp(ref, cur)
    # Bins at the reference deciles (fewer when values repeat, e.g. job levels 1-5).
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    ref_share = np.bincount(
        np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1
    ) / len(ref)
    cur_share = np.bincount(
        np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1
    ) / len(cur)
    value = psi(ref_share, cur_share)
    p = float(ks.pvalue)
    return FeatureDrift(feature, "numeric", "Kolmogorov-Smirnov", float(ks.statistic), p, value,
                        p < alpha and value >= PSI_THRESHOLD)  # fmt: skip


def categorical_drift(
    feature: str, reference: pd.Series, current: pd.Series, alpha: float
) -> FeatureDrift:
    counts = pd.DataFrame(
        {"reference": reference.value_counts(), "current": current.value_counts()}
    ).fillna(0)
    counts = counts[(counts > 0).any(axis=1)]
    if len(counts) < 2:  # one category in both: nothing can have moved
        return FeatureDrift(feature, "categorical", "chi-squared", 0.0, 1.0, 0.0, False)
    chi2, p, _, _ = stats.chi2_contingency(counts.to_numpy().T)
    shares = counts / counts.sum()
    value = psi(shares["reference"].to_numpy(), shares["current"].to_numpy())
    return FeatureDrift(feature, "categorical", "chi-squared", float(chi2), float(p), value,
                        float(p) < alpha and value >= PSI_THRESHOLD)  # fmt: skip


def drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    numeric: tuple[str, ...],
    categorical: tuple[str, ...],
    alpha: float = ALPHA,
    min_group_size: int = MIN_ROWS,
) -> DriftResult:
    """Per-feature drift of `current` against `reference` (both with the feature columns and
    a `probability` column); nothing on fewer than MIN_ROWS or min_group_size rows."""
    features = [*numeric, *categorical]
    corrected = alpha / len(features)
    least = max(MIN_ROWS, min_group_size)
    if len(current) < least:
        return DriftResult([], None, len(reference), len(current), alpha, corrected, PSI_THRESHOLD,
                           f"fewer than {least} logged rows: no drift test run")  # fmt: skip
    results = [numeric_drift(f, reference[f], current[f], corrected) for f in numeric]
    results += [categorical_drift(f, reference[f], current[f], corrected) for f in categorical]
    order = {f: i for i, f in enumerate(reference.columns)}
    results.sort(key=lambda r: order.get(r.feature, 0))
    probability = numeric_drift(
        "probability", reference["probability"], current["probability"], alpha
    )
    return DriftResult(
        results, probability, len(reference), len(current), alpha, corrected, PSI_THRESHOLD
    )
