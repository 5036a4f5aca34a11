"""HTTP limits of a real server: header size (431), header and body read time (408) in every
worker's uvicorn, /metrics labels by route, no library versions in the public OpenAPI document."""

import json
import select
import socket
import time
from collections import Counter
from importlib.metadata import version

import httpx
import pytest

from tests.conftest import Stack
from tests.helpers import employee_rows

pytestmark = pytest.mark.integration

HEADER_LIMIT = 32 * 1024  # ATTRITION_HTTP_MAX_HEADER_BYTES default
HEADER_TIMEOUT = 5  # ATTRITION_HTTP_HEADER_TIMEOUT_SECONDS of the test servers
BODY_TIMEOUT = 5  # ATTRITION_HTTP_BODY_TIMEOUT_SECONDS of the test servers


def connect(stack: Stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.server.port), timeout=HEADER_TIMEOUT * 4)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def one_response(sock: socket.socket) -> bytes:
    """Exactly one response with a Content-Length body, leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:  # the body may come in a segment of its own
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def send_all(sock: socket.socket, *parts: bytes) -> None:
    try:
        for part in parts:
            sock.sendall(part)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: that is the point


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


REQUEST = b"GET /livez HTTP/1.1\r\nHost: t\r\n"
BIG_HEADERS = {
    "one_long_header": [REQUEST + b"X-Big: " + b"a" * (HEADER_LIMIT + 1) + b"\r\n\r\n"],
    "many_small_headers": [REQUEST + b"".join(b"X-H%d: v\r\n" % i for i in range(4000)) + b"\r\n"],
    "long_url": [b"GET /livez?" + b"q" * (HEADER_LIMIT + 1) + b" HTTP/1.1\r\nHost: t\r\n\r\n"],
    "16_mib_header_streamed": [REQUEST + b"X-Big: "] + [b"a" * 65536] * 256,
    "long_token": [REQUEST + b"Authorization: Bearer " + b"e" * 200_000 + b"\r\n\r\n"],
}


@pytest.mark.parametrize("case", BIG_HEADERS, ids=list(BIG_HEADERS))
def test_oversized_headers_are_a_431_and_the_connection_closed(stack: Stack, case: str) -> None:
    with connect(stack) as sock:
        send_all(sock, *BIG_HEADERS[case])
        raw = answer(sock)
    assert status(raw) == 431, raw[:200]
    assert b"connection: close" in raw.lower()


def test_headers_just_under_the_limit_are_served(stack: Stack) -> None:
    padding = b"a" * (HEADER_LIMIT - 1024)
    with connect(stack) as sock:
        send_all(sock, REQUEST + b"X-Pad: " + padding + b"\r\nConnection: close\r\n\r\n")
        assert status(answer(sock)) == 200


def test_a_big_header_on_a_kept_alive_connection_is_a_431_too(stack: Stack) -> None:
    with connect(stack) as sock:
        send_all(sock, REQUEST + b"\r\n")
        assert status(one_response(sock)) == 200
        send_all(sock, REQUEST + b"X-Big: " + b"a" * (HEADER_LIMIT + 1) + b"\r\n\r\n")
        assert status(answer(sock)) == 431


def test_slow_or_silent_clients_are_cut_off_after_the_header_timeout(stack: Stack) -> None:
    """Slowloris: 100 connections dribbling header lines, and 20 that never send a byte, get 408
    and are closed once the header timeout passes; the service answers others meanwhile."""
    started = time.monotonic()
    slow = {connect(stack): i for i in range(100)}
    silent = [connect(stack) for _ in range(20)]
    for sock in slow:
        send_all(sock, REQUEST)
    closed: dict[int, tuple[float, int]] = {}
    while len(closed) < len(slow) and time.monotonic() - started < HEADER_TIMEOUT * 4:
        assert httpx.get(f"{stack.server.url}/livez", timeout=10).status_code == 200
        still_open = [sock for sock, i in slow.items() if i not in closed]
        for sock in still_open:
            send_all(sock, b"X-Slow: v\r\n")
        readable, _, _ = select.select(still_open, [], [], 0.5)
        for sock in readable:  # the server answered: read up to its close
            closed[slow[sock]] = (time.monotonic() - started, status(answer(sock)))
    silent_answers = [status(answer(sock)) for sock in silent]
    for sock in [*slow, *silent]:
        sock.close()
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow connections still open"
    assert {code for _, code in closed.values()} == {408}
    cut_off = [at for at, _ in closed.values()]
    assert HEADER_TIMEOUT - 1 <= min(cut_off) and max(cut_off) <= HEADER_TIMEOUT * 3, cut_off
    assert set(silent_answers) == {408}


def body_pending(stack: Stack, path: str, length: int = 1000) -> bytes:
    """A request's line and headers, as its route's callers send them, announcing `length`
    bytes of body."""
    if path == "/auth/token":
        kind, auth = b"application/x-www-form-urlencoded", b""
    else:
        kind = b"application/json"
        auth = b"Authorization: " + stack.headers("admin")["Authorization"].encode() + b"\r\n"
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nContent-Type: " + kind
            + b"\r\nContent-Length: %d\r\n" % length + auth + b"\r\n")  # fmt: skip


TRICKLED_ROUTES = ("/predict/attrition", "/predict/attrition/batch", "/auth/token", "/outcomes")


def answered(stack: Stack) -> Counter[tuple[str, str]]:
    """Requests answered so far by (route, status), from BentoML's request metrics."""
    found: Counter[tuple[str, str]] = Counter()
    for line in httpx.get(f"{stack.server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("bentoml_service_request_total{"):
            route = line.split('endpoint="', 1)[1].split('"', 1)[0]
            code = line.split('http_response_code="', 1)[1].split('"', 1)[0]
            found[(route, code)] += int(float(line.split()[-1]))
    return found


def test_bodies_trickled_at_one_byte_a_second_are_cut_off_on_every_route(stack: Stack) -> None:
    """Three connections per route whose bodies come 1 byte/s get 408 and are closed once the
    body timeout passes; the service answers others meanwhile, and counts them as 408s (not as
    500s of an application that lost its client)."""
    before = answered(stack)
    socks = {connect(stack): path for path in TRICKLED_ROUTES for _ in range(3)}
    for sock, path in socks.items():
        send_all(sock, body_pending(stack, path))
    started = time.monotonic()
    closed: dict[socket.socket, tuple[float, int]] = {}
    while len(closed) < len(socks) and time.monotonic() - started < BODY_TIMEOUT * 4:
        assert httpx.get(f"{stack.server.url}/livez", timeout=10).status_code == 200
        still_open = [sock for sock in socks if sock not in closed]
        for sock in still_open:
            send_all(sock, b" ")
        readable, _, _ = select.select(still_open, [], [], 1.0)
        for sock in readable:  # the server answered: read up to its close
            closed[sock] = (time.monotonic() - started, status(answer(sock)))
    for sock in socks:
        sock.close()
    by_route = {path: sorted(at for s, (at, _) in closed.items() if socks[s] == path)
                for path in TRICKLED_ROUTES}  # fmt: skip
    print(f"trickled bodies cut off after (s): {by_route}")
    assert len(closed) == len(socks), f"still open: {by_route}"
    assert {code for _, code in closed.values()} == {408}
    cut_off = [at for at, _ in closed.values()]
    assert BODY_TIMEOUT - 1 <= min(cut_off) and max(cut_off) <= BODY_TIMEOUT * 3, by_route
    want = {(path, "408"): 3 for path in TRICKLED_ROUTES}
    deadline = time.monotonic() + 10
    while True:  # each worker writes its metrics as its application unwinds
        counted = {k: v for k, v in (answered(stack) - before).items() if k[0] in TRICKLED_ROUTES}
        if counted == want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counted == want
    assert "ClientDisconnect" not in stack.server.log()


def test_a_body_still_coming_after_the_answer_is_cut_off_too(stack: Stack) -> None:
    """A 401 sent before the body (no token needed to refuse) leaves no connection open for the
    rest of the body."""
    with connect(stack) as sock:
        send_all(
            sock, body_pending(stack, "/predict/attrition/batch").replace(b"Authorization", b"X-No")
        )
        assert status(one_response(sock)) == 401
        started = time.monotonic()
        sock.settimeout(BODY_TIMEOUT * 3)
        while True:
            send_all(sock, b" ")
            readable, _, _ = select.select([sock], [], [], 1.0)
            if readable:
                try:
                    assert sock.recv(65536) == b"", "nothing but the close"
                except ConnectionResetError:  # closed with our bytes unread: a close too
                    pass
                break
            assert time.monotonic() - started < BODY_TIMEOUT * 3, "still open"
    assert time.monotonic() - started <= BODY_TIMEOUT * 3


def test_a_body_sent_in_pieces_in_time_is_served(stack: Stack) -> None:
    """The timeout is for the whole body: one sent in 20 pieces within it is answered."""
    body = json.dumps({"employees": employee_rows(5)}).encode()
    step = -(-len(body) // 20)
    with connect(stack) as sock:
        send_all(sock, body_pending(stack, "/predict/attrition/batch", len(body)))
        for i in range(0, len(body), step):
            send_all(sock, body[i : i + step])
            time.sleep(BODY_TIMEOUT / 40)
        assert status(one_response(sock)) == 200


def endpoint_labels(stack: Stack) -> set[str]:
    metrics = httpx.get(f"{stack.server.url}/metrics", timeout=30).text
    return {
        line.split('endpoint="', 1)[1].split('"', 1)[0]
        for line in metrics.splitlines()
        if line.startswith("bentoml_service_request_total{") and 'endpoint="' in line
    }


def test_unknown_paths_share_one_metrics_label(stack: Stack) -> None:
    for i in range(30):
        httpx.get(f"{stack.server.url}/probe-{i}-{time.time_ns()}", timeout=30)
        httpx.post(f"{stack.server.url}/admin/probe-{i}", timeout=30)
    headers = stack.headers("admin")
    for i in range(5):  # a templated route: one label for every id
        httpx.get(
            f"{stack.server.url}/predict/history/00000000-0000-0000-0000-00000000000{i}",
            headers=headers,
            timeout=30,
        )
    before = endpoint_labels(stack)
    assert not [label for label in before if "probe-" in label or "0000-" in label], before
    assert {"unmatched", "/predict/history/{inference_id}"} <= before
    for i in range(30):
        httpx.get(f"{stack.server.url}/another-{i}", timeout=30)
    assert endpoint_labels(stack) == before


def test_the_public_openapi_document_names_no_library_versions(stack: Stack) -> None:
    text = httpx.get(f"{stack.server.url}/docs.json", timeout=30).text
    libraries = ["bentoml", "fastapi", "starlette", "uvicorn", "pydantic", "scikit-learn",
                 "onnxruntime", "numpy", "pandas", "SQLAlchemy", "PyJWT", "sqlmodel"]  # fmt: skip
    for library in libraries:
        assert f"{library}-{version(library)}".lower() not in text.lower()
        assert f"{library} {version(library)}".lower() not in text.lower()
        assert f"{library}/{version(library)}".lower() not in text.lower()
    assert f"-{version('bentoml')}-" not in text  # the shields.io badge BentoML puts there
    assert "BentoML Team" not in text
