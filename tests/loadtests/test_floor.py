"""The floor parses the employee JSON and answers a constant, or 400 for a body that is not an
object: in process (ASGI) and on uvicorn with httptools, as the bench runs it."""

import asyncio
import json
import os
from pathlib import Path

import httpx
import pytest

from loadtests.floor import MAX_BODY_BYTES, FloorServer, app
from training.data import load_reference
from training.schema import FEATURES

EMPLOYEE = load_reference()[list(FEATURES)].iloc[0].to_dict()


def post(body: bytes) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
            return await client.post("/predict/attrition", content=body)

    return asyncio.run(call())


def test_a_real_employee_gets_the_constant() -> None:
    response = post(json.dumps(EMPLOYEE).encode())
    assert response.status_code == 200
    assert response.json() == {"probability": 0.5}
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"Age": 41', b"[1, 2]", b'"text"', b"\xff\xfe", b"x" * (MAX_BODY_BYTES + 1)],
    ids=["empty", "truncated", "unclosed", "array", "string", "not-utf8", "too-large"],
)
def test_a_body_that_is_not_a_json_object_gets_400(body: bytes) -> None:
    response = post(body)
    assert response.status_code == 400
    assert "detail" in response.json()


def test_on_uvicorn_with_httptools(tmp_path: Path) -> None:
    server = FloorServer(
        sample=json.dumps(EMPLOYEE).encode(), log=tmp_path / "floor.log", env=dict(os.environ)
    )
    try:
        good = httpx.post(f"{server.url}/predict/attrition", json=EMPLOYEE, timeout=5)
        bad = httpx.post(f"{server.url}/predict/attrition", content=b"{not json", timeout=5)
    finally:
        server.stop()
    assert (good.status_code, good.json()) == (200, {"probability": 0.5})
    assert bad.status_code == 400
