"""Prometheus metrics of the inference log, created once per worker (after BentoML has set up
multiprocess collection, so they show on /metrics with BentoML's own)."""

from functools import lru_cache


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
            "Dead letters: the table's (as last counted) and this instance's file",
            # Every worker counts the same table: the latest count wins. With "max", the last
            # count of a worker that died stayed in the maximum after the letters were retried.
            multiprocess_mode="mostrecent",
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
            "Records written from the files of stopped workers",
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
