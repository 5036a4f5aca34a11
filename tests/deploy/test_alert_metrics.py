"""The metrics added for the alerts: the inference log's disk use, the model service's readiness
probed at scrape time, predictions that gave up on it, and usernames locked (counted once per
lock, on SQLite and PostgreSQL)."""

import asyncio
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from api.lifecycle import ModelUnavailable, call_with_retry
from api.metrics import (
    disk_gauges,
    model_service_gauge,
    model_unavailable,
)
from auth.users import LockedOut, authenticate, create_user, login_lockouts
from persistence.db import make_engine
from persistence.models import UserCreate
from tests.harness import free_port
from tests.persistence.conftest import url

__all__ = ["url"]


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_disk_gauges_sum_the_log_files_and_read_their_volume(tmp_path: Path) -> None:
    log = tmp_path / "inference-log"
    (log / "wal" / "worker-1").mkdir(parents=True)
    (log / "wal" / "worker-1" / "000001.wal").write_bytes(b"x" * 1500)
    (log / "dead-letters.jsonl").write_bytes(b"y" * 20)
    families = {f.name: f for f in text_string_to_metric_families(disk_gauges(log))}
    values = {name: f.samples[0].value for name, f in families.items()}
    volume = os.statvfs(log)
    assert values["attrition_inference_log_disk_bytes"] == 1520
    assert values["attrition_inference_log_volume_size_bytes"] == volume.f_blocks * volume.f_frsize
    assert 0 < values["attrition_inference_log_volume_free_bytes"] <= values["attrition_inference_log_volume_size_bytes"]  # fmt: skip
    assert {f.type for f in families.values()} == {"gauge"}
    assert disk_gauges(tmp_path / "missing") == ""


class Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def model_service() -> Iterator[str]:
    """A stand-in model service answering /readyz with Readyz.status."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    Readyz.status = 200


def up(text: str) -> float:
    [family] = text_string_to_metric_families(text)
    assert family.name == "attrition_model_service_up" and family.type == "gauge"
    return float(family.samples[0].value)


def test_the_model_service_is_up_only_when_its_readyz_answers_200(model_service: str) -> None:
    assert up(model_service_gauge(model_service)) == 1
    assert up(model_service_gauge(model_service + "/")) == 1
    Readyz.status = 503  # draining, or its model not loaded
    assert up(model_service_gauge(model_service)) == 0
    assert up(model_service_gauge(f"http://127.0.0.1:{free_port()}")) == 0  # nobody listens
    assert model_service_gauge(None) == ""  # served inside this server: nothing to probe


def test_a_prediction_that_gives_up_on_the_model_service_is_counted() -> None:
    model_unavailable()
    before = sample("attrition_model_unavailable_total")

    async def refused() -> None:
        raise aiohttp.ClientConnectionError("connection refused")

    async def answered() -> int:
        return 1

    with pytest.raises(ModelUnavailable):
        asyncio.run(call_with_retry(refused, budget_seconds=0.2))
    assert asyncio.run(call_with_retry(answered, budget_seconds=0.2)) == 1
    assert sample("attrition_model_unavailable_total") == before + 1


def test_a_lockout_is_counted_once_when_the_name_locks(url: str) -> None:
    login_lockouts()
    before = sample("attrition_login_lockouts_total")
    engine = make_engine(url)
    limits = {"max_failures": 3, "lockout_seconds": 60}
    password = "a-long-password"
    with Session(engine) as session:
        for name in ("eve", "finn"):
            create_user(session=session, user_in=UserCreate(username=name, roles=["predict"], password=password))  # fmt: skip
        # Two failures and a success: no lock. Three failures: one lock, and attempts on the
        # locked name (refused before any check) add none.
        for attempt in ("wrong", "wrong", password):
            authenticate(session=session, username="eve", password=attempt, **limits)
        assert sample("attrition_login_lockouts_total") == before
        for _ in range(3):
            assert (
                authenticate(session=session, username="finn", password="wrong", **limits) is None
            )
        for attempt in ("wrong", password):
            with pytest.raises(LockedOut):
                authenticate(session=session, username="finn", password=attempt, **limits)
        # Unknown names lock like known ones.
        for _ in range(3):
            authenticate(session=session, username="nobody", password="wrong", **limits)
    engine.dispose()
    assert sample("attrition_login_lockouts_total") == before + 2
