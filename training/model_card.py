"""The model card: an HTML page with the model's evaluation plots, written at training time."""

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from monitoring.fairness import FOUR_FIFTHS
from training.fairness import LABELS
from training.from_log import counts_text
from training.html import Markup, figure, page, pyplot, table
from training.schema import FEATURES

if TYPE_CHECKING:
    from training.train import CVResult, TrainingResult

GRID = np.linspace(0, 1, 101)
TOP_COEFFICIENTS = 15


def _band(ax: Any, curves: list[np.ndarray], label: str, colour: str) -> None:
    mean, std = np.mean(curves, axis=0), np.std(curves, axis=0)
    ax.plot(GRID, mean, color=colour, label=label)
    ax.fill_between(GRID, mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def roc_pr_plots(cv: "CVResult", y: np.ndarray) -> str:
    """ROC and PR curves of every CV fold, as the mean and a +/- 1 sd band over the folds."""
    plt = pyplot()
    rocs, prs = [], []
    for rows, p in cv.folds:
        fpr, tpr, _ = roc_curve(y[rows], p)
        rocs.append(np.interp(GRID, fpr, tpr))
        precision, recall, _ = precision_recall_curve(y[rows], p)
        prs.append(np.interp(GRID, recall[::-1], precision[::-1]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    _band(a, rocs, f"mean ROC (AUC {cv.mean('roc_auc'):.3f} ± {cv.std('roc_auc'):.3f})", "C0")
    a.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, CV folds ± 1 sd")
    _band(b, prs, f"mean PR (AP {cv.mean('pr_auc'):.3f} ± {cv.std('pr_auc'):.3f})", "C1")
    b.axhline(y.mean(), color="k", ls="--", lw=0.8, label="base rate")
    b.set(xlabel="recall", ylabel="precision", title="Precision-recall, CV folds ± 1 sd")
    for ax in (a, b):
        ax.legend(loc="best", fontsize=8)
    return figure(fig, "ROC and precision-recall curves")


def calibration_and_threshold_plots(y: np.ndarray, oof: np.ndarray, threshold: float) -> str:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    observed, predicted = calibration_curve(y, oof, n_bins=10, strategy="quantile")
    a.plot(predicted, observed, "o-", label="out-of-fold")
    a.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    a.set(xlabel="predicted probability", ylabel="observed rate of leaving",
          title="Calibration (deciles of out-of-fold probability)")  # fmt: skip
    a.legend(fontsize=8)
    thresholds = np.round(np.arange(0.05, 0.951, 0.01), 2)
    pred = oof[None, :] >= thresholds[:, None]
    tp = (pred & (y == 1)).sum(axis=1)
    precision = np.divide(
        tp, pred.sum(axis=1), out=np.zeros(len(thresholds)), where=pred.any(axis=1)
    )
    recall = tp / max(int(y.sum()), 1)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(thresholds)),
                   where=(precision + recall) > 0)  # fmt: skip
    b.plot(thresholds, precision, label="precision")
    b.plot(thresholds, recall, label="recall")
    b.plot(thresholds, f1, label="F1")
    b.axvline(threshold, color="k", ls="--", lw=1, label=f"chosen threshold {threshold:.2f}")
    b.set(xlabel="threshold", title="Out-of-fold precision, recall and F1 by threshold")
    b.legend(fontsize=8)
    return figure(fig, "calibration and threshold curves")


def importance_plots(result: "TrainingResult", x_train: pd.DataFrame) -> str:
    """Largest coefficients of the preprocessed columns, and mean |contribution| per input."""
    plt = pyplot()
    classifier = result.pipeline.named_steps["classifier"]
    if not hasattr(classifier, "coef_") or result.explainer is None:
        return "<p>This model family has no coefficients.</p>"
    names = result.pipeline.named_steps["preprocess"].get_feature_names_out()
    coef = classifier.coef_.ravel()
    top = np.argsort(-np.abs(coef))[:TOP_COEFFICIENTS][::-1]
    contributions = result.explainer.contributions_of(result.pipeline, x_train)
    mean_abs = np.abs(contributions).mean(axis=0)
    order = np.argsort(mean_abs)[-TOP_COEFFICIENTS:]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 5))
    a.barh([names[i] for i in top], coef[top], color=["C3" if c > 0 else "C0" for c in coef[top]])
    a.set(title="Largest coefficients (log-odds per unit; red raises risk)", xlabel="coefficient")
    b.barh([FEATURES[i] for i in order], mean_abs[order], color="C2")
    b.set(title="Mean |contribution| per input feature (training split)", xlabel="log-odds")
    fig.tight_layout()
    return figure(fig, "coefficients and feature importance")


VARIANT_TITLES = {
    "all-features": "all features",
    "protected-excluded": "protected attributes excluded",
}


def _ratio(value: float | None) -> Markup:
    if value is None:
        return Markup("n/a")
    css = "flag" if value < FOUR_FIFTHS else "ok"
    return Markup(f'<span class="{css}">{value:.3f}</span>')


