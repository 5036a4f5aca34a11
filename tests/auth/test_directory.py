"""The user directory against a real PostgreSQL in trouble: which real errors count as an
unreachable database, one read per user at a time, bounded waits behind a blackholed network,
the last known state renewed on a failed read, and a deleted admin while the database refuses
connections or holds `users` locked."""

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlmodel import Session

from auth.directory import unreachable
from auth.middleware import JWTAuthMiddleware, Principal, Refusal, UserState
from auth.tokens import create_token
from auth.users import create_user, delete_user
from persistence.db import make_engine, upgrade
from persistence.models import UserCreate
from settings import Settings
from tests.conftest import TEST_SECRET, PostgresDatabases
from tests.harness import free_port
from tests.pgtrouble import deadlock, libpq, role_database, set_database, slots_taken, users_locked
from tests.proxy import TcpProxy

PASSWORD = "pa55word-long"
# Generous for a loaded 2-core machine; the directory itself waits at most LOOKUP seconds.
BOUND = 5.0
LOOKUP = 0.5


def add_users(url: str, **users: list[str]) -> None:
    engine = make_engine(url)
    with Session(engine) as session:
        for name, roles in users.items():
            create_user(
                session=session, user_in=UserCreate(username=name, roles=roles, password=PASSWORD)
            )
    engine.dispose()


def remove_user(url: str, name: str) -> None:
    engine = make_engine(url)
    with Session(engine) as session:
        delete_user(session=session, username=name)
    engine.dispose()


def settings_for(url: str, tmp_path: Path, ttl: float) -> Settings:
    return Settings(
        jwt_secret=TEST_SECRET,
        database_url=url,
        data_dir=tmp_path,
        user_cache_seconds=ttl,
        user_lookup_seconds=LOOKUP,
    ).secured()


def request(token: str, method: str = "POST", path: str = "/predict/attrition") -> Any:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return {"type": "http", "method": method, "path": path, "headers": headers}


def history(token: str) -> Any:
    return request(token, "GET", "/predict/history")


async def timed(mw: JWTAuthMiddleware, scope: Any) -> tuple[Principal | Refusal, float]:
    """The middleware's answer, within BOUND seconds or a test failure."""
    started = time.monotonic()
    outcome = await asyncio.wait_for(mw.check(scope), BOUND)
    return outcome, time.monotonic() - started


def error_of(action: Callable[[], Any]) -> BaseException:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
        return exc
    raise AssertionError("no error")


@pytest.fixture
def pg(postgres: PostgresDatabases) -> str:
    url = postgres.create()
    upgrade(url)
    return url


@pytest.fixture
def limited() -> Iterator[str]:
    """A migrated database whose role connection limits apply to."""
    with role_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    yield proxy
    proxy.restore()  # a blackholed read still held by a thread ends now


def via(proxy: TcpProxy, url: str) -> str:
    return url.replace("127.0.0.1:5432", proxy.url_host)


def select_one(url: str, **engine_options: Any) -> None:
    engine = make_engine(url, **engine_options)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def test_connection_failures_count_as_unreachable(pg: str, proxy: TcpProxy) -> None:
    refused = error_of(lambda: select_one(pg.replace(":5432", f":{free_port()}")))
    proxy.blackhole()
    timed_out = error_of(lambda: select_one(via(proxy, pg) + "?connect_timeout=2"))

    engine = make_engine(pg, pool_size=1, pool_timeout=0.2)
    held = [engine.connect(), engine.connect()]  # the pool and its overflow
    pool_timeout = error_of(engine.connect)
    with psycopg.connect(libpq(pg), autocommit=True) as admin:
        for conn in held:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    lost = error_of(lambda: held[0].exec_driver_sql("SELECT 1"))
    engine.dispose()

    for name, exc in [("refused", refused), ("connect timeout", timed_out),
                      ("pool timeout", pool_timeout), ("lost", lost)]:  # fmt: skip
        assert unreachable(exc), (name, repr(exc))


