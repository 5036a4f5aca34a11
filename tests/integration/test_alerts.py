"""The alert rules on a real Prometheus scraping a real server: every metric the rules and the
dashboard read is exported; a record the database refuses makes AttritionDeadLetters pending,
then firing, and the retry command resolves it, also after an entry worker was killed; a model
service that stops makes AttritionModelServiceDown fire from the entry's probes alone."""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import yaml
from sqlmodel import Session

from loadtests.log_crash import entry_workers
from persistence.db import make_engine
from persistence.reports import save_report
from tests.conftest import PASSWORD, SERVER_ENV, PostgresDatabases, Stack, seed_users, start_stack
from tests.harness import split_topology
from tests.helpers import PROJECT_DIR, employee_rows
from tests.integration.prometheus import Prometheus
from tests.promql import (
    RULES,
    dashboard_exprs,
    dashboard_variable_metrics,
    ensure_promtool,
    metric_names,
    rule_exprs,
)

pytestmark = pytest.mark.integration

DEAD_LETTERS = "AttritionDeadLetters"
MODEL_DOWN = "AttritionModelServiceDown"
# The tests' copy of the rules waits this long instead of minutes before firing, so the pending
# phase shows within seconds; the expressions are the rule file's.
SHORT_FOR = "5s"


def start_prometheus(target: str, work: Path, shortened: str) -> Prometheus:
    """A Prometheus scraping `target` with the project's rules, `shortened`'s `for` SHORT_FOR."""
    ensure_promtool()
    rules = yaml.safe_load(RULES.read_text())
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == shortened]
    rule["for"] = SHORT_FOR
    (work / "rules.yaml").write_text(yaml.safe_dump(rules))
    return Prometheus(target, work / "rules.yaml", work)


@pytest.fixture(scope="module")
def served(
    model_tag: str, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A server of this module's own (its dead letters and counters are this module's), with a
    monitoring report in its database so the report's gauges are on /metrics from the start."""
    stack = start_stack("postgresql", model_tag, postgres, tmp_path_factory.mktemp("alerts"))
    try:
        engine = make_engine(stack.url)
        with Session(engine) as session:
            summary = {"drift": {"share_drifted": 0.0}, "fairness": {"lowest_ratio": 0.95}}
            save_report(session=session, model_tag=model_tag, summary=summary)
        engine.dispose()
        yield stack
    finally:
        stack.server.stop()


