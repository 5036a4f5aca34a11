"""The auth middleware's decisions without a server: which database errors let a verified token
or the last known state stand in for the user directory (for predictions only), and the header
checks before any decoding."""

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from auth.middleware import JWTAuthMiddleware, Principal, Refusal, UserState
from auth.tokens import create_token
from settings import Settings
from tests.helpers import CHALLENGE

SECRET = "m" * 48


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    return Settings(jwt_secret=SECRET, database_url=url, user_cache_seconds=0).secured()


def scope(
    authorization: list[bytes], method: str = "POST", path: str = "/predict/attrition"
) -> Any:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"authorization", a) for a in authorization],
    }


def check(mw: JWTAuthMiddleware, *authorization: bytes) -> Principal | Refusal:
    return asyncio.run(mw.check(scope(list(authorization))))


def read_history(mw: JWTAuthMiddleware, token: str) -> Principal | Refusal:
    auth = [f"Bearer {token}".encode()]
    return asyncio.run(mw.check(scope(auth, "GET", "/predict/history")))


def failing_lookup(exc: BaseException) -> Any:
    def load(username: str) -> None:
        raise exc

    return load


def lost_connection() -> DBAPIError:
    exc = InterfaceError("SELECT", {}, psycopg.InterfaceError("the connection is lost"))
    exc.connection_invalidated = True
    return exc


UNREACHABLE = {
    "connection_refused": OperationalError(
        "connect", {}, psycopg.OperationalError("connection failed: ... Connection refused")
    ),
    "connect_timeout": OperationalError(
        "connect", {}, psycopg.errors.ConnectionTimeout("connection timeout expired")
    ),
    "connection_exception_08006": OperationalError(
        "SELECT", {}, psycopg.errors.ConnectionFailure("connection failure")
    ),
    "connection_lost": lost_connection(),
    "pool_exhausted": PoolTimeout("QueuePool limit reached"),
}
# The database answered: it is reachable, and the token must not stand in for the user.
ANSWERED = {
    "too_many_connections": OperationalError(
        "connect",
        {},
        psycopg.OperationalError(
            'connection failed: ... failed: FATAL:  too many connections for database "x"'
        ),
    ),
    "too_many_connections_53300": OperationalError(
        "SELECT", {}, psycopg.errors.TooManyConnections("too many connections")
    ),
    "query_cancelled": OperationalError("SELECT", {}, psycopg.errors.QueryCanceled("canceled")),
    "lock_timeout": OperationalError("SELECT", {}, psycopg.errors.LockNotAvailable("lock")),
    "deadlock": OperationalError("SELECT", {}, psycopg.errors.DeadlockDetected("deadlock")),
}
REFUSED = {
    "nul_in_text": DataError("SELECT", {}, Exception("cannot contain NUL (0x00) characters")),
    "programming_error": ProgrammingError("SELECT", {}, Exception("relation does not exist")),
    "integrity_error": IntegrityError("SELECT", {}, Exception("duplicate key")),
    "unencodable": StatementError("bind", "SELECT", {}, UnicodeEncodeError("utf-8", "", 0, 1, "x")),
    "bug": ValueError("unexpected"),
}


