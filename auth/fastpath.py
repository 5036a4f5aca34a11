"""A fast path for the hottest JSON routes, inside BentoML's request metrics and ahead of the
rest of its stack.

Per prediction, BentoML 1.4.40's HTTP stack cost more CPU than the prediction: an OpenTelemetry
span wrapper, the access-log, timeout and context middlewares (each wrapping send/receive), the
project's guard and auth middlewares, Starlette's routing, and BentoML's endpoint machinery (its
IO descriptors re-inspect the method's signature per call; `_add_response_headers` goes through
dependency injection per call). A registered handler answers its route's ordinary requests
directly: the same authentication (JWTAuthMiddleware.check), the same limits (RequestGuard's
content type and size), the same validation (the route's pydantic model), the same log record,
the same response body and headers, the same access-log line and request metrics.

Anything out of the ordinary is *declined* and goes down the full stack unchanged, its body
replayed: a query string, another content type, no Content-Length, a refused token, invalid
input. So every refusal keeps exactly one implementation (the middlewares and BentoML's own
400s), and the fast path only ever produces what the full stack would have produced for a
valid request.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from timeit import default_timer
from typing import Any

from auth.guard import JSON, REJECTION_REASONS, media_type
from persistence.metrics import fast_path_counter, rejected_counter

log = logging.getLogger("attrition.fastpath")
access_log = logging.getLogger("bentoml.access")  # BentoML's access-log logger
# BentoML's body for a 5xx raised inside an API.
UNEXPECTED = b'{"error":"An unexpected error has occurred, please check the server log."}'


@dataclass(frozen=True)
class FastResponse:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


# scope, body -> the response, or None to decline (the full stack handles the request).
Handler = Callable[[dict[str, Any], bytes], Awaitable[FastResponse | None]]


@dataclass
class AccessLogFormat:
    """What BentoML's AccessLogMiddleware puts in a line (its configuration, read once)."""

    enabled: bool = False
    request_type: bool = False
    request_length: bool = False
    response_type: bool = False
    response_length: bool = False

    @classmethod
    def from_bentoml(cls) -> "AccessLogFormat":
        from bentoml._internal.container import BentoMLContainer

        access = BentoMLContainer.api_server_config.logging.access
        return cls(
            enabled=bool(access.enabled.get()),
            request_type=bool(access.request_content_type.get()),
            request_length=bool(access.request_content_length.get()),
            response_type=bool(access.response_content_type.get()),
            response_length=bool(access.response_content_length.get()),
        )


class FastRoutes:
    """Registered POST handlers by exact path (one registry per worker process; the service
    registers its handlers when its instance is created)."""

    handlers: dict[str, Handler] = {}
    max_body_bytes: int = 1 << 20
    timeout: float | None = None
    access: AccessLogFormat | None = None

    @classmethod
    def register(
        cls, path: str, handler: Handler, *, max_body_bytes: int, timeout: float | None
    ) -> None:
        cls.handlers[path] = handler
        cls.max_body_bytes = max_body_bytes
        cls.timeout = timeout

    @classmethod
    def clear(cls) -> None:
        cls.handlers = {}


def wrap(app: Any) -> Any:
    """`app` behind the fast path: what a handler declines (or no handler serves) goes to it."""

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        handler = (
            FastRoutes.handlers.get(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if handler is None or scope.get("query_string") or not _ordinary(scope["headers"]):
            await app(scope, receive, send)
            return
        started = default_timer()
        messages: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: not ours to judge
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response = None
        if messages[-1]["type"] == "http.request":
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            response = await _answer(handler, scope, body)
        if response is None:

            async def replay() -> Any:
                return messages.pop(0) if messages else await receive()

            await app(scope, replay, send)
            return
        await _send(scope, send, response, started)

    return dispatch


def _ordinary(headers: list[tuple[bytes, bytes]]) -> bool:
    """One JSON Content-Type and a Content-Length within the limit, as RequestGuard admits."""
    ctype = length = None
    for key, value in headers:
        if key == b"content-type":
            if ctype is not None:
                return False
            ctype = value
        elif key == b"content-length":
            if length is not None:
                return False
            length = value
    return (
        ctype is not None
        and (ctype == JSON or media_type(ctype) == JSON)
        and length is not None
        and length.isdigit()
        and int(length) <= FastRoutes.max_body_bytes
    )


async def _answer(handler: Handler, scope: Any, body: bytes) -> FastResponse | None:
    """The handler's answer, within BentoML's traffic timeout (504 with its body after it)."""
    try:
        async with asyncio.timeout(FastRoutes.timeout):
            return await handler(scope, body)
    except TimeoutError:
        msg = f'{{"error":"Not able to process the request in {FastRoutes.timeout} seconds"}}'
        return FastResponse(504, msg.encode())
    except Exception:  # as BentoML answers an exception in an API
        log.exception("%s %s failed", scope["method"], scope["path"])
        return FastResponse(500, UNEXPECTED)


async def _send(scope: Any, send: Any, response: FastResponse, started: float) -> None:
    body = response.body
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", JSON),
        *response.headers,
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    fast_path_counter(scope["path"]).inc()
    if response.status >= 400:  # as RequestGuard counts the prediction routes' refusals
        reason = REJECTION_REASONS.get(response.status, f"http_{response.status}")
        rejected_counter().labels(reason=reason).inc()
    access = FastRoutes.access
    if access is None:
        access = FastRoutes.access = AccessLogFormat.from_bentoml()
    if access.enabled:
        _access_line(scope, access, response, started)


def _access_line(
    scope: Any, access: AccessLogFormat, response: FastResponse, started: float
) -> None:
    """The line BentoML's AccessLogMiddleware writes, field for field."""
    latency = max(default_timer() - started, 0) * 1000
    client = scope.get("client")
    address = f"{client[0]}:{client[1]}" if client else "_"
    request = [f"scheme={scope['scheme']}", f"method={scope['method']}", f"path={scope['path']}"]
    if access.request_type or access.request_length:
        found = dict(h for h in scope["headers"] if h[0] in (b"content-type", b"content-length"))
        if access.request_type:
            request.append(f"type={found.get(b'content-type', b'').decode()}")
        if access.request_length:
            request.append(f"length={found.get(b'content-length', b'').decode()}")
    answer = [f"status={response.status}"]
    if access.response_type:
        answer.append("type=application/json")
    if access.response_length:
        answer.append(f"length={len(response.body)}")
    access_log.info("%s (%s) (%s) %.3fms", address, ",".join(request), ",".join(answer), latency)
