"""The model card's fairness numbers (both variants' CV scores, group selection ratios in both
directions, the proxy check) equal an independent computation on the same rows."""

import html
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedKFold, train_test_split

from tests.training.conftest import SMALL
from training.data import split_xy
from training.fairness import PROTECTED, group_selection
from training.pipeline import build_estimator, build_pipeline
from training.train import TrainingResult, summary

VARIANTS = ("protected-excluded", "all-features")


def band(age: int) -> str:
    """The monitoring report's age bands, written out again."""
    return (
        "under 30" if age < 30 else "30-39" if age < 40 else "40-49" if age < 50 else "50 and over"
    )


def groups_of(x: pd.DataFrame) -> dict[str, pd.Series]:
    return {
        "Gender": x["Gender"],
        "age band": x["Age"].map(band),
        "MaritalStatus": x["MaritalStatus"],
    }


def splits(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series, pd.Series]:
    x, y = split_xy(frame)
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=SMALL["seed"])  # type: ignore[return-value]


def card_row(card: str, first: str, second: str) -> list[str]:
    """The cells after `first`, `second` in the card's tables (tags stripped)."""
    for row in re.findall(r"<tr>(.*?)</tr>", card):
        cells = [
            html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td>(.*?)</td>", row)
        ]
        if cells[:2] == [first, second]:
            return cells[2:]
    raise AssertionError(f"no row {first} / {second} in the card")


def test_group_selection_counts_by_hand() -> None:
    x = pd.DataFrame({"Gender": ["Female"] * 4 + ["Male"] * 6, "Age": [25] * 5 + [45] * 5,
                      "MaritalStatus": ["Single"] * 10})  # fmt: skip
    labels = ["Yes", "Yes", "No", "No", "Yes", "Yes", "No", "No", "No", "No"]
    got = group_selection(x, labels)["attributes"]
    gender = got["Gender"]
    assert gender["groups"] == [
        {"group": "Female", "n": 4, "rate_Yes": 0.5, "rate_No": 0.5},
        {"group": "Male", "n": 6, "rate_Yes": 2 / 6, "rate_No": 4 / 6},
    ]
    assert gender["ratio_Yes"] == pytest.approx((2 / 6) / 0.5)  # 0.667: flagged
    assert gender["ratio_No"] == pytest.approx(0.5 / (4 / 6))  # 0.75: flagged too
    assert gender["flagged_Yes"] and gender["flagged_No"]
    ages = got["age band"]
    assert [g["group"] for g in ages["groups"]] == ["under 30", "40-49"]
    assert ages["ratio_Yes"] == pytest.approx(0.2 / 0.6) and ages["ratio_No"] == pytest.approx(
        0.4 / 0.8
    )
    assert got["MaritalStatus"]["ratio_Yes"] == 1.0 and not got["MaritalStatus"]["flagged_Yes"]
    # Nobody selected in any group: no ratio, nothing flagged (not a division by zero).
    nobody = group_selection(x, ["No"] * 10)["attributes"]["Gender"]
    assert nobody["ratio_Yes"] is None and not nobody["flagged_Yes"] and nobody["ratio_No"] == 1.0


@pytest.mark.parametrize("name", VARIANTS)
def test_group_ratios_on_the_card_equal_an_independent_count_on_the_test_rows(
    governed: TrainingResult, small_frame: pd.DataFrame, name: str
) -> None:
    variant = next(v for v in governed.variants if v.name == name)
    _, x_test, _, _ = splits(small_frame)
    flagged = variant.pipeline.predict_proba(x_test)[:, 1] >= variant.threshold
    stored = governed.metadata["variants"][name]["group_selection"]["attributes"]
    title = {"protected-excluded": "protected attributes excluded", "all-features": "all features"}
    column = [f"{title[n]}: share {label}" for n in VARIANTS for label in ("Yes", "No")]
    order = column.index(f"{title[name]}: share Yes")
    ratios = ratios_of(flagged, x_test)
    for attribute, groups in groups_of(x_test).items():
        yes = pd.Series(flagged, index=x_test.index).groupby(groups).mean()
        ratio_yes, ratio_no = ratios[attribute]
        entry = stored[attribute]
        assert {g["group"]: g["rate_Yes"] for g in entry["groups"]} == pytest.approx(yes.to_dict())
        assert {g["group"]: g["n"] for g in entry["groups"]} == groups.value_counts().to_dict()
        assert entry["ratio_Yes"] == pytest.approx(ratio_yes, abs=1e-12)
        assert entry["ratio_No"] == pytest.approx(ratio_no, abs=1e-12)
        cells = card_row(governed.card or "", attribute, "min / max")[1:]
        assert cells[order : order + 2] == [f"{ratio_yes:.3f}", f"{ratio_no:.3f}"]
    lowest = governed.metadata["variants"][name]["group_selection"]["lowest_ratio_No"]
    assert lowest == min(stored[a]["ratio_No"] for a in stored)


