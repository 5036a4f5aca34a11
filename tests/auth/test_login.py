"""The password grant bounds the Argon2 checks in flight per worker, runs them at a lower CPU
priority, and answers the rest with 503 and Retry-After; every answer is uncacheable."""

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import auth.users
from auth.login import CHECK_NICENESS, PasswordGrant
from persistence.db import make_engine, upgrade
from settings import Settings


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'login.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_checks_in_flight_are_bounded_and_the_rest_told_to_retry(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(jwt_secret="g" * 48, login_concurrency=1, login_wait_seconds=0.2).secured()
    real_verify = auth.users.verify_password
    lock = threading.Lock()
    in_flight, peak, niceness = 0, 0, set()

    def slow_verify(password: str, password_hash: str) -> bool:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        niceness.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        time.sleep(0.5)  # a slow check: the others must not start meanwhile
        try:
            return real_verify(password, password_hash)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(auth.users, "verify_password", slow_verify)
    grant = PasswordGrant(engine, settings)

    async def flood() -> list[Any]:
        names = [f"ghost{uuid.uuid4().hex[:8]}" for _ in range(6)]
        return await asyncio.gather(*(grant(name, "guess") for name in names))

    try:
        answers = asyncio.run(flood())
    finally:
        grant.close()
    statuses = sorted(a.status_code for a in answers)
    assert peak == 1
    assert statuses.count(400) >= 1 and statuses.count(503) >= 1, statuses
    assert set(statuses) <= {400, 503}
    assert niceness == {min(os.getpriority(os.PRIO_PROCESS, 0) + CHECK_NICENESS, 19)}
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store"
        if answer.status_code == 503:
            assert int(answer.headers["retry-after"]) >= 1
