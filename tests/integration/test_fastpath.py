"""The fast path of POST /predict/attrition (api/fastpath.py) against BentoML's full stack, on a
real server: the same answer, headers, access-log line, metrics and log record; everything
unusual still answered by the full stack; a refused caller answered before any body is read; and
a server with ATTRITION_FAST_PATH=off (api/internals.py's gate off) giving the same answers."""

import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import SERVER_ENV, PostgresDatabases, Stack, app_settings, seed_users
from tests.harness import Server
from tests.helpers import employee_rows
from tests.integration.test_http_limits import BODY_TIMEOUT, body_pending, one_response, status
from tests.integration.test_inference_log import rows_for, wait_for

pytestmark = pytest.mark.integration
ROUTE = "/predict/attrition"


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.server.url, timeout=60) as c:
        yield c


def fast_count(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    found = re.search(r'^attrition_fast_path_requests_total\{route="/predict/attrition"\} (\S+)$',
                      text, re.M)  # fmt: skip
    return float(found.group(1)) if found else 0.0


def request_count(client: httpx.Client, status: int) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("bentoml_service_request_total{")
                and 'endpoint="/predict/attrition"' in line
                and f'http_response_code="{status}"' in line):  # fmt: skip
            total += float(line.split()[-1])
    return total


def comparable(r: httpx.Response) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = r.json()
    body.pop("request_id")
    headers = {k: v for k, v in r.headers.items() if k not in ("date", "x-request-id")}
    return r.status_code, body, headers


def test_fast_and_full_stack_give_the_same_answer_headers_and_record(
    stack: Stack, client: httpx.Client
) -> None:
    row = employee_rows(3)[2]
    auth = stack.headers("predictor")
    before, ok_before = fast_count(client), request_count(client, 200)
    fast = client.post(ROUTE, json=row, headers=auth)
    # A query string is never the fast path's: this one takes BentoML's full stack.
    full = client.post(ROUTE, params={"explain": "false"}, json=row, headers=auth)
    assert fast.status_code == 200 and full.status_code == 200, (fast.text, full.text)
    assert fast_count(client) - before == 1
    assert comparable(fast) == comparable(full)
    assert fast.headers["x-request-id"] == fast.json()["request_id"]
    assert fast.content.decode().startswith('{"request_id":')  # the same key order, too
    assert list(fast.json()) == list(full.json())
    # Both are in BentoML's request metrics, and both in the inference log with their inputs.
    wait_for(lambda: request_count(client, 200) - ok_before >= 2, what="request metrics")
    ids = [fast.json()["request_id"], full.json()["request_id"]]
    wait_for(lambda: len(rows_for(stack.url, ids)) == 2, what="both log rows")
    logged = rows_for(stack.url, ids)
    fast_row, full_row = logged[ids[0]], logged[ids[1]]
    for key in ("subject", "route", "inputs", "probability", "label", "threshold"):
        assert fast_row[key] == full_row[key], key
    assert fast_row["subject"] == "predictor" and fast_row["route"] == ROUTE


def test_the_access_log_has_the_fast_paths_line_like_the_full_stacks(
    stack: Stack, client: httpx.Client
) -> None:
    row = employee_rows(1)[0]
    client.post(ROUTE, json=row, headers=stack.headers("predictor"))
    client.post(ROUTE, params={"explain": "false"}, json=row, headers=stack.headers("predictor"))
    pattern = re.compile(
        r"\(scheme=http,method=POST,path=/predict/attrition,type=application/json,length=\d+\) "
        r"\(status=200,type=application/json,length=(\d+)\) [\d.]+ms"
    )

    def two_lines() -> bool:
        return len(pattern.findall(stack.server.log_path.read_text())) >= 2

    wait_for(two_lines, what="access-log lines")


