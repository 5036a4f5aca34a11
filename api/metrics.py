"""Prometheus metrics of the HTTP layer and the model calls, created once per worker (after
BentoML has set up multiprocess collection, so they show on /metrics with BentoML's own), and the
gauges written as text at scrape time."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.request import urlopen


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
    """The counter of requests to `route` answered on the fast path (api/fastpath.py)."""
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


@lru_cache
def model_unavailable() -> Any:
    import prometheus_client as prom

    return prom.Counter(
        "attrition_model_unavailable",
        "Calls to the model service given up: unreachable for the whole retry budget (HTTP 503)",
    )


def gauge_text(name: str, doc: str, value: float) -> list[str]:
    return [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {float(value)!r}"]


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
        lines += gauge_text(name, doc, value)
    return "\n".join(lines) + "\n" if lines else ""


DISK_GAUGES = (
    ("attrition_inference_log_disk_bytes",
     "Bytes of the inference log's files on this instance (write-ahead files, dead letters)"),
    ("attrition_inference_log_volume_free_bytes",
     "Bytes the service may still write on the volume holding the inference log's files"),
    ("attrition_inference_log_volume_size_bytes",
     "Size of the volume holding the inference log's files, in bytes"),
)  # fmt: skip


def disk_gauges(directory: Path) -> str:
    """Prometheus text: the inference log's files on disk and the room left on their volume.

    Measured at scrape time: the files are the instance's, shared by its workers, so every
    worker reports the same values, and a scrape costs a listing of a few files.
    """
    try:
        volume = os.statvfs(directory)
    except OSError:  # not created yet
        return ""
    used = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                used += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # rotated away meanwhile
                continue
    values = (used, volume.f_bavail * volume.f_frsize, volume.f_blocks * volume.f_frsize)
    lines = [
        ln
        for (name, doc), v in zip(DISK_GAUGES, values, strict=True)
        for ln in gauge_text(name, doc, v)
    ]
    return "\n".join(lines) + "\n"


MODEL_UP = (
    "attrition_model_service_up",
    "1 when the model service answered its readiness probe (GET /readyz) at this scrape, else 0",
)
# Within Prometheus's scrape timeout (10 s by default) with room for the rest of the scrape.
MODEL_PROBE_SECONDS = 2.0


def model_service_gauge(url: str | None) -> str:
    """Prometheus text: whether the separately served model service (the split topology) is ready,
    probed at scrape time, so the signal exists with no client traffic. Nothing when the model
    service runs inside this server."""
    if url is None:
        return ""
    try:
        with urlopen(f"{url.rstrip('/')}/readyz", timeout=MODEL_PROBE_SECONDS) as r:
            up = r.status == 200
    except (OSError, ValueError):  # refused, timed out, an HTTP error status; a bad URL
        up = False
    return "\n".join(gauge_text(*MODEL_UP, float(up))) + "\n"
