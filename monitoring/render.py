"""The report as one HTML page with plots (matplotlib), from the section results."""

import html

import numpy as np
import pandas as pd

from monitoring.fairness import FOUR_FIFTHS, GroupRate
from monitoring.report import Report
from training.html import Markup, figure, page, pyplot, table

PLOTTED_FEATURES = 6  # the features with the largest PSI get a distribution plot
FAIRNESS_COLUMNS = ["attribute", "group", "rows", "share Yes", "mean risk", "ratio of Yes shares",
                    "ratio of No shares"]  # fmt: skip


def flag(bad: bool, text: str) -> Markup:
    return Markup(f'<span class="{"flag" if bad else "ok"}">{html.escape(text)}</span>')


def _fmt(value: float | None, digits: int = 3) -> str:
    return (
        "-"
        if value is None
        else f"{value:.{digits}g}"
        if abs(value) < 1e-3
        else f"{value:.{digits}f}"
    )


def distribution_plots(report: Report, current: pd.DataFrame) -> str:
    plt = pyplot()
    ref = report.reference.frame
    ranked = sorted(report.drift.features, key=lambda f: -(f.psi or 0))[:PLOTTED_FEATURES]
    names = ["probability", *[f.feature for f in ranked]]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    k = report.min_group_size
    for ax, name in zip(axes.ravel(), names, strict=False):
        if ref[name].dtype.kind in "if":
            bins = np.histogram_bin_edges(
                np.concatenate([ref[name], current[name]]).astype(float), 20
            )
            ax.hist(ref[name], bins=bins, density=True, alpha=0.5, label="training")
            counts, _ = np.histogram(current[name].astype(float), bins)
            shown = np.where(counts >= k, counts, 0) / (len(current) * np.diff(bins))
            ax.stairs(shown, bins, fill=True, alpha=0.5, label=f"logged (bins of {k}+ rows)")
        else:
            logged = current[name].value_counts()
            shares = pd.DataFrame({"training": ref[name].value_counts(normalize=True),
                                   "logged": logged.where(logged >= k, 0) / len(current)}).fillna(0)  # fmt: skip
            shares.plot.bar(ax=ax, rot=45, legend=False)
        ax.set_title(name, fontsize=10)
    axes.ravel()[0].legend(fontsize=8)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    return figure(fig, "distributions, training vs logged")


def drift_section(report: Report, current: pd.DataFrame) -> str:
    d = report.drift
    if d.note:
        return f"<h2>Drift</h2><p>{html.escape(d.note)}</p>"
    rows = [
        [f.feature, f.test, _fmt(f.statistic), _fmt(f.p_value), _fmt(f.psi),
         flag(f.drifted, "drifted" if f.drifted else "no")]
        for f in [*([d.probability] if d.probability else []), *d.features]
    ]  # fmt: skip
    return (
        f"<h2>Drift</h2><p>{len(d.drifted)} of {len(d.features)} features drifted "
        f"(share {d.share_drifted:.2f}): {html.escape(', '.join(d.drifted) or 'none')}. "
        f"Rule: {html.escape(d.summary()['rule'])}; the predicted probability is tested at "
        f"p < {d.alpha}. {d.n_current} logged rows against {d.n_reference} training rows.</p>"
        + table(["feature", "test", "statistic", "p-value", "PSI", "drift"], rows)
        + distribution_plots(report, current)
    )


def quality_section(report: Report) -> str:
    plt = pyplot()
    q = report.quality
    plot = ""
    if q.rows_per_day:
        fig, ax = plt.subplots(figsize=(10, 3))
        ax.bar(list(q.rows_per_day), list(q.rows_per_day.values()), color="C0")
        ax.set(title="Logged predictions per day (UTC)", ylabel="rows")
        ax.tick_params(axis="x", rotation=45)
        plot = figure(fig, "rows per day")
    outside = [[r.feature, r.training, r.current, "-" if r.share_outside is None
                else flag(r.share_outside > 0, f"{r.share_outside:.2%}")] for r in q.ranges]  # fmt: skip
    routes = ", ".join(f"{html.escape(k)}: {v}" for k, v in q.routes.items())
    return (
        f"<h2>Data quality</h2><p>{q.rows} rows; {q.batch_share:.1%} from batch requests, "
        f"{1 - q.batch_share if q.rows else 0:.1%} single ({routes}); "
        f"{report.excluded_what_if} what-if rows left out of every section.</p>{plot}"
        + f"<p>Logged ranges run from the k-th lowest to the k-th highest value, and a new "
        f"category is named and a share given only over at least k rows (k = "
        f"{q.min_group_size}): no single row's value is shown.</p>"
        + table(["feature", "training", "logged", "rows outside training values"], outside)
    )


