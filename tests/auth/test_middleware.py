"""The auth middleware's decisions without a server: which database errors let a verified token
stand in for the user directory, and the header checks before any decoding."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from auth.middleware import JWTAuthMiddleware, Principal, Refusal
from auth.tokens import create_token
from settings import Settings
from tests.helpers import CHALLENGE

SECRET = "m" * 48


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    return Settings(jwt_secret=SECRET, database_url=url, user_cache_seconds=0).secured()


def check(mw: JWTAuthMiddleware, *authorization: bytes) -> Principal | Refusal:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict/attrition",
        "headers": [(b"authorization", a) for a in authorization],
    }
    return asyncio.run(mw.check(scope))


def failing_lookup(exc: BaseException) -> Any:
    def load(username: str) -> None:
        raise exc

    return load


UNREACHABLE = {
    "connection_refused": OperationalError("SELECT", {}, Exception("connection refused")),
    "connection_lost": InterfaceError("SELECT", {}, Exception("connection already closed")),
    "pool_exhausted": PoolTimeout("QueuePool limit reached"),
}
REFUSED = {
    "nul_in_text": DataError("SELECT", {}, Exception("cannot contain NUL (0x00) characters")),
    "programming_error": ProgrammingError("SELECT", {}, Exception("relation does not exist")),
    "integrity_error": IntegrityError("SELECT", {}, Exception("duplicate key")),
    "unencodable": StatementError("bind", "SELECT", {}, UnicodeEncodeError("utf-8", "", 0, 1, "x")),
    "bug": ValueError("unexpected"),
}


@pytest.mark.parametrize("case", UNREACHABLE, ids=list(UNREACHABLE))
def test_an_unreachable_database_falls_back_to_the_token_roles(
    settings: Settings, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw = JWTAuthMiddleware(None, settings)
    monkeypatch.setattr(mw.users, "_load", failing_lookup(UNREACHABLE[case]))
    token = create_token(settings, subject="amy", roles=["predict"])
    outcome = check(mw, f"Bearer {token}".encode())
    assert isinstance(outcome, Principal) and outcome.roles == {"predict"}


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