@pytest.fixture(scope="module")
def prometheus(served: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = start_prometheus(
        served.server.url, tmp_path_factory.mktemp("prometheus"), DEAD_LETTERS
    )
    yield server
    server.stop()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pg(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def test_every_metric_the_rules_and_the_dashboard_read_is_exported(
    served: Stack, prometheus: Prometheus
) -> None:
    url = served.server.url
    headers = served.headers("analyst")
    r = httpx.post(f"{url}/predict/attrition", json=employee_rows(1)[0], headers=headers)
    assert r.status_code == 200
    unauthenticated = httpx.post(f"{url}/predict/attrition", json=employee_rows(1)[0])
    assert unauthenticated.status_code == 401  # a labelled counter's first series
    login = {"username": "predictor", "password": PASSWORD}
    assert httpx.post(f"{url}/auth/token", data=login, timeout=60).status_code == 200
    # A name locks at its third failure here (ATTRITION_LOGIN_MAX_FAILURES=3); the fourth is
    # refused unchecked and locks nothing more.
    wrong = {"username": f"guess-{uuid.uuid4().hex[:6]}", "password": "not-the-password"}
    codes = [httpx.post(f"{url}/auth/token", data=wrong, timeout=60).status_code for _ in range(4)]
    assert codes == [400, 400, 400, 429]

    read = set().union(*map(metric_names, [*rule_exprs().values(), *dashboard_exprs().values()]))
    read |= dashboard_variable_metrics()
    # Only an entry calling a separately served model service exports it (the split topology's
    # test below checks it).
    read -= {"attrition_model_service_up"}
    deadline = time.monotonic() + 30
    while not read <= (scraped := prometheus.metric_names()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read <= scraped, f"not exported: {sorted(read - scraped)}"
    assert wait_for(lambda: prometheus.value("sum(attrition_login_lockouts_total)") == 1, "1 lockout")  # fmt: skip
    logged = prometheus.value("sum(attrition_inference_log_disk_bytes)")
    assert logged is not None and logged > 0  # the prediction's write-ahead file
    free = prometheus.value("sum(attrition_inference_log_volume_free_bytes)")
    size = prometheus.value("sum(attrition_inference_log_volume_size_bytes)")
    assert free is not None and size is not None and 0 < free <= size
    assert prometheus.value("max(attrition_monitoring_min_selection_ratio)") == 0.95


def test_a_refused_record_fires_the_dead_letter_alert_and_a_retry_resolves_it(
    served: Stack, prometheus: Prometheus
) -> None:
    url = served.server.url
    gauge = "max(attrition_inference_log_dead_letter_records)"
    wait_for(lambda: prometheus.value(gauge) == 0, "the dead-letter gauge at 0 in Prometheus")
    assert prometheus.alerts(DEAD_LETTERS) == []
    poison = f"E-POISON-{uuid.uuid4().hex[:6]}"
    rule = f"ALTER TABLE inferences ADD CONSTRAINT refuse_poison CHECK (employee_ref <> '{poison}')"
    with pg(served.url) as conn:
        conn.execute(rule)
    try:
        t0 = time.monotonic()
        r = httpx.post(f"{url}/predict/attrition", json={**employee_rows(1)[0], "employee_ref": poison},
                       headers=served.headers("analyst"), timeout=30)  # fmt: skip
        assert r.status_code == 200  # answered: the record waits in the dead letters
        sent = time.monotonic() - t0

        pending = wait_for(lambda: state(prometheus, DEAD_LETTERS, "pending", t0), "pending")
        firing = wait_for(lambda: state(prometheus, DEAD_LETTERS, "firing", t0), "firing")
        [alert] = prometheus.alerts(DEAD_LETTERS)
        assert alert["labels"]["severity"] == "warning" and float(alert["value"]) == 1
        assert alert["labels"]["instance"] == url.split("://")[1]
    finally:
        with pg(served.url) as conn:
            conn.execute("ALTER TABLE inferences DROP CONSTRAINT IF EXISTS refuse_poison")

    # An entry worker dies while the letter waits; BentoML starts another. Its last count stays
    # in its metrics file, and must not keep the alert firing after the retry.
    [victim, *_] = entry_workers(served.server)
    victim.send_signal(signal.SIGKILL)
    psutil.wait_procs([victim], timeout=10)
    wait_for(lambda: victim.pid not in {p.pid for p in entry_workers(served.server)} and
             len(entry_workers(served.server)) == 2, "a new entry worker")  # fmt: skip
    assert prometheus.alerts(DEAD_LETTERS)[0]["state"] == "firing"

    env = {**os.environ, "ATTRITION_DATABASE_URL": served.url,
           "ATTRITION_DATA_DIR": str(served.settings.data_dir)}  # fmt: skip
    retry_started = time.monotonic() - t0
    retried = subprocess.run(
        [sys.executable, "-m", "persistence", "dead-letters", "retry"],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert retried.returncode == 0 and "1 dead letters written" in retried.stdout, retried.stdout + retried.stderr  # fmt: skip
    retried_at = time.monotonic() - t0
    resolved = wait_for(
        lambda: None if prometheus.alerts(DEAD_LETTERS) else time.monotonic() - t0,
        "the alert resolved",
    )
    with pg(served.url) as conn:
        row = conn.execute("SELECT count(*) FROM inferences WHERE employee_ref = %s", (poison,))
        assert row.fetchone() == (1,)
    print(
        f"\ndead-letter alert timeline (s after the poison request was sent; scrape and rule "
        f"evaluation every 1 s, `for` {SHORT_FOR}): answered {sent:.1f}, pending "
        f"{pending:.1f}, firing {firing:.1f}, retry started {retry_started:.1f} and done "
        f"{retried_at:.1f}, resolved {resolved:.1f}"
    )
    assert sent < pending < firing < retry_started < retried_at < resolved
    assert firing - pending >= 4.5  # the rule's `for`, at 1 s evaluations


def test_a_stopped_model_service_fires_the_model_service_alert(
    model_tag: str, postgres: PostgresDatabases, tmp_path: Path
) -> None:
    """The split topology (the model service on a server of its own, as in Kubernetes): when the
    model service stops, the entry's probe at each scrape makes the alert fire with no client
    traffic; predictions then give up on it (503) and are counted."""
    url = postgres.create()
    seed_users(url)
    env = {**SERVER_ENV, "ATTRITION_MODEL_TAG": model_tag, "ATTRITION_DATABASE_URL": url,
           "ATTRITION_DATA_DIR": str(tmp_path / "data"), "ATTRITION_MODEL_RETRY_SECONDS": "1"}  # fmt: skip
    with split_topology(env, tmp_path / "servers", entries=1) as (model, [entry]):
        (tmp_path / "prometheus").mkdir()
        prometheus = start_prometheus(entry.url, tmp_path / "prometheus", MODEL_DOWN)
        try:
            up = "min(attrition_model_service_up)"
            wait_for(lambda: prometheus.value(up) == 1, "the model service up in Prometheus")
            assert prometheus.alerts(MODEL_DOWN) == []
            t0 = time.monotonic()
            model.stop()
            stopped = time.monotonic() - t0
            pending = wait_for(lambda: state(prometheus, MODEL_DOWN, "pending", t0), "pending")
            firing = wait_for(lambda: state(prometheus, MODEL_DOWN, "firing", t0), "firing")
            print(
                f"\nmodel service alert timeline (s after SIGTERM to the model server; scrape and "
                f"evaluation every 1 s, `for` {SHORT_FOR}): stopped {stopped:.1f}, pending "
                f"{pending:.1f}, firing {firing:.1f}"
            )
            assert prometheus.value(up) == 0
            headers = {"Authorization": f"Bearer {bearer_token(entry.url)}"}
            for _ in range(3):
                r = httpx.post(f"{entry.url}/predict/attrition", json=employee_rows(1)[0],
                               headers=headers, timeout=60)  # fmt: skip
                assert r.status_code == 503, r.text
            given_up = "sum(attrition_model_unavailable_total)"
            assert wait_for(lambda: prometheus.value(given_up) == 3, "3 predictions given up")
        finally:
            prometheus.stop()


def state(prometheus: Prometheus, alert: str, wanted: str, t0: float) -> float | None:
    """Seconds since t0 once `alert` is in the `wanted` state, else None."""
    active = prometheus.alerts(alert)
    return time.monotonic() - t0 if any(a["state"] == wanted for a in active) else None


def bearer_token(url: str) -> str:
    login = {"username": "predictor", "password": PASSWORD}
    r = httpx.post(f"{url}/auth/token", data=login, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])
