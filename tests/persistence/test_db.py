"""Every PostgreSQL connection the project opens has connect, keepalive and TCP timeouts, and the
serving engines their statement and lock timeouts; a URL parameter overrides each."""

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from persistence.db import CONNECTION_DEFAULTS, make_engine
from persistence.inference_log.sinks import PostgresSink
from tests.proxy import TcpProxy

# A connect must fail within its 3 s timeout; generous for a loaded machine.
CONNECT_BOUND = 10.0


def parameters(conn: Any) -> dict[str, str]:
    """libpq's parameters of a psycopg connection."""
    return dict(conn.info.get_parameters())


def test_an_engine_connection_has_every_timeout(pg_url: str) -> None:
    engine = make_engine(pg_url, statement_timeout=2.5, lock_timeout=1)
    with engine.connect() as conn:
        params = parameters(conn.connection.dbapi_connection)
        shown = [
            conn.execute(text(f"SHOW {name}")).scalar()
            for name in ("statement_timeout", "lock_timeout", "application_name")
        ]
    engine.dispose()
    assert {k: params[k] for k in CONNECTION_DEFAULTS} == {
        k: str(v) for k, v in CONNECTION_DEFAULTS.items()
    }
    assert shown == ["2500ms", "1s", "attrition"]


def test_the_url_overrides_the_defaults(pg_url: str) -> None:
    url = f"{pg_url}?connect_timeout=7&options=-c%20statement_timeout%3D5000"
    engine = make_engine(url, statement_timeout=1)
    with engine.connect() as conn:
        params = parameters(conn.connection.dbapi_connection)
        statement_timeout = conn.execute(text("SHOW statement_timeout")).scalar()
    engine.dispose()
    assert params["connect_timeout"] == "7" and params["tcp_user_timeout"] == "10000"
    assert statement_timeout == "5s"


def test_the_inference_log_writer_connection_has_every_timeout(pg_url: str) -> None:
    sink = PostgresSink(pg_url)
    try:
        conn = sink._connection()
        params = parameters(conn)
        statement_timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
    finally:
        sink.close()
    assert {k: params[k] for k in CONNECTION_DEFAULTS} == {
        k: str(v) for k, v in CONNECTION_DEFAULTS.items()
    }
    assert statement_timeout == "1min" and params["application_name"] == "attrition-log"


@pytest.fixture
def blackholed() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    proxy.blackhole()
    yield proxy
    proxy.restore()


def failure_within(action: Callable[[], Any], seconds: float) -> BaseException:
    """The error `action` raises, which must come within `seconds`."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still connecting after {seconds} s"
    assert errors, "connected through a blackhole"
    print(f"failed after {time.monotonic() - started:.1f} s: {errors[0]!r}"[:200])
    return errors[0]


def test_a_connect_to_a_blackholed_database_fails_within_its_timeout(
    pg_url: str, blackholed: TcpProxy
) -> None:
    url = pg_url.replace("127.0.0.1:5432", blackholed.url_host)
    engine = make_engine(url)
    try:
        failure_within(lambda: engine.connect().close(), CONNECT_BOUND)
    finally:
        engine.dispose()
    sink = PostgresSink(url)
    failure_within(sink._connection, CONNECT_BOUND)
    sink.close()