def fairness_section(report: Report) -> str:
    plt = pyplot()
    f = report.fairness
    if not f.groups:
        return "<h2>Fairness</h2><p>No logged predictions.</p>"
    compared = f.favourable
    attributes = list(dict.fromkeys(g.attribute for g in f.groups))
    fig, axes = plt.subplots(1, len(attributes), figsize=(5 * len(attributes), 3.5))
    for ax, attribute in zip(np.atleast_1d(axes), attributes, strict=True):
        gs = [g for g in f.groups if g.attribute == attribute and not g.suppressed]
        rates = [_rate(g, compared) for g in gs]
        ax.bar([g.group for g in gs], rates, color=["C3" if g.flagged else "C0" for g in gs])
        if rates:
            ax.axhline(0.8 * max(rates), color="k", ls="--", lw=1, label="4/5 of the highest")
            ax.legend(fontsize=8)
        ax.set(title=f"Share labelled {compared} by {attribute}", ylabel=f"share {compared}")
    fig.tight_layout()
    suppressed = f"fewer than {f.min_group_size} rows: suppressed"
    rows = [
        [g.attribute, g.group, suppressed, "-", "-", "-", "-"]
        if g.suppressed
        else [g.attribute, g.group, g.n, _fmt(g.selection_rate), _fmt(g.mean_risk),
              _ratio(g.yes_ratio, compared == "Yes"), _ratio(g.no_ratio, compared == "No")]
        for g in f.groups
    ]  # fmt: skip
    return (
        f"<h2>Fairness</h2><p>{html.escape(f.rule())} Lowest ratio by the rule: "
        f"{_fmt(f.lowest_ratio)} (of the {f.adverse!r} shares: "
        f"{_fmt(f.lowest(f.adverse))}).</p>"
        + table(FAIRNESS_COLUMNS, rows)
        + figure(fig, f"share labelled {compared} by group")
    )


def _rate(g: GroupRate, label: str) -> float:
    rate = g.selection_rate or 0.0
    return rate if label == "Yes" else 1 - rate


def _ratio(ratio: float | None, the_rules: bool) -> str | Markup:
    if ratio is None:
        return "-"
    bad = ratio < FOUR_FIFTHS
    return flag(bad, f"{ratio:.3f}" + (" (rule)" if the_rules and bad else ""))


def performance_section(report: Report) -> str:
    plt = pyplot()
    p = report.performance
    head = (f"<h2>Realized performance</h2><p>{p.n_outcomes} of {p.n_predictions} logged "
            f"predictions have an outcome ({p.n_left} left).")  # fmt: skip
    if p.note:
        return head + f" {html.escape(p.note)}.</p>"
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(*zip(*p.calibration, strict=True), "o-", label="logged predictions")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed rate of leaving", title="Calibration")
    ax.legend(fontsize=8)
    rows = [[g.attribute, g.group, f"fewer than {p.min_group_size}: suppressed" if g.suppressed
             else g.n, _fmt(g.true_positive_rate), _fmt(g.false_positive_rate)]
            for g in p.groups]  # fmt: skip
    return (
        head
        + f" ROC-AUC {_fmt(p.roc_auc)}, Brier {_fmt(p.brier)}.</p>"
        + figure(fig, "calibration on outcomes")
        + table(
            ["attribute", "group", "with outcome", "true positive rate", "false positive rate"],
            rows,
        )
    )


def comparison_section(report: Report) -> str:
    c = report.comparison
    head = "<h2>Challenger comparison</h2>"
    if c.challenger_tag is None or c.note:
        return head + f"<p>{html.escape(c.note or '')}.</p>"
    others = "".join(
        f" {n} rows scored by <code>{html.escape(t)}</code> are left out." for t, n in
        c.other_challengers.items()
    )  # fmt: skip
    q = c.shift_quantiles
    spread = (
        ", ".join(f"{name} {_fmt(v)}" for name, v in q.items())
        if q
        else f"quantiles suppressed (fewer than {2 * c.min_group_size} rows)"
    )
    text = (
        f"<p><code>{html.escape(c.served_tag)}</code> (served) against "
        f"<code>{html.escape(c.challenger_tag)}</code> (challenger) on the {c.n_pairs} "
        f"predictions both scored.{others} Labels agree on {_fmt(c.agreement)} of them "
        f"(both Yes {c.both_yes}, only the served model Yes {c.only_served_yes}, only the "
        f"challenger Yes {c.only_challenger_yes}). Challenger minus served probability: mean "
        f"{_fmt(c.shift_mean)}, standard deviation {_fmt(c.shift_std)}; {spread}.</p>"
    )
    groups = table(
        ["attribute", "group", "rows", "share Yes, served", "share Yes, challenger"],
        [[g.attribute, g.group,
          f"fewer than {c.min_group_size}: suppressed" if g.suppressed else g.n,
          _fmt(g.served_rate), _fmt(g.challenger_rate)] for g in c.groups],
    )  # fmt: skip
    realized = f"<p>{c.n_outcomes} of them have an outcome ({c.n_left} left)."
    if c.performance_note:
        return head + text + groups + realized + f" {html.escape(c.performance_note)}.</p>"
    metrics = table(
        ["metric", "served", "challenger", "difference", "95% interval of the difference"],
        [[m.metric, _fmt(m.served), _fmt(m.challenger), _fmt(m.difference),
          f"{_fmt(m.ci_low)} to {_fmt(m.ci_high)}"] for m in c.metrics],
    )  # fmt: skip
    return (
        head + text + groups + realized + f" Bootstrap: {c.resamples_used} of {c.resamples} "
        f"resamples (seed {c.seed}) held both outcomes.</p>" + metrics
    )


def render(report: Report, current: pd.DataFrame) -> str:
    """The whole report; `current` is the logged rows the sections ran on."""
    body = (
        f"<p>Model <code>{html.escape(report.model_tag)}</code>, predictions logged from "
        f"{report.since.isoformat()} until {report.until.isoformat()}, compared with the "
        f"{len(report.reference.frame)} rows of its training split (sha256 "
        f"<code>{(report.reference.sha256 or '')[:16]}…</code>). Built in {report.seconds:.1f} s.</p>"
        + drift_section(report, current)
        + quality_section(report)
        + fairness_section(report)
        + performance_section(report)
        + comparison_section(report)
    )
    return page("Monitoring report: attrition risk", body)