def test_errors_the_database_answers_with_do_not(limited: str) -> None:
    with slots_taken(limited):
        too_many = error_of(lambda: select_one(limited))
    assert "too many connections" in str(too_many)
    cancelled = error_of(
        lambda: (
            make_engine(limited, statement_timeout=0.1)
            .connect()
            .exec_driver_sql("SELECT pg_sleep(2)")
        )
    )
    with users_locked(limited):
        locked = error_of(
            lambda: (
                make_engine(limited, lock_timeout=0.1)
                .connect()
                .exec_driver_sql("SELECT * FROM users")
            )
        )
    for name, exc in [("too many connections", too_many), ("cancelled", cancelled),
                      ("lock timeout", locked), ("deadlock", deadlock(limited))]:  # fmt: skip
        assert not unreachable(exc), (name, repr(exc))


def test_a_blackholed_database_never_holds_a_known_users_request(
    pg: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    add_users(pg, amy=["predict"], boss=["admin"])
    settings = settings_for(via(proxy, pg), tmp_path, ttl=1.0)
    mw = JWTAuthMiddleware(None, settings)
    amy = create_token(settings, subject="amy", roles=["predict"])
    boss = create_token(settings, subject="boss", roles=["admin"])
    stranger = create_token(settings, subject="stranger", roles=["admin"])

    async def scenario() -> tuple[float, list[Any]]:
        for token in (amy, boss):  # seen before the outage
            outcome, _ = await timed(mw, history(token) if token == boss else request(token))
            assert isinstance(outcome, Principal)
        proxy.blackhole()
        worst = 0.0
        deadline = time.monotonic() + 6  # several cache lifetimes
        while time.monotonic() < deadline:
            answers = await asyncio.gather(*(timed(mw, request(amy)) for _ in range(10)))
            for outcome, seconds in answers:
                assert isinstance(outcome, Principal) and outcome.roles == {"predict"}
                worst = max(worst, seconds)
            await asyncio.sleep(0.05)
        during = [(await timed(mw, scope))[0] for scope in (
            request(boss), history(boss), request(stranger), history(stranger),
        )]  # fmt: skip
        proxy.restore()
        return worst, during

    worst, during = asyncio.run(scenario())
    print(f"longest auth check of a known user during the blackhole: {worst:.2f} s")
    assert worst < 2 * LOOKUP + 1.0
    boss_predicts, boss_history, stranger_predicts, stranger_history = during
    assert isinstance(boss_predicts, Principal) and boss_predicts.roles == {"predict"}
    assert isinstance(stranger_predicts, Principal) and stranger_predicts.roles == {"predict"}
    for refused in (boss_history, stranger_history):
        assert isinstance(refused, Refusal) and refused.status == 503

    async def recovered() -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            outcome, _ = await timed(mw, history(boss))
            if isinstance(outcome, Principal) and outcome.is_admin:
                return True
            await asyncio.sleep(0.2)
        return False

    assert asyncio.run(recovered()), "the admin's roles came back after the restore"


def test_concurrent_lookups_of_one_user_are_one_read(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(pg, tmp_path, ttl=5.0)
    mw = JWTAuthMiddleware(None, settings)
    reads: list[str] = []

    def slow_read(username: str) -> UserState:
        reads.append(username)
        time.sleep(0.3)
        return UserState(frozenset({"predict"}), 0.0)

    monkeypatch.setattr(mw.users, "_load", slow_read)
    tokens = [create_token(settings, subject=name, roles=["predict"]) for name in ("a", "b")]

    async def burst() -> list[Any]:
        checks = [timed(mw, request(tokens[n % 2])) for n in range(40)]
        return [outcome for outcome, _ in await asyncio.gather(*checks)]

    assert all(isinstance(o, Principal) for o in asyncio.run(burst()))
    assert sorted(reads) == ["a", "b"]


def test_a_failed_read_renews_the_last_known_state(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_users(pg, amy=["predict"])
    settings = settings_for(pg, tmp_path, ttl=0.4)
    mw = JWTAuthMiddleware(None, settings)
    amy = create_token(settings, subject="amy", roles=["predict"])
    refused = error_of(lambda: select_one(pg.replace(":5432", f":{free_port()}")))
    reads: list[float] = []

    def failing(username: str) -> None:
        reads.append(time.monotonic())
        raise refused

    async def requests() -> list[Any]:
        first, _ = await timed(mw, request(amy))
        assert isinstance(first, Principal)
        monkeypatch.setattr(mw.users, "_load", failing)
        await asyncio.sleep(0.5)  # expired
        outcomes = []
        for _ in range(40):  # over 0.8 s: two cache lifetimes
            outcomes.append((await timed(mw, request(amy)))[0])
            await asyncio.sleep(0.02)
        return outcomes

    assert all(isinstance(o, Principal) for o in asyncio.run(requests()))
    # Once per half lifetime at most (the background refresh), not once per request.
    assert 1 <= len(reads) <= 6, len(reads)


def test_a_deleted_admin_while_the_database_refuses_connections(
    limited: str, tmp_path: Path
) -> None:
    add_users(limited, boss=["admin"], carol=["predict", "history"])
    settings = settings_for(limited, tmp_path, ttl=0.5)
    boss = create_token(settings, subject="boss", roles=["admin"])
    remove_user(limited, "boss")
    mw = JWTAuthMiddleware(None, settings)  # a worker with no connection open yet

    async def during() -> list[Any]:
        return [(await timed(mw, scope))[0] for scope in (history(boss), request(boss))]

    with slots_taken(limited):
        outcomes = asyncio.run(during())
    for outcome in outcomes:
        assert isinstance(outcome, Refusal) and outcome.status == 503, outcome


def test_a_deleted_admin_while_users_is_locked(limited: str, tmp_path: Path) -> None:
    add_users(limited, boss=["admin"], carol=["predict", "history"])
    # As in the report: lock waits are bounded (here for every session of the database).
    set_database(limited, "SET lock_timeout = '200ms'")
    settings = settings_for(limited, tmp_path, ttl=0.5)
    boss = create_token(settings, subject="boss", roles=["admin"])
    carol = create_token(settings, subject="carol", roles=["predict", "history"])
    remove_user(limited, "boss")
    mw = JWTAuthMiddleware(None, settings)

    async def scenario() -> list[Any]:
        seen, _ = await timed(mw, history(carol))
        assert isinstance(seen, Principal)
        with users_locked(limited):
            await asyncio.sleep(0.6)  # carol's entry expired
            scopes = (history(boss), request(boss), request(carol), history(carol))
            return [(await timed(mw, scope))[0] for scope in scopes]

    boss_history, boss_predicts, carol_predicts, carol_history = asyncio.run(scenario())
    for refused in (boss_history, boss_predicts, carol_history):
        assert isinstance(refused, Refusal) and refused.status == 503, refused
    assert isinstance(carol_predicts, Principal) and carol_predicts.roles == {"predict"}


def test_the_health_probe_is_bounded_and_cached(pg: str, proxy: TcpProxy, tmp_path: Path) -> None:
    mw = JWTAuthMiddleware(None, settings_for(via(proxy, pg), tmp_path, ttl=1.0))

    async def probe() -> tuple[str, float]:
        started = time.monotonic()
        answer = await asyncio.wait_for(mw.users.database(), BOUND)
        return answer, time.monotonic() - started

    assert asyncio.run(probe())[0] == "ok"
    proxy.blackhole()
    time.sleep(2.1)  # past the cached answer
    answer, seconds = asyncio.run(probe())
    assert answer == "unreachable" and seconds < LOOKUP + 1.0
    assert asyncio.run(probe())[0] == "unreachable"  # cached: answered at once
    proxy.restore()
    deadline = time.monotonic() + 30
    while asyncio.run(probe())[0] != "ok":
        assert time.monotonic() < deadline, "the probe never saw the database again"
        time.sleep(0.5)
