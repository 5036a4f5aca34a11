"""Locust suite: HR analysts scoring employees one by one and in batches, and reading history."""

import json
import os
import random
import time
from typing import Any

from locust import HttpUser, between, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import RequestStats, StatsEntry

from training.data import load_reference
from training.schema import FEATURES, YEAR_RULES, bounds

USERNAME = os.environ.get("LOADTEST_USERNAME", "loadtest")
PASSWORD = os.environ.get("LOADTEST_PASSWORD", "loadtest-password")
LOGIN = "/auth/token"
BATCH_SIZES = (10, 100)
HISTORY_PAGE = 50
LABELS = {"Yes", "No"}
PREDICTION_KEYS = frozenset({"request_id", "probability", "label", "threshold", "model_tag"})
BATCH_KEYS = frozenset({"request_id", "threshold", "model_tag", "predictions"})
# Log in again this long before the token expires, so no request is sent with a stale token.
TOKEN_MARGIN_SECONDS = 60
# Tries of a login the service answers with 503 + Retry-After (too many logins in progress).
LOGIN_ATTEMPTS = 10

# Loaded once per locust process; every user draws from the same 1,470 real employees.
EMPLOYEES: list[dict[str, Any]] = load_reference()[list(FEATURES)].to_dict("records")

# Fields that move between requests: relative (fraction) or absolute (units) noise. Fields named
# in the cross-field year rules stay as recorded, so every jittered employee remains valid.
RELATIVE_JITTER = {
    "MonthlyIncome": 0.10,
    "MonthlyRate": 0.10,
    "DailyRate": 0.10,
    "HourlyRate": 0.10,
}
ABSOLUTE_JITTER = {
    "DistanceFromHome": 3,
    "PercentSalaryHike": 2,
    "TrainingTimesLastYear": 1,
    "NumCompaniesWorked": 1,
}
_RULE_FIELDS = {name for small, large, _ in YEAR_RULES for name in (small, large)}
assert not _RULE_FIELDS & (RELATIVE_JITTER.keys() | ABSOLUTE_JITTER.keys())
BOUNDS = {name: bounds(name) for name in (*RELATIVE_JITTER, *ABSOLUTE_JITTER)}

# Successful predictions, compared by loadtests/run.py with the rows in the inference log.
COUNTS = {"single_ok": 0, "batch_ok": 0, "batch_employees_ok": 0}


def employee() -> dict[str, Any]:
    """A random real employee with a few pay and commute figures nudged, within schema bounds."""
    row = dict(random.choice(EMPLOYEES))
    for name, fraction in RELATIVE_JITTER.items():
        row[name] = round(row[name] * random.uniform(1 - fraction, 1 + fraction))
    for name, units in ABSOLUTE_JITTER.items():
        row[name] += random.randint(-units, units)
    for name, (lo, hi) in BOUNDS.items():
        row[name] = min(max(int(row[name]), lo), hi)
    return row


