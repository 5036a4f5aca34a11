"""Prometheus metrics of the inference log, created once per worker (after BentoML has set up
multiprocess collection, so they show on /metrics with BentoML's own)."""

from functools import lru_cache
from typing import Any


class PrometheusLogMetrics:
    def __init__(self) -> None:
        import prometheus_client as prom  # imported late: the worker sets PROMETHEUS_MULTIPROC_DIR

        self.backlog = prom.Gauge(
            "attrition_inference_log_backlog_records",
            "Records in the worker's write-ahead file not yet in the database",
            multiprocess_mode="livesum",
        )
        self.dead_letter_records = prom.Gauge(
            "attrition_inference_log_dead_letter_records",
            "Records in the dead-letter file (shared by the workers)",
            multiprocess_mode="max",
        )
        self.written_total = prom.Counter(
            "attrition_inference_log_written", "Records written to the database"
        )
        self.failed_total = prom.Counter(
            "attrition_inference_log_failed",
            "Records whose database write failed (they stay in the write-ahead file)",
        )
        self.replayed_total = prom.Counter(
            "attrition_inference_log_replayed",
            "Records written from the files of stopped workers (or an old spool)",
        )
        self.dead_lettered_total = prom.Counter(
            "attrition_inference_log_dead_lettered",
            "Records put in the dead-letter file because the database refuses them",
        )

    def observe(self, *, backlog: int, dead_letters: int) -> None:
        self.backlog.set(backlog)
        self.dead_letter_records.set(dead_letters)

    def written(self, n: int) -> None:
        self.written_total.inc(n)

    def failed(self, n: int) -> None:
        self.failed_total.inc(n)

    def replayed(self, n: int) -> None:
        self.replayed_total.inc(n)

    def dead_lettered(self, n: int) -> None:
        self.dead_lettered_total.inc(n)


@lru_cache
def log_metrics() -> PrometheusLogMetrics:
    return PrometheusLogMetrics()


@lru_cache
def rejected_counter() -> Any:
    import prometheus_client as prom

    return prom.Counter(
        "attrition_rejected_requests",
        "Prediction requests refused before inference, by reason",
        ["reason"],
    )


@lru_cache
def fast_path_counter(route: str) -> Any:
    """The counter of requests to `route` answered on the fast path (auth/fastpath.py)."""
    return _fast_path_counter().labels(route=route)


@lru_cache
def _fast_path_counter() -> Any:
    import prometheus_client as prom

    return prom.Counter(
        "attrition_fast_path_requests",
        "Requests answered on the fast path; the route's others took BentoML's full stack",
        ["route"],
    )


@lru_cache
def runner_batch_histogram() -> Any:
    import prometheus_client as prom

    return prom.Histogram(
        "attrition_runner_batch_employees",
        "Employees scored together in one runner batch",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    )


GAUGES = (
    ("attrition_monitoring_drift_share", "Share of input features flagged as drifted"),
    ("attrition_monitoring_min_selection_ratio",
     "Lowest selection-rate ratio of a group to the most-selected group (four-fifths rule: < 0.8)"),
    ("attrition_monitoring_report_age_seconds", "Seconds since the last monitoring report"),
)  # fmt: skip


def monitoring_gauges(report: tuple[Any, dict[str, Any]] | None, now: Any) -> str:
    """Prometheus text for the last monitoring report (created_at, summary); nothing without one,
    and no gauge for a value the report does not have.

    Written as text at scrape time rather than as prometheus_client gauges: the values come
    from the database, are the same in every worker, and the age must be computed per scrape.
    """
    if report is None:
        return ""
    created_at, summary = report
    drift = summary.get("drift", {})
    values = (
        # No feature tested (too few rows): its share of 0.0 would read as "nothing drifted".
        None if drift.get("features") == [] else drift.get("share_drifted"),
        summary.get("fairness", {}).get("lowest_ratio"),
        (now - created_at).total_seconds(),
    )
    lines = []
    for (name, doc), value in zip(GAUGES, values, strict=True):
        if value is None:
            continue
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {float(value)!r}"]
    return "\n".join(lines) + "\n" if lines else ""
