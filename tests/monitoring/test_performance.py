"""Realized performance: only predictions with an outcome count, and the report says how many."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from monitoring.performance import MIN_OUTCOMES, performance


def log_of(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, n)
    return pd.DataFrame(
        {
            "id": [f"id-{i}" for i in range(n)],
            "probability": p,
            "label": np.where(p >= 0.4, "Yes", "No"),
            "Gender": rng.choice(["Female", "Male"], n),
            "Age": rng.integers(20, 60, n),
            "MaritalStatus": rng.choice(["Single", "Married", "Divorced"], n),
        }
    )


def test_metrics_use_only_the_predictions_with_outcomes() -> None:
    log = log_of(200)
    rng = np.random.default_rng(1)
    with_outcome = log.sample(80, random_state=2)
    left = rng.uniform(0, 1, 80) < with_outcome["probability"].to_numpy()
    outcomes = pd.DataFrame(
        {"inference_id": with_outcome["id"], "outcome": np.where(left, "left", "stayed")}
    )
    result = performance(log, outcomes)
    assert (result.n_predictions, result.n_outcomes, result.n_left) == (200, 80, int(left.sum()))
    assert result.roc_auc == pytest.approx(roc_auc_score(left, with_outcome["probability"]))
    assert result.brier == pytest.approx(brier_score_loss(left, with_outcome["probability"]))
    assert result.calibration and all(0 <= a <= 1 and 0 <= b <= 1 for a, b in result.calibration)
    female = next(g for g in result.groups if g.attribute == "Gender" and g.group == "Female")
    rows = with_outcome["Gender"].to_numpy() == "Female"
    predicted = with_outcome["label"].to_numpy()[rows] == "Yes"
    assert female.n == rows.sum()
    assert female.true_positive_rate == pytest.approx(predicted[left[rows]].mean())
    assert female.false_positive_rate == pytest.approx(predicted[~left[rows]].mean())


def test_too_few_outcomes_give_counts_and_no_metrics() -> None:
    log = log_of(100)
    outcomes = pd.DataFrame({"inference_id": log["id"][: MIN_OUTCOMES - 1], "outcome": "left"})
    result = performance(log, outcomes)
    assert result.n_outcomes == MIN_OUTCOMES - 1 and result.roc_auc is None and result.note