def body(
    response: ResponseContextManager, keys: frozenset[str] = frozenset(), what: str = "response"
) -> dict[str, Any] | None:
    """The JSON object of a 200 response that holds `keys`, or None after marking it failed."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
        return None
    try:
        result = response.json()
    except ValueError:
        result = None
    if not isinstance(result, dict):
        response.failure(f"not a JSON object: {response.text[:200]}")
        return None
    if missing := keys - result.keys():
        response.failure(f"{what} lacks {sorted(missing)}")
        return None
    return result


def score_problem(item: dict[str, Any], threshold: float) -> str | None:
    """What is wrong with one scored employee (probability and label), or None."""
    p, label = item.get("probability"), item.get("label")
    if not isinstance(p, int | float) or not 0 <= p <= 1:
        return f"probability {p!r} is not in [0, 1]"
    if label not in LABELS:
        return f"label {label!r} is not Yes/No"
    if (label == "Yes") != (p >= threshold):
        return f"label {label} contradicts probability {p} at threshold {threshold}"
    return None


class Analyst(HttpUser):
    """An HR analyst: mostly single look-ups, now and then a team's batch or the history."""

    wait_time = between(0.1, 1.0)

    def on_start(self) -> None:
        self.login()

    def login(self) -> None:
        form = {"username": USERNAME, "password": PASSWORD, "grant_type": "password"}
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            with self.client.post(LOGIN, data=form, name=LOGIN, catch_response=True) as response:
                # Every user logs in at once while spawning; the service checks a few passwords
                # at a time and asks the rest to come back (backpressure, not a failure).
                busy = response.status_code == 503 and attempt < LOGIN_ATTEMPTS
                if busy:
                    response.success()
                    token = None
                else:
                    token = body(response)
                    if token is not None and not (
                        token.get("access_token") and isinstance(token.get("expires_in"), int)
                    ):
                        response.failure(f"token response lacks access_token/expires_in: {token}")
                        token = None
            if not busy:
                break
            time.sleep(float(response.headers.get("Retry-After", "1")))
        if token is None:  # without a token every request would fail; the failure is recorded
            raise StopUser()
        self.client.headers["Authorization"] = f"Bearer {token['access_token']}"
        self.token_renew_at = time.monotonic() + token["expires_in"] - TOKEN_MARGIN_SECONDS

    def ensure_token(self) -> None:
        if time.monotonic() >= self.token_renew_at:
            self.login()

    @task(10)
    def predict_one(self) -> None:
        self.ensure_token()
        with self.client.post(
            "/predict/attrition", json=employee(), name="/predict/attrition", catch_response=True
        ) as response:
            result = body(response, PREDICTION_KEYS, "prediction")
            if result is None:
                return
            if problem := score_problem(result, result["threshold"]):
                response.failure(problem)
                return
            COUNTS["single_ok"] += 1

    @task(2)
    def predict_batch(self) -> None:
        self.ensure_token()
        employees = [employee() for _ in range(random.randint(*BATCH_SIZES))]
        with self.client.post(
            "/predict/attrition/batch",
            json={"employees": employees},
            name="/predict/attrition/batch",
            catch_response=True,
        ) as response:
            result = body(response, BATCH_KEYS, "batch prediction")
            if result is None:
                return
            predictions = result["predictions"]
            if not isinstance(predictions, list) or len(predictions) != len(employees):
                got = len(predictions) if isinstance(predictions, list) else type(predictions)
                response.failure(f"sent {len(employees)} employees, got {got} predictions")
                return
            for i, item in enumerate(predictions):
                if not isinstance(item, dict) or item.get("index") != i:
                    response.failure(f"prediction {i} is out of order: {str(item)[:200]}")
                    return
                if problem := score_problem(item, result["threshold"]):
                    response.failure(f"prediction {i}: {problem}")
                    return
            COUNTS["batch_ok"] += 1
            COUNTS["batch_employees_ok"] += len(employees)

    @task(1)
    def history_page(self) -> None:
        self.ensure_token()
        with self.client.get(
            f"/predict/history?limit={HISTORY_PAGE}", name="/predict/history", catch_response=True
        ) as response:
            page = body(response)
            if page is None:
                return
            if not isinstance(page.get("items"), list):
                response.failure(f"history page has no items list: {str(page)[:200]}")
            elif "next_cursor" not in page or not isinstance(page["next_cursor"], str | None):
                response.failure(f"next_cursor is missing or not a string: {str(page)[:200]}")


@events.init_command_line_parser.add_listener
def _(parser: Any) -> None:
    parser.add_argument(
        "--max-p95-ms", type=float, default=500, help="Fail above this p95 of all calls but logins"
    )
    parser.add_argument(
        "--max-p99-ms", type=float, default=1000, help="Fail above this p99 of all calls but logins"
    )


def write_counts() -> None:
    path = os.environ.get("LOADTEST_COUNT_FILE")
    if not path:
        return
    counts = {"predicted_employees": COUNTS["single_ok"] + COUNTS["batch_employees_ok"], **COUNTS}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(counts, f)


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    write_counts()


def api_stats(stats: RequestStats) -> StatsEntry:
    """Every request but the logins, merged.

    A login hashes the password with Argon2id on purpose (CPU time and 64 MiB each), and
    every user logs in at once while spawning: on a small machine those few requests alone fill
    the top percent of all latencies. The latency bounds are for the calls analysts keep making.
    """
    merged = StatsEntry(stats, "API calls", "")
    for entry in stats.entries.values():
        if entry.name != LOGIN:
            merged.extend(entry)
    return merged


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    write_counts()  # again: quitting also covers runs that never reached test_stop
    total, api = environment.stats.total, api_stats(environment.stats)
    options = environment.parsed_options
    p95 = api.get_response_time_percentile(0.95)
    p99 = api.get_response_time_percentile(0.99)
    problems = []
    if api.num_requests == 0:
        problems.append("no predictions or history requests were made")
    if total.fail_ratio > 0:
        problems.append(f"{total.num_failures} of {total.num_requests} requests failed")
    if p95 > options.max_p95_ms:
        problems.append(f"p95 {p95:.0f} ms > {options.max_p95_ms:g} ms")
    if p99 > options.max_p99_ms:
        problems.append(f"p99 {p99:.0f} ms > {options.max_p99_ms:g} ms")
    login = environment.stats.get(LOGIN, "POST")
    summary = (
        f"{total.num_requests} requests, {total.num_failures} failures; API calls "
        f"p95 {p95:.0f} ms (max {options.max_p95_ms:g}), p99 {p99:.0f} ms (max {options.max_p99_ms:g}); "
        f"{login.num_requests} logins, p99 {login.get_response_time_percentile(0.99):.0f} ms (not gated)"
    )
    if problems:
        environment.process_exit_code = 1
        print(f"LOAD TEST FAILED: {'; '.join(problems)} [{summary}]", flush=True)
    else:
        print(f"LOAD TEST PASSED: {summary}", flush=True)