def _spread(stats: dict[str, float]) -> Markup:
    return Markup(f"{stats['mean']:.3f} ± {stats['std']:.3f}")


def _title(name: str, chosen: str) -> str:
    return VARIANT_TITLES[name] + (" (chosen)" if name == chosen else "")


def variants_section(meta: dict[str, Any]) -> str:
    """The variants side by side: CV scores, test scores, group selection ratios (both
    directions) at each one's threshold, the proxy check and the choice with its trade-off."""
    variants: dict[str, Any] = meta["variants"]
    choice = meta["variant_choice"]
    chosen = choice["chosen"]
    names = [chosen, *choice["compared_with"]]
    on = meta["group_selection"]["on"]
    summary_rows = [
        [_title(n, chosen), ", ".join(v["protected_attributes_excluded"]) or "none",
         v["model_family"], f"{v['threshold']:.2f}", _spread(v["cv"]["roc_auc"]),
         _spread(v["cv"]["pr_auc"]), v["test"]["roc_auc"], v["test"]["pr_auc"],
         *[_ratio(v[key][f"lowest_ratio_{label}"])
           for key in ("group_selection", "group_selection_oof") for label in LABELS]]
        for n in names
        for v in [variants[n]]
    ]  # fmt: skip
    group_rows: list[list[Any]] = []
    first = variants[names[0]]["group_selection"]["attributes"]
    oof_groups = next(iter(variants[names[0]]["group_selection_oof"]["attributes"].values()))
    oof_n = sum(g["n"] for g in oof_groups["groups"])
    for attribute, entry in first.items():
        per_variant = [variants[n]["group_selection"]["attributes"][attribute] for n in names]
        for i, group in enumerate(entry["groups"]):
            row: list[Any] = [attribute, group["group"], group["n"]]
            for v in per_variant:
                row += [v["groups"][i]["rate_Yes"], v["groups"][i]["rate_No"]]
            group_rows.append(row)
        ratio_row: list[Any] = [attribute, Markup("<em>min / max</em>"), ""]
        oof_row: list[Any] = [attribute, Markup("<em>min / max, out-of-fold</em>"), oof_n]
        for n, v in zip(names, per_variant, strict=True):
            oof = variants[n]["group_selection_oof"]["attributes"][attribute]
            ratio_row += [_ratio(v["ratio_Yes"]), _ratio(v["ratio_No"])]
            oof_row += [_ratio(oof["ratio_Yes"]), _ratio(oof["ratio_No"])]
        group_rows += [ratio_row, oof_row]
    group_header = ["attribute", "group", "n"] + [
        f"{VARIANT_TITLES[n]}: share {label}" for n in names for label in LABELS
    ]
    html_out = f"""
<h2>Protected attributes: {"the variants side by side" if len(names) > 1 else "group selection"}</h2>
{table(["variant", "left out", "family", "threshold", "CV ROC-AUC", "CV PR-AUC", "test ROC-AUC",
        "test PR-AUC", "lowest ratio (Yes), test", "lowest ratio (No), test",
        "lowest ratio (Yes), out-of-fold", "lowest ratio (No), out-of-fold"], summary_rows)}
<p class="note">A left-out attribute is dropped inside the pipeline: the model still takes all
{len(FEATURES)} inputs and its contribution in every explanation is exactly 0. CV numbers are
those of each variant's chosen family, mean ± sd over the outer folds.</p>
<h3>Selection rates by group: {html.escape(on)}</h3>
{table(group_header, group_rows)}
<p class="note">Ratio = lowest group rate / highest group rate; under {FOUR_FIFTHS} is flagged
(four-fifths rule). The test split's groups are small (a few flagged employees move a ratio a
lot); the out-of-fold rows are {html.escape(meta["group_selection_oof"]["on"])}: the CV models',
not the saved one's, on four times the rows. "Yes" is the share flagged as likely to leave, "No" the share not flagged:
the rule applies to the rate of the favourable outcome, which is "Yes" when a flag brings
retention help and "No" when a flag can count against the employee. Both are shown; groups as in
the monitoring report.</p>
"""  # fmt: skip
    proxy = meta.get("proxy_check")
    if proxy:
        proxy_rows = [
            [attribute, a["target"], ", ".join(a["groups"]), _spread(a["roc_auc"])]
            for attribute, a in proxy["attributes"].items()
        ]
        html_out += f"""
<h3>Proxy check</h3>
{table(["left-out attribute", "predicted as", "groups", "CV ROC-AUC"], proxy_rows)}
<p class="note">{html.escape(proxy["what"])}. Near 0.5 the remaining features carry little of the
attribute; well above it, leaving the attribute out does not keep the model from using it.</p>
"""  # fmt: skip
    html_out += f"<p><strong>Choice:</strong> {html.escape(choice_statement(meta))}</p>"
    return html_out