def ratios_of(flagged: np.ndarray, x: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """min/max of the Yes shares and of the No shares by group, with pandas alone."""
    out = {}
    for attribute, groups in groups_of(x).items():
        yes = pd.Series(flagged, index=x.index).groupby(groups).mean()
        out[attribute] = (yes.min() / yes.max(), (1 - yes).min() / (1 - yes).max())
    return out


def test_cv_scores_and_out_of_fold_ratios_equal_an_independent_cross_validation(
    governed: TrainingResult, small_frame: pd.DataFrame
) -> None:
    x_train, _, y_train, _ = splits(small_frame)
    folds = RepeatedStratifiedKFold(
        n_splits=SMALL["folds"], n_repeats=SMALL["repeats"], random_state=SMALL["seed"]
    )
    column = {"protected-excluded": 0, "all-features": 2}  # of the ratio cells, after "n"
    roc: dict[str, np.ndarray] = {}
    for name, exclude in zip(VARIANTS, (PROTECTED, ()), strict=True):
        per_fold: dict[str, list[float]] = {"roc_auc": [], "pr_auc": []}
        oof = np.zeros(len(y_train))
        for fit_rows, val_rows in folds.split(x_train, y_train):
            estimator = build_estimator("logistic_regression", SMALL["seed"], exclude)
            estimator.fit(x_train.iloc[fit_rows], y_train.iloc[fit_rows])
            p = estimator.predict_proba(x_train.iloc[val_rows])[:, 1]
            oof[val_rows] += p / SMALL["repeats"]
            truth = y_train.iloc[val_rows]
            per_fold["roc_auc"].append(roc_auc_score(truth, p))
            per_fold["pr_auc"].append(average_precision_score(truth, p))
        stored = governed.metadata["variants"][name]
        title = "protected attributes excluded (chosen)" if exclude else "all features"
        cells = card_row(governed.card or "", title, "Age, Gender, MaritalStatus" if exclude else "none")  # fmt: skip
        for metric, cell in (("roc_auc", cells[2]), ("pr_auc", cells[3])):
            mean, sd = np.mean(per_fold[metric]), np.std(per_fold[metric], ddof=1)
            assert stored["cv"][metric]["mean"] == pytest.approx(mean, abs=1e-12)
            assert stored["cv"][metric]["std"] == pytest.approx(sd, abs=1e-12)
            assert cell == f"{mean:.3f} ± {sd:.3f}"
        roc[name] = np.array(per_fold["roc_auc"])
        for attribute, (yes, no) in ratios_of(oof >= stored["threshold"], x_train).items():
            entry = stored["group_selection_oof"]["attributes"][attribute]
            assert entry["ratio_Yes"] == pytest.approx(yes, abs=1e-12)
            assert entry["ratio_No"] == pytest.approx(no, abs=1e-12)
            cells = card_row(governed.card or "", attribute, "min / max, out-of-fold")
            assert cells[0] == str(len(x_train))
            assert cells[1 + column[name] : 3 + column[name]] == [f"{yes:.3f}", f"{no:.3f}"]
    trade = governed.metadata["variant_choice"]["trade_off"]
    diff = roc["protected-excluded"] - roc["all-features"]
    assert trade["cv_roc_auc_difference"] == pytest.approx(diff.mean(), abs=1e-12)
    assert f"changes CV ROC-AUC by {diff.mean():+.4f}" in html.unescape(governed.card or "")


def test_proxy_check_equals_an_independent_computation(
    governed: TrainingResult, small_frame: pd.DataFrame
) -> None:
    x_train, _, _, _ = splits(small_frame)
    proxy = governed.metadata["proxy_check"]
    assert proxy["family"] == "logistic_regression"
    assert list(proxy["attributes"]) == ["Age", "Gender", "MaritalStatus"]
    targets = groups_of(x_train)
    for attribute, target_name in (("Age", "age band"), ("Gender", "Gender"),
                                   ("MaritalStatus", "MaritalStatus")):  # fmt: skip
        target = targets[target_name]
        aucs = []
        folds = StratifiedKFold(5, shuffle=True, random_state=SMALL["seed"])
        for fit_rows, val_rows in folds.split(x_train, target):
            model = build_pipeline("logistic_regression", SMALL["seed"], exclude=PROTECTED)
            model.fit(x_train.iloc[fit_rows], target.iloc[fit_rows])
            p = model.predict_proba(x_train.iloc[val_rows])
            truth = target.iloc[val_rows]
            aucs.append(roc_auc_score(truth, p[:, 1]) if p.shape[1] == 2
                        else roc_auc_score(truth, p, multi_class="ovr", average="macro"))  # fmt: skip
        stored = proxy["attributes"][attribute]["roc_auc"]
        assert stored["mean"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert stored["std"] == pytest.approx(np.std(aucs, ddof=1), abs=1e-12)
        cells = card_row(governed.card or "", attribute, target_name)
        assert cells[-1] == f"{np.mean(aucs):.3f} ± {np.std(aucs, ddof=1):.3f}"


def test_the_card_and_the_summary_state_the_choice_and_both_directions(
    governed: TrainingResult,
) -> None:
    meta = governed.metadata
    assert meta["protected_attributes_excluded"] == ["Age", "Gender", "MaritalStatus"]
    assert meta["variant_choice"]["chosen"] == "protected-excluded"
    assert meta["variant_choice"]["compared_with"] == ["all-features"]
    assert (
        meta["group_selection"]["attributes"]
        == (meta["variants"]["protected-excluded"]["group_selection"]["attributes"])
    )
    card = html.unescape(governed.card or "")
    assert "Choice:" in card and "chosen over the all features variant" in card
    assert "Age, Gender, MaritalStatus are left out of the features" in card
    text = summary(governed)
    assert "protected-excluded *" in text and "all-features" in text
    for name in VARIANTS:
        roc = meta["variants"][name]["cv"]["roc_auc"]
        assert f"{roc['mean']:.3f} ± {roc['std']:.3f}" in text
        age = meta["variants"][name]["group_selection"]["attributes"]["age band"]
        assert f"{age['ratio_Yes']:.3f} / {age['ratio_No']:.3f}" in text
