"""Login attempts are counted atomically before the password check, on SQLite and PostgreSQL:
concurrent attempts get distinct numbers, counts expire with the window, stale rows are purged;
token cut-offs follow the database's clock."""

import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from auth.users import (
    LockedOut,
    authenticate,
    count_attempt,
    create_user,
    purge_attempts,
    revoke_tokens,
)
from persistence.db import make_engine
from persistence.models import LoginAttempt, UserCreate
from persistence.types import utcnow

PASSWORD = "pa55word-long"


def concurrent_counts(url: str, username: str, n: int, max_failures: int) -> list[int]:
    """`n` threads, each with a connection of its own (as separate workers have), count an
    attempt for `username` at the same moment."""
    engines = [make_engine(url, pool_size=1) for _ in range(n)]
    barrier = threading.Barrier(n, timeout=60)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def attempt(engine: Engine) -> None:
        try:
            with Session(engine) as session:
                session.connection()  # connect before the barrier, so the counts collide
                barrier.wait()
                number, _ = count_attempt(
                    session=session, username=username, max_failures=max_failures,
                    lockout_seconds=300,
                )  # fmt: skip
                numbers.append(number)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for engine in engines:
        engine.dispose()
    assert not errors, errors
    return numbers


@pytest.mark.parametrize("n", [10, 20])
def test_concurrent_first_attempts_for_a_new_name_get_distinct_numbers(url: str, n: int) -> None:
    numbers = concurrent_counts(url, f"new{uuid.uuid4().hex[:8]}", n, max_failures=5)
    assert sorted(numbers) == list(range(1, n + 1))


def test_the_attempt_that_reaches_the_limit_locks_the_name(url: str) -> None:
    engine = make_engine(url)
    with Session(engine) as session:
        results = [
            count_attempt(session=session, username="kim", max_failures=3, lockout_seconds=60)
            for _ in range(4)
        ]
    engine.dispose()
    assert [n for n, _ in results] == [1, 2, 3, 4]
    assert [until is None for _, until in results] == [True, True, False, False]
    assert results[2][1] == results[3][1]  # attempts while locked do not extend the lock


def test_counts_expire_with_the_lockout_window(url: str) -> None:
    engine = make_engine(url)
    start = utcnow()
    later = start + timedelta(seconds=61)
    kwargs = {"username": "lee", "max_failures": 3, "lockout_seconds": 60}
    with Session(engine) as session:
        assert count_attempt(session=session, now=start, **kwargs)[0] == 1
        assert count_attempt(session=session, now=start, **kwargs)[0] == 2
        # Two failures a minute ago are forgotten, not added to.
        assert count_attempt(session=session, now=later, **kwargs)[0] == 1
        # A lock ends after the window and the count starts again.
        for _ in range(2):
            count_attempt(session=session, now=later, **kwargs)
        number, until = count_attempt(session=session, now=later, **kwargs)
        assert number == 4 and until == later + timedelta(seconds=60)
        after_lock = until + timedelta(seconds=1)
        assert count_attempt(session=session, now=after_lock, **kwargs)[0] == 1
    engine.dispose()


def test_stale_counts_are_purged_and_locks_in_force_kept(url: str) -> None:
    engine = make_engine(url)
    start = utcnow()
    later = start + timedelta(seconds=61)
    with Session(engine) as session:

        def count(name: str, **kwargs: object) -> None:
            count_attempt(session=session, username=name, **{"max_failures": 5, **kwargs})  # type: ignore[arg-type]

        count("old", lockout_seconds=60, now=start)
        for _ in range(2):  # locked for 10 minutes (the setting was longer then)
            count("locked", max_failures=2, lockout_seconds=600, now=start)
        count("recent", lockout_seconds=60, now=start + timedelta(seconds=50))
        assert purge_attempts(session=session, lockout_seconds=60, now=later) == 1
        session.commit()
        assert session.get(LoginAttempt, "old") is None
        assert session.get(LoginAttempt, "locked") is not None
        assert session.get(LoginAttempt, "recent") is not None
    engine.dispose()


def add_user(session: Session, name: str) -> None:
    create_user(
        session=session, user_in=UserCreate(username=name, roles=["predict"], password=PASSWORD)
    )


def test_a_right_password_after_the_limit_is_refused(url: str) -> None:
    engine = make_engine(url)
    kwargs = {"max_failures": 3, "lockout_seconds": 60}
    with Session(engine) as session:
        add_user(session, "ann")
    numbers = concurrent_counts(url, "ann", 10, max_failures=3)  # a burst of guesses
    assert max(numbers) == 10
    with Session(engine) as session, pytest.raises(LockedOut) as locked:
        authenticate(session=session, username="ann", password=PASSWORD, **kwargs)
    assert 0 < locked.value.retry_after_seconds <= 301  # locked by the burst, for 300 s
    engine.dispose()


def test_a_success_clears_the_count(url: str) -> None:
    engine = make_engine(url)
    kwargs = {"max_failures": 3, "lockout_seconds": 60}
    with Session(engine) as session:
        add_user(session, "bo")
        for _ in range(2):
            assert authenticate(session=session, username="bo", password="wrong", **kwargs) is None
        user = authenticate(session=session, username="bo", password=PASSWORD, **kwargs)
        assert user is not None and user.last_login_at is not None
        assert session.get(LoginAttempt, "bo") is None
    engine.dispose()


@pytest.mark.parametrize("skew", [-3600, 3600], ids=["host_behind", "host_ahead"])
def test_token_cut_offs_follow_the_databases_clock_not_the_hosts(
    pg_url: str, skew: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create-user and revoke-tokens run on any host; the tokens they cut off carry a server's
    `iat`. A host clock an hour off must not keep old tokens alive or refuse new ones."""
    real = utcnow
    monkeypatch.setattr("auth.users.utcnow", lambda: real() + timedelta(seconds=skew))
    engine = make_engine(pg_url)
    with Session(engine) as session:
        user_in = UserCreate(username="kim", roles=["predict"], password=PASSWORD)
        created = create_user(session=session, user_in=user_in).tokens_valid_after
        issued_before = time.time()  # a token a server minted just before the revocation
        time.sleep(0.05)
        revoked = revoke_tokens(session=session, username="kim").tokens_valid_after
        time.sleep(0.05)
        issued_after = time.time()
    engine.dispose()
    assert abs((created - real()).total_seconds()) < 60
    assert issued_before < revoked.timestamp() < issued_after
