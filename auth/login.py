"""POST /auth/token: the OAuth2 password grant with lockout and a bounded number of password
checks per worker, so a login flood cannot take the CPU and memory predictions need."""

import asyncio
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlmodel import Session

from auth.tokens import create_token
from auth.users import LockedOut, authenticate, locked_for
from settings import Settings

log = logging.getLogger("attrition.auth")

# Niceness of the password-check threads (Argon2's lanes inherit it): the worker's event loop
# wins the CPU over them. Why, and what it cannot shield: docs/adr/0018-login-concurrency.md.
CHECK_NICENESS = 10
# RFC 6749 5.1: token responses must not be cached; errors get the same headers.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class Token(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


def lower_priority() -> None:
    """Run this thread (and the threads it starts) at a lower CPU priority (Linux: per thread)."""
    try:
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + CHECK_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(niceness, 19))
    except (OSError, AttributeError) as exc:  # not Linux, or a sandbox that forbids it
        log.warning("password checks run at normal priority: %s", exc)


def oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    body = {"error": error, "error_description": description}
    return JSONResponse(body, status_code=status, headers={**NO_STORE, **headers})


class PasswordGrant:
    """Answers password-grant requests for one worker.

    At most `login_concurrency` password checks run at once, on low-priority threads of their
    own; a request waits up to `login_wait_seconds` for one, then gets 503 with Retry-After.
    A locked name gets 429 without waiting or counting.
    """

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.login_concurrency)
        self.pool = ThreadPoolExecutor(
            settings.login_concurrency, "password-check", initializer=lower_priority
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _locked_for(self, username: str) -> int | None:
        with Session(self.engine) as session:
            return locked_for(session=session, username=username)

    def _authenticate(self, username: str, password: str) -> Any:
        with Session(self.engine) as session:
            user = authenticate(
                session=session,
                username=username,
                password=password,
                max_failures=self.settings.login_max_failures,
                lockout_seconds=self.settings.login_lockout_seconds,
            )
            if user is None:
                return None
            return create_token(self.settings, subject=user.username, roles=user.roles)

    async def __call__(self, username: str, password: str) -> JSONResponse:
        if not self.settings.local_tokens:
            issuer = self.settings.oidc_issuer
            return oauth_error(400, "unsupported_grant_type", f"get a token from {issuer}")
        loop = asyncio.get_running_loop()
        try:
            retry = await loop.run_in_executor(None, self._locked_for, username)
            if retry is not None:
                raise LockedOut(retry)
            try:
                async with asyncio.timeout(self.settings.login_wait_seconds):
                    await self.slots.acquire()
            except TimeoutError:
                wait = str(max(1, math.ceil(self.settings.login_wait_seconds)))
                return oauth_error(
                    503,
                    "temporarily_unavailable",
                    "too many logins in progress; try again shortly",
                    **{"Retry-After": wait},
                )
            try:
                token = await loop.run_in_executor(
                    self.pool, self._authenticate, username, password
                )
            finally:
                self.slots.release()
        except LockedOut as locked:
            return oauth_error(
                429,
                "temporarily_locked",
                "too many failed logins; try later",
                **{"Retry-After": str(locked.retry_after_seconds)},
            )
        if token is None:
            return oauth_error(400, "invalid_grant", "invalid username or password")
        body = Token(access_token=token, expires_in=self.settings.access_token_ttl_seconds)
        return JSONResponse(body.model_dump(), headers=NO_STORE)
