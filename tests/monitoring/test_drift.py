"""Drift: nothing drifts on training-like data; a shifted feature is flagged, and only it."""

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import drift, psi
from tests.monitoring.conftest import split
from training.schema import CATEGORICAL, NUMERIC

SEEDS = range(10)


def run(reference: pd.DataFrame, current: pd.DataFrame):  # type: ignore[no-untyped-def]
    return drift(reference, current, numeric=NUMERIC, categorical=CATEGORICAL)


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift() -> None:
    even = np.full(4, 0.25)
    assert psi(even, even) == 0
    assert (
        0 < psi(even, np.array([0.3, 0.25, 0.25, 0.2])) < psi(even, np.array([0.7, 0.1, 0.1, 0.1]))
    )


def test_a_log_resampled_from_the_training_data_drifts_on_no_feature(scored: pd.DataFrame) -> None:
    reference, _ = split(scored, 0)
    for seed in SEEDS:
        log = reference.sample(2000, replace=True, random_state=seed)
        result = run(reference, log)
        assert result.drifted == [], (seed, result.drifted)
        assert not result.probability.drifted


def test_false_positive_rate_on_unseen_employees_over_seeds(scored: pd.DataFrame) -> None:
    """Each seed: a new training split as reference, its held-out employees as the log."""
    flagged = 0
    tested = 0
    for seed in SEEDS:
        reference, held_out = split(scored, seed)
        result = run(reference, held_out)
        assert len(result.features) == 30
        flagged += len(result.drifted)
        tested += len(result.features)
    rate = flagged / tested
    print(f"drift false-positive rate: {flagged}/{tested} = {rate:.4f}")
    assert flagged <= 1, f"{flagged} of {tested} feature tests flagged without any shift"


SHIFTS = {
    "Age": lambda log: log.assign(Age=log["Age"] + 8),
    "MonthlyIncome": lambda log: log.assign(
        MonthlyIncome=(log["MonthlyIncome"] * 1.6).round().astype(int)
    ),
    "OverTime": lambda log: log.assign(
        OverTime=np.where(np.arange(len(log)) % 2 == 0, "Yes", log["OverTime"])
    ),
    "BusinessTravel": lambda log: log.assign(
        BusinessTravel=np.where(
            np.arange(len(log)) % 3 == 0, "Travel_Frequently", log["BusinessTravel"]
        )
    ),
}


@pytest.mark.parametrize("feature", SHIFTS)
def test_one_shifted_feature_is_flagged_and_the_others_are_not(
    scored: pd.DataFrame, feature: str
) -> None:
    others = 0
    for seed in range(5):
        reference, held_out = split(scored, seed)
        result = run(reference, SHIFTS[feature](held_out))
        assert feature in result.drifted, (
            seed,
            [f for f in result.features if f.feature == feature],
        )
        others += len(set(result.drifted) - {feature})
        test = next(f for f in result.features if f.feature == feature)
        assert test.test == ("Kolmogorov-Smirnov" if feature in NUMERIC else "chi-squared")
        assert result.share_drifted == len(result.drifted) / 30
    assert others <= 1, f"{others} other features flagged over 5 seeds"


def test_shifted_probabilities_are_flagged(scored: pd.DataFrame) -> None:
    reference, held_out = split(scored, 0)
    shifted = held_out.assign(probability=np.clip(held_out["probability"] + 0.2, 0, 1))
    assert run(reference, shifted).probability.drifted
    assert not run(reference, held_out).probability.drifted


def test_too_few_rows_run_no_test(scored: pd.DataFrame) -> None:
    reference, held_out = split(scored, 0)
    result = run(reference, held_out.head(10))
    assert result.features == [] and result.note and result.share_drifted == 0