@pytest.mark.parametrize("case", UNREACHABLE, ids=list(UNREACHABLE))
def test_an_unreachable_database_falls_back_to_the_token_for_predictions_only(
    settings: Settings, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw = JWTAuthMiddleware(None, settings)
    monkeypatch.setattr(mw.users, "_load", failing_lookup(UNREACHABLE[case]))
    for roles in (["predict"], ["admin"], ["admin", "predict", "history"]):
        token = create_token(settings, subject="amy", roles=roles)
        outcome = check(mw, f"Bearer {token}".encode())
        assert isinstance(outcome, Principal) and outcome.roles == {"predict"}, roles
        refused = read_history(mw, token)
        assert isinstance(refused, Refusal) and refused.status == 503, roles
        assert (b"retry-after", b"2") in refused.headers
    history_only = create_token(settings, subject="amy", roles=["history"])
    outcome = check(mw, f"Bearer {history_only}".encode())
    assert isinstance(outcome, Refusal) and outcome.status == 503


@pytest.mark.parametrize("case", ANSWERED, ids=list(ANSWERED))
def test_a_database_that_answers_with_an_error_never_lets_the_token_stand_in(
    settings: Settings, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw = JWTAuthMiddleware(None, settings)
    monkeypatch.setattr(mw.users, "_load", failing_lookup(ANSWERED[case]))
    token = create_token(settings, subject="amy", roles=["admin"])
    for outcome in (check(mw, f"Bearer {token}".encode()), read_history(mw, token)):
        assert isinstance(outcome, Refusal) and outcome.status == 503


@pytest.mark.parametrize("case", [*UNREACHABLE, *ANSWERED])
def test_the_last_known_state_is_used_for_predictions_only(
    settings: Settings, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = {**UNREACHABLE, **ANSWERED}[case]
    mw = JWTAuthMiddleware(None, settings)
    admin = create_token(settings, subject="boss", roles=["admin"])
    monkeypatch.setattr(mw.users, "_load", lambda username: UserState(frozenset({"admin"}), 0.0))
    assert isinstance(admin_outcome := read_history(mw, admin), Principal)
    assert admin_outcome.is_admin
    monkeypatch.setattr(mw.users, "_load", failing_lookup(error))
    outcome = check(mw, f"Bearer {admin}".encode())
    assert isinstance(outcome, Principal) and outcome.roles == {"predict"}
    refused = read_history(mw, admin)
    assert isinstance(refused, Refusal) and refused.status == 503


@pytest.mark.parametrize("case", [*UNREACHABLE, *ANSWERED])
def test_a_user_last_seen_deleted_stays_refused_while_the_database_is_away(
    settings: Settings, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw = JWTAuthMiddleware(None, settings)
    token = create_token(settings, subject="gone", roles=["admin"])
    monkeypatch.setattr(mw.users, "_load", lambda username: None)
    assert check(mw, f"Bearer {token}".encode()).status == 401  # type: ignore[union-attr]
    monkeypatch.setattr(mw.users, "_load", failing_lookup({**UNREACHABLE, **ANSWERED}[case]))
    for outcome in (check(mw, f"Bearer {token}".encode()), read_history(mw, token)):
        assert isinstance(outcome, Refusal) and outcome.status == 401


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_any_other_lookup_failure_is_a_401(
    settings: Settings, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw = JWTAuthMiddleware(None, settings)
    monkeypatch.setattr(mw.users, "_load", failing_lookup(REFUSED[case]))
    token = create_token(settings, subject="amy", roles=["admin"])
    outcome = check(mw, f"Bearer {token}".encode())
    assert isinstance(outcome, Refusal) and outcome.status == 401


def test_two_authorization_headers_are_refused(settings: Settings) -> None:
    token = create_token(settings, subject="amy", roles=["predict"]).encode()
    outcome = check(JWTAuthMiddleware(None, settings), b"Bearer " + token, b"Bearer " + token)
    assert isinstance(outcome, Refusal) and outcome.status == 401
    assert b"more than one" in outcome.body


def test_an_oversized_token_is_refused_before_decoding(settings: Settings) -> None:
    outcome = check(JWTAuthMiddleware(None, settings), b"Bearer " + b"a" * 9000)
    assert isinstance(outcome, Refusal) and outcome.status == 401
    assert b"too long" in outcome.body


@pytest.mark.parametrize(
    "authorization",
    [b'Bearer x"y', b"Basic " + b"\\" * 50, b"Bearer a.b.c", b"Bearer " + b"e" * 8000],
    ids=["quote", "backslashes", "garbage_jwt", "long"],
)
def test_the_challenge_never_echoes_the_request(settings: Settings, authorization: bytes) -> None:
    outcome = check(JWTAuthMiddleware(None, settings), authorization)
    assert isinstance(outcome, Refusal) and outcome.status == 401
    [challenge] = [v for k, v in outcome.headers if k == b"www-authenticate"]
    assert CHALLENGE.fullmatch(challenge.decode("latin-1")), challenge
