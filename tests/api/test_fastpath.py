"""The fast path's dispatcher (api/fastpath.py) as pure ASGI: what it takes, what it declines
(with the body replayed whole to the full stack, or unread when the caller is refused), and its
timeout and failure answers."""

import asyncio
import io
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from bentoml._internal.log import TRACED_LOG_FORMAT

from api.fastpath import (
    DECLINE,
    Authorize,
    BufferedAccessLog,
    FastResponse,
    FastRoute,
    FastRoutes,
    Handler,
    anyone,
    wrap,
)

BODY = b'{"Age": 41}'


def scope(
    path: str = "/fast",
    method: str = "POST",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    if headers is None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"11")]
    return {
        "type": "http", "method": method, "path": path, "query_string": query,
        "headers": headers, "scheme": "http", "client": ("127.0.0.1", 5000),
    }  # fmt: skip


class Full:
    """The full stack behind the fast path: records what reached it and the body it read."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls.append(body)
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b"full"})


def run(
    app: Any,
    scope: dict[str, Any],
    chunks: list[bytes] | None = None,
    reads: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Messages `app` sends for a request whose body comes in `chunks`; `reads` gets "read"
    for each receive() call."""
    chunks = [BODY] if chunks is None else chunks
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if reads is not None:
            reads.append("read")
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def served(app: Any, handler: Handler, *, authorize: Authorize = anyone, timeout: float = 5) -> Any:
    """`app` behind a fast path whose `handler` serves /fast (bodies up to 100 bytes)."""
    routes = FastRoutes(
        {"/fast": FastRoute(handler, authorize)}, max_body_bytes=100, timeout=timeout
    )
    return wrap(app, lambda: routes)


@dataclass
class Handled:
    """A handler that answers bodies starting with '{' and declines the rest; `seen`: the
    bodies it was given."""

    seen: list[bytes] = field(default_factory=list)

    async def handler(self, scope: dict[str, Any], body: bytes, caller: Any) -> FastResponse | None:
        self.seen.append(body)
        if not body.startswith(b"{"):
            return None
        return FastResponse(200, b'{"ok":true}', [(b"x-request-id", b"r1")])

    def wrap(self, app: Any) -> Any:
        return served(app, self.handler)


@pytest.fixture()
def handled() -> Handled:
    return Handled()


def test_without_a_service_instance_every_request_goes_to_the_full_stack() -> None:
    """Before the service instance exists, and in the model service, nothing is fast."""
    full = Full()
    start, _ = run(wrap(full), scope())
    assert start["status"] == 299 and full.calls == [BODY]


def test_an_ordinary_request_is_answered_by_its_handler(handled: Handled) -> None:
    full = Full()
    start, body = run(handled.wrap(full), scope(), [b'{"Age"', b": 41}"])
    assert handled.seen == [BODY] and full.calls == []
    assert start["status"] == 200 and body["body"] == b'{"ok":true}'
    headers = dict(start["headers"])
    assert headers[b"content-length"] == b"11" and headers[b"content-type"] == b"application/json"
    assert headers[b"x-request-id"] == b"r1"


@pytest.mark.parametrize(
    "request_scope",
    [
        scope(query=b"explain=true"),
        scope(method="GET"),
        scope(path="/other"),
        scope(headers=[(b"content-length", b"11")]),  # no content type
        scope(headers=[(b"content-type", b"text/plain"), (b"content-length", b"11")]),
        scope(headers=[(b"content-type", b"application/json")]),  # no length: chunked
        scope(headers=[(b"content-type", b"application/json"), (b"content-length", b"101")]),
        scope(headers=[(b"content-type", b"application/json"), (b"content-length", b"1x")]),
        scope(
            headers=[
                (b"content-type", b"application/json"),
                (b"content-type", b"application/json"),
                (b"content-length", b"11"),
            ]
        ),  # fmt: skip
        scope(
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", b"11"),
                (b"content-length", b"11"),
            ]
        ),  # fmt: skip
    ],
)
def test_anything_unusual_goes_to_the_full_stack_untouched(
    handled: Handled, request_scope: dict[str, Any]
) -> None:
    full = Full()
    start, body = run(handled.wrap(full), request_scope)
    assert handled.seen == [] and full.calls == [BODY]
    assert start["status"] == 299 and body["body"] == b"full"


def test_a_declined_body_is_replayed_whole_to_the_full_stack(handled: Handled) -> None:
    full = Full()
    start, _ = run(handled.wrap(full), scope(), [b"not ", b"json"])
    assert handled.seen == [b"not json"] and full.calls == [b"not json"] and start["status"] == 299


def test_parameters_on_the_content_type_are_still_json(handled: Handled) -> None:
    headers = [(b"content-type", b"Application/JSON; charset=utf-8"), (b"content-length", b"11")]
    start, _ = run(handled.wrap(Full()), scope(headers=headers))
    assert start["status"] == 200 and handled.seen == [BODY]