@pytest.mark.parametrize(
    ("kind", "status"),
    [("no token", 401), ("no role", 403), ("bad field", 400), ("bad json", 400),
     ("text body", 415), ("too large", 413), ("chunked", 200), ("bad query", 400)],
)  # fmt: skip
def test_what_the_fast_path_declines_the_full_stack_answers(
    stack: Stack, client: httpx.Client, kind: str, status: int
) -> None:
    row = employee_rows(1)[0]
    auth = stack.headers("predictor")
    body = httpx.Request("POST", "/", json=row).content
    request: dict[str, Any] = {"headers": {**auth, "content-type": "application/json"},
                               "content": body}  # fmt: skip
    if kind == "no token":
        request["headers"].pop("Authorization")
    elif kind == "no role":
        request["headers"].update(stack.headers("historian"))
    elif kind == "bad field":
        request["content"] = body.replace(b'"Age":', b'"Age":"old","x":')
    elif kind == "bad json":
        request["content"] = body[:-1]
    elif kind == "text body":
        request["headers"]["content-type"] = "text/plain"
    elif kind == "too large":
        request["content"] = b" " * (stack.settings.max_body_bytes + 1)
    elif kind == "chunked":
        request["content"] = iter([body[:10], body[10:]])
    elif kind == "bad query":
        request["params"] = {"top_k": "0"}
    before = fast_count(client)
    r = client.post(ROUTE, **request)
    assert r.status_code == status, r.text
    if status >= 400:
        assert r.json()["detail"], r.text  # the field and the reason, as ever
    time.sleep(0.2)
    assert fast_count(client) == before


@pytest.mark.parametrize(
    ("caller", "expected"), [("none", 401), ("forged", 401), ("historian", 403)]
)
def test_a_refused_caller_is_answered_from_the_headers_before_any_body(
    stack: Stack, caller: str, expected: int
) -> None:
    """Headers announcing a body of the size limit, and no body: the refusal comes at once
    (the fast path used to wait for all of it before looking at the token)."""
    head = body_pending(stack, ROUTE, stack.settings.max_body_bytes)
    token = stack.headers("admin")["Authorization"].encode()
    if caller == "none":
        head = head.replace(b"Authorization: " + token + b"\r\n", b"")
    else:
        replacement = (
            b"Bearer x.y.z"
            if caller == "forged"
            else stack.headers(caller)["Authorization"].encode()
        )
        head = head.replace(token, replacement)
    with socket.create_connection(
        ("127.0.0.1", stack.server.port), timeout=BODY_TIMEOUT * 2
    ) as sock:
        started = time.monotonic()
        sock.sendall(head)
        raw = one_response(sock)
        waited = time.monotonic() - started
    assert status(raw) == expected, raw[:300]
    assert waited < BODY_TIMEOUT / 2, f"answered after {waited:.1f}s"


@pytest.fixture(scope="module")
def gate_off(
    model_tag: str, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A server told to leave BentoML's and uvicorn's internals alone."""
    work = tmp_path_factory.mktemp("gate-off")
    url = postgres.create()
    seed_users(url)
    env = {
        **SERVER_ENV,
        "ATTRITION_FAST_PATH": "off",
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        "ATTRITION_DATA_DIR": str(work / "data"),
    }
    server = Server("service:AttritionService", env, log=work / "serve.log")
    try:
        yield Stack("postgresql", url, server, app_settings(url, work / "data"))
    finally:
        server.stop()


def test_with_the_gate_off_the_full_stack_gives_the_same_answers(
    stack: Stack, client: httpx.Client, gate_off: Stack
) -> None:
    row = employee_rows(4)[3]
    on = client.post(ROUTE, json=row, headers=stack.headers("predictor"))
    with httpx.Client(base_url=gate_off.server.url, timeout=60) as off_client:
        off = off_client.post(ROUTE, json=row, headers=gate_off.headers("predictor"))
        refused = off_client.post(ROUTE, json=row)
        invalid = off_client.post(ROUTE, json={"Age": 1}, headers=gate_off.headers("predictor"))
        health = off_client.get("/health").json()
        metrics = off_client.get("/metrics").text
    assert on.status_code == 200 and off.status_code == 200, (on.text, off.text)
    assert comparable(on) == comparable(off)
    assert off.headers["x-request-id"] == off.json()["request_id"]
    assert refused.status_code == 401 and invalid.status_code == 400
    assert health["status"] == "ok"
    assert health["internals"] == {"active": False, "reason": "ATTRITION_FAST_PATH=off"}
    assert "attrition_internals_active 0" in metrics.splitlines()
    # Nothing took the fast path; BentoML's own metrics middleware counted the requests.
    assert "attrition_fast_path_requests_total{" not in metrics
    assert 'endpoint="/predict/attrition"' in metrics
    assert "the fast path and the uvicorn and metrics patches are off" in (
        gate_off.server.log_path.read_text(errors="replace")
    )
    on_health = client.get("/health").json()["internals"]
    assert on_health["active"] is True and "bentoml 1.4.40" in on_health["reason"]
    assert "attrition_internals_active 1" in client.get("/metrics").text.splitlines()