def choice_statement(meta: dict[str, Any]) -> str:
    """The variant saved, and what it costs and buys against the other, in one sentence."""
    choice = meta["variant_choice"]
    chosen = choice["chosen"]
    text = f"this model is the {VARIANT_TITLES[chosen]} variant"
    excluded = meta.get("protected_attributes_excluded") or []
    if excluded:
        text += f" ({', '.join(excluded)} left out)"
    trade = choice.get("trade_off")
    if not trade:
        return text + "; no other variant was trained with it (python -m training compares both)."
    other = choice["compared_with"][0]

    def pair(key: str) -> str:
        lows = trade[key]
        return " -> ".join("n/a" if lows[n] is None else f"{lows[n]:.3f}" for n in (other, chosen))

    return (
        f"{text}, chosen over the {VARIANT_TITLES[other]} variant. Leaving the protected attributes "
        f"out changes CV ROC-AUC by {trade['cv_roc_auc_difference']:+.4f} (corrected t "
        f"{trade['corrected_t']:.2f}); the lowest group selection ratio goes "
        f"{pair('lowest_ratio_Yes')} for 'Yes' and {pair('lowest_ratio_No')} for 'No' on the test "
        f"split ({pair('lowest_ratio_Yes_oof')} and {pair('lowest_ratio_No_oof')} out-of-fold; "
        f"{VARIANT_TITLES[other]} -> this model)."
    )


def data_section(meta: dict[str, Any]) -> str:
    """Where the training rows came from, with the --from-log window when there is one."""
    log = meta.get("from_log")
    if not log:
        return ""
    window = log["window"]
    return f"""
<h2>Data from the inference log</h2>
{table(["predictions since", "until", "outcome horizon (days)", "minimum rows", "rows from the log",
        "rows from the original data"],
       [[window["since"], window["until"], log["horizon_days"], log["min_rows"], log["rows_from_log"],
         log["rows_from_original"]]])}
<p class="note">{html.escape(log["label_rule"])} {html.escape(log["dedup_rule"])}
Counts: {html.escape(counts_text(log["counts"]))}.</p>
"""  # fmt: skip


def render(result: "TrainingResult", x_train: pd.DataFrame, y_train: pd.Series) -> str:
    meta = result.metadata
    best = next(r for r in result.cv if r.family == result.family)
    y = y_train.to_numpy()
    cv_rows = [
        [r.family + (" (chosen)" if r.family == result.family else "")]
        + [
            Markup(f"{r.mean(m):.3f} ± {r.std(m):.3f}")
            for m in ("roc_auc", "pr_auc", "f1", "brier")
        ]
        for r in result.cv
    ]
    t = meta["test"]
    explanation = meta.get("explanation", {})
    excluded = meta.get("protected_attributes_excluded") or []
    inputs_statement = (
        f"{', '.join(excluded)} are left out of the features (dropped inside the pipeline)."
        if excluded
        else "Gender, age and marital status are model inputs."
    )
    body = f"""
<p>Employee attrition risk, {html.escape(str(meta['model_family']))}, trained
{html.escape(str(meta['trained_at']))} on {meta['n_train']} of {meta['n_rows']} rows of
<code>{html.escape(str(meta['data_source']))}</code> (sha256 <code>{meta['data_sha256'][:16]}…</code>).</p>
<h2>Intended use</h2>
<p>A risk score to help HR teams decide where to look and talk: not an automated decision about
any person. {html.escape(inputs_statement)} The monitoring report shows selection rates by gender,
age band and marital status (four-fifths rule) on live predictions.</p>
{data_section(meta)}
<h2>Cross-validation ({html.escape(meta['cv_scheme'])}, F1 at 0.5)</h2>
{table(["model", "ROC-AUC", "PR-AUC", "F1", "Brier"], cv_rows)}
<p class="note">Regularisation: {html.escape(str(meta.get('regularisation', {}).get('rule', 'fixed')))};
chosen C = {meta.get('regularisation', {}).get('chosen_C')}. The cross-validation above includes that
choice (nested CV). Variants tried: <code>python -m training.search</code>.</p>
<h2>Held-out test ({t['n']} rows, threshold {result.threshold:.2f})</h2>
{table(["ROC-AUC", "PR-AUC", "F1", "precision", "recall", "Brier", "confusion [[TN, FP], [FN, TP]]"],
       [[t['roc_auc'], t['pr_auc'], t['f1'], t['precision'], t['recall'], t['brier'], t['confusion_matrix']]])}
<p class="note">Threshold rule: {html.escape(meta['threshold_rule'])}.</p>
<h2>Curves</h2>
{roc_pr_plots(best, y)}{calibration_and_threshold_plots(y, best.oof, result.threshold)}
<h2>What drives the score</h2>
{importance_plots(result, x_train)}
<p class="note">Explanations served with <code>explain=true</code>: {html.escape(str(explanation.get('description', explanation.get('note'))))}.
Largest |base + sum − logit(p)| on the data: {explanation.get('max_additivity_error')}
(scikit-learn), {explanation.get('onnx_max_additivity_error')} (ONNX Runtime).</p>
{variants_section(meta)}
<h2>Serving</h2>
<p>ONNX export: {html.escape(meta['onnx']['note'])}. Library versions: {html.escape(str(meta['versions']))}.</p>
"""  # fmt: skip
    return page("Model card: attrition risk", body)
