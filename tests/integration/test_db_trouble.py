"""A real server while PostgreSQL is in trouble: blackholed (predictions of known users keep
being answered, /health says degraded, all recovers after), refusing connections or holding
`users` locked (a deleted admin's token reads nothing)."""

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session

from auth.tokens import create_token
from auth.users import create_user, delete_user
from loadtests.db_blackhole import Run, load, report
from persistence.db import make_engine
from persistence.inference_log.sinks import PostgresSink
from persistence.inference_log.writer import COLUMNS, Record, encode
from persistence.models import UserCreate
from tests.conftest import PASSWORD, SERVER_ENV, PostgresDatabases, app_settings, seed_users
from tests.harness import Server, inference_rows
from tests.helpers import employee_rows
from tests.pgtrouble import role_database, set_database, slots_taken, users_locked
from tests.proxy import TcpProxy

pytestmark = pytest.mark.integration

ROWS = employee_rows(200)
# Generous bounds for a loaded 2-core machine: the directory itself waits at most 1 s for a
# read, and a blackholed database used to hold requests for BentoML's full 30 s timeout.
ANSWER_BOUND = 10.0
HEALTH_BOUND = 10.0


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.5)


def health(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/health", timeout=HEALTH_BOUND).json()


def test_predictions_of_known_users_survive_a_blackholed_database(
    model_tag: str, postgres: PostgresDatabases, tmp_path: Path
) -> None:
    direct = postgres.create()
    seed_users(direct)
    proxy = TcpProxy()
    env = {
        **SERVER_ENV,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": direct.replace("127.0.0.1:5432", proxy.url_host),
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
        "ATTRITION_USER_CACHE_SECONDS": "2",
        "ATTRITION_LOG_RETRY_SECONDS": "0.5",
    }
    server = Server("service:AttritionService", env, log=tmp_path / "serve.log")
    settings = app_settings(direct, tmp_path / "data")
    tokens = [create_token(settings, subject=u, roles=["predict"]) for u in ("predictor", "hr")]
    before, during, after = 6.0, 14.0, 6.0
    try:
        assert health(server)["status"] == "ok"
        run: Run = asyncio.run(
            load(server.url, tokens, ROWS, 8, proxy.blackhole, proxy.restore,
                 before, during, after)
        )  # fmt: skip
        print("\n" + report("blackhole test", run, before, during, after))
        wait_for(lambda: health(server)["status"] == "ok", 60, "recovered /health")
        answered = sum(a.status == 200 for a in run.answers)
        wait_for(lambda: inference_rows(direct) >= answered, 60, "rows of every answer")
        rows = inference_rows(direct)
    finally:
        proxy.restore()
        server.stop()

    statuses = Counter(a.status for a in run.answers)
    assert set(statuses) == {200}, statuses  # no 5xx, no request left unanswered
    blackholed = [a for a in run.answers if before <= a.sent < before + during]
    assert len(blackholed) > 100, "predictions kept being answered during the blackhole"
    slowest = max(a.seconds for a in run.answers)
    assert slowest < ANSWER_BOUND, f"a prediction took {slowest:.1f} s"
    # The probe notices within a few seconds; every /health answered within its bound.
    settled = [s for sent, took, s in run.health if before + 5 <= sent < before + during - took]
    assert settled and set(settled) == {"degraded"}, run.health
    assert max(seconds for _, seconds, _ in run.health) < HEALTH_BOUND
    assert any(a.sent >= before + during for a in run.answers), "answers after the restore"
    assert rows == answered, "a row without a 200, or a duplicate"


def record_prediction(url: str, subject: str) -> None:
    """A prediction of `subject` in the log, written as the log's writer writes one."""
    record = Record(
        str(uuid.uuid4()), datetime.now(UTC).isoformat(), subject, "/predict/attrition",
        "attrition:test", None, None, json.dumps(ROWS[0]), 0.25, "No", 0.5, 1.0,
    )  # fmt: skip
    sink = PostgresSink(url)
    try:
        sink.write(COLUMNS, encode([record])[0], fresh=True)
    finally:
        sink.close()


@pytest.fixture
def limited_server(model_tag: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh server (no user read yet, so no lookup connection open) on a database whose
    role connection limits apply to, with another user's prediction in its log, every session's
    lock waits bounded (as in the report), and route connections open in its pools."""
    with role_database() as url:
        seed_users(url)
        record_prediction(url, "analyst")
        set_database(url, "SET lock_timeout = '300ms'")
        env = {
            **SERVER_ENV,
            "ATTRITION_MODEL_TAG": model_tag,
            "ATTRITION_DATABASE_URL": url,
            "ATTRITION_DATA_DIR": str(tmp_path / "data"),
        }
        server = Server("service:AttritionService", env, log=tmp_path / "serve.log")
        try:
            # Logins read through the routes' pool, not the user lookups': on every worker
            # (new connections land on either) the pool keeps its connections open.
            for _ in range(12):
                form = {"username": "analyst", "password": PASSWORD}
                r = httpx.post(f"{server.url}/auth/token", data=form, timeout=60)
                assert r.status_code == 200, r.text
            yield server, url, app_settings(url, tmp_path / "data")
        finally:
            server.stop()


def deleted_admin(url: str, settings: Any, name: str) -> dict[str, str]:
    """The token of an admin deleted right after it was issued (never seen by the server)."""
    engine = make_engine(url)
    with Session(engine) as session:
        user_in = UserCreate(username=name, roles=["admin"], password="pa55word-long")
        create_user(session=session, user_in=user_in)
        token = create_token(settings, subject=name, roles=["admin"])
        delete_user(session=session, username=name)
    engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def history_requests(server: Server, headers: dict[str, str], n: int = 30) -> list[httpx.Response]:
    def get(_: int) -> httpx.Response:
        return httpx.get(f"{server.url}/predict/history", headers=headers, timeout=60)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(get, range(n)))


def assert_nothing_read(responses: list[httpx.Response]) -> None:
    statuses = Counter(r.status_code for r in responses)
    leaked = [r.text[:200] for r in responses if "analyst" in r.text]
    assert not leaked and set(statuses) <= {401, 503}, (statuses, leaked)
    assert statuses[503], "the lookups failed (else this test tests nothing)"


def test_a_deleted_admin_reads_nothing_while_the_database_refuses_connections(
    limited_server: Any,
) -> None:
    server, url, settings = limited_server
    headers = deleted_admin(url, settings, "boss")
    with slots_taken(url):
        responses = history_requests(server, headers)
    assert_nothing_read(responses)


def test_a_deleted_admin_reads_nothing_while_users_is_locked(limited_server: Any) -> None:
    server, url, settings = limited_server
    headers = deleted_admin(url, settings, "boss")
    with users_locked(url):
        responses = history_requests(server, headers)
    assert_nothing_read(responses)