def test_the_caller_is_checked_before_the_body_is_read() -> None:
    """A refused caller is declined with its body unread (the full stack refuses it from its
    headers); an admitted one's identity reaches the handler with the body."""
    seen: list[tuple[bytes, Any]] = []
    order: list[str] = []

    async def authorize(scope: dict[str, Any]) -> Any:
        order.append("authorize")
        token = dict(scope["headers"]).get(b"authorization")
        return DECLINE if token is None else token.decode()

    async def handler(scope: dict[str, Any], body: bytes, caller: Any) -> FastResponse | None:
        seen.append((body, caller))
        return FastResponse(200, b"{}")

    class Refusing:
        """A full stack that refuses from the headers, never reading the body."""

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})

    app = served(Refusing(), handler, authorize=authorize)
    start, _ = run(app, scope(), reads=order)
    assert start["status"] == 401 and order == ["authorize"] and seen == []
    order.clear()
    headers = [*scope()["headers"], (b"authorization", b"alice")]
    start, _ = run(app, scope(headers=headers), reads=order)
    assert start["status"] == 200 and order == ["authorize", "read"]
    assert seen == [(BODY, "alice")]


def test_a_slow_handler_gets_bentomls_504_and_a_failing_one_its_500() -> None:
    async def slow(scope: dict[str, Any], body: bytes, caller: Any) -> FastResponse | None:
        await asyncio.sleep(5)
        return None

    async def failing(scope: dict[str, Any], body: bytes, caller: Any) -> FastResponse | None:
        raise RuntimeError("boom")

    start, body = run(served(Full(), slow, timeout=0.05), scope())
    assert start["status"] == 504
    assert json.loads(body["body"]) == {"error": "Not able to process the request in 0.05 seconds"}
    start, body = run(served(Full(), failing), scope())
    assert start["status"] == 500 and "unexpected error" in json.loads(body["body"])["error"]


def test_the_timeout_covers_the_caller_check_and_the_body_too() -> None:
    """As BentoML's TimeoutMiddleware times the whole request: a check of the caller that hangs
    (its database away) or a body that never comes end in 504 too."""

    async def hanging(scope: dict[str, Any]) -> Any:
        await asyncio.sleep(5)

    async def never(scope: dict[str, Any], body: bytes, caller: Any) -> FastResponse | None:
        raise AssertionError("not reached")

    async def silent() -> dict[str, Any]:
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    start, _ = run(served(Full(), never, authorize=hanging, timeout=0.05), scope())
    assert start["status"] == 504
    sent: list[dict[str, Any]] = []
    asyncio.run(served(Full(), never, timeout=0.05)(scope(), silent, send))
    assert sent[0]["status"] == 504


def traced_logger(name: str, fmt: str, stream: io.StringIO) -> logging.Logger:
    """A logger set up as BentoML sets up its access log: its filter and its format."""
    from bentoml._internal.log import DATE_FORMAT, TraceRecordFilter

    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(fmt, DATE_FORMAT))
    handler.addFilter(TraceRecordFilter())
    logger.addHandler(handler)
    return logger


@pytest.mark.parametrize("fmt", [TRACED_LOG_FORMAT, "%(asctime)s.%(msecs)03d %(message)s"])
def test_buffered_access_lines_are_what_logging_writes_line_by_line(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batched (BentoML's format, second resolution) or not (milliseconds), the text is the
    same as logging.info's, and nothing is lost or reordered."""
    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.25)  # logging reads it too
    # Python's own records, as BentoML's server has them (importing ray, which the bench extra
    # brings, installs a record factory whose clock the patch above does not reach).
    monkeypatch.setattr(logging, "_logRecordFactory", logging.LogRecord)
    ours, theirs = io.StringIO(), io.StringIO()
    writer = BufferedAccessLog(traced_logger("test.access.ours", fmt, ours))
    reference = traced_logger("test.access.theirs", fmt, theirs)
    lines = [f"127.0.0.1:{i} (scheme=http) (status=200) 1.{i:03d}ms" for i in range(50)]

    async def write_all() -> None:
        for line in lines:
            writer.write(line)
            reference.info("%s", line)
        if writer.templates is not None:  # batched: nothing written before the flush
            assert ours.getvalue() == ""
        await asyncio.sleep(BufferedAccessLog.FLUSH_SECONDS + 0.1)

    asyncio.run(write_all())
    batched = "msecs" not in fmt  # a text that changes within a second: line by line
    assert (writer.templates is not None) == batched
    assert ours.getvalue() == theirs.getvalue()
    assert ours.getvalue().count("\n") == 50


def test_a_full_buffer_is_written_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    writer = BufferedAccessLog(traced_logger("test.access.full", TRACED_LOG_FORMAT, out))
    monkeypatch.setattr(BufferedAccessLog, "MAX_LINES", 10)

    async def write(n: int) -> None:
        for i in range(n):
            writer.write(f"line {i}")

    asyncio.run(write(25))
    assert out.getvalue().count("\n") == 20  # two full batches; five wait for the timer
    writer.flush()
    assert out.getvalue().count("\n") == 25 and out.getvalue().rstrip().endswith("line 24")
