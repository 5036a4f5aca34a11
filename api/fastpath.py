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
valid request. The token is checked from the headers before any of the body is read (a refused
one is declined unread, as the full stack refuses it), and the whole request runs within the
service's effective `traffic.timeout`, as BentoML's TimeoutMiddleware runs the full stack.
"""

import asyncio
import atexit
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from timeit import default_timer
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException

from api import internals
from api.metrics import fast_path_counter, rejected_counter
from api.middleware import JSON, REJECTION_REASONS, plain_json_body

log = logging.getLogger("attrition.fastpath")
access_log = logging.getLogger(internals.ACCESS_LOGGER)


@dataclass(frozen=True)
class FastResponse:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


# scope -> the caller, passed to the handler; or DECLINE: the full stack refuses the request
# from its headers alone.
Authorize = Callable[[dict[str, Any]], Awaitable[Any]]
# scope, body, caller -> the response, or None to decline (the full stack handles the request).
Handler = Callable[[dict[str, Any], bytes, Any], Awaitable[FastResponse | None]]
DECLINE = object()


async def anyone(scope: dict[str, Any]) -> None:
    """An Authorize for routes without a token check."""
    return None


@dataclass(frozen=True)
class FastRoute:
    handler: Handler
    authorize: Authorize = anyone


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
        return cls(**internals.access_log_options())


class FastRoutes:
    """The fast path's handlers by exact path, with the limits they answer under. The entry
    service builds one per worker in its __init__ (its `fast_routes`), bound to its instance;
    `wrap` finds it through BentoML's current service."""

    def __init__(
        self, handlers: dict[str, FastRoute], *, max_body_bytes: int, timeout: float | None
    ) -> None:
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        self.access: AccessLogFormat | None = None
        self.access_writer: BufferedAccessLog | None = None

    def close(self) -> None:
        """Write the access-log lines still buffered. Call from the service's shutdown hook:
        after a graceful shutdown uvicorn raises SIGTERM again with the default handler, and the
        process ends without running atexit."""
        if self.access_writer is not None:
            self.access_writer.flush()


def served_routes() -> FastRoutes | None:
    """The fast routes of this worker's service instance: None before it exists, and for a
    service without (the model service)."""
    try:
        service = bentoml.get_current_service()
    except BentoMLException:
        return None
    routes = getattr(service, "fast_routes", None)
    return routes if isinstance(routes, FastRoutes) else None


def wrap(app: Any, find: Callable[[], FastRoutes | None] = served_routes) -> Any:
    """`app` behind the fast path: what a handler declines (or no handler serves) goes to it."""

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        routes = find() if scope["type"] == "http" and scope["method"] == "POST" else None
        route = routes.handlers.get(scope["path"]) if routes is not None else None
        if (
            route is None
            or routes is None
            or scope.get("query_string")
            or not plain_json_body(scope["headers"], routes.max_body_bytes)
        ):
            await app(scope, receive, send)
            return
        started = default_timer()
        messages: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(routes.timeout):
                response = await _answer(route, scope, receive, messages)
        except TimeoutError:  # BentoML's answer after its traffic timeout
            response = FastResponse(504, internals.timeout_body(routes.timeout))
        if response is None:

            async def replay() -> Any:
                return messages.pop(0) if messages else await receive()

            await app(scope, replay, send)
            return
        await _send(routes, scope, send, response, started)

    return dispatch


async def _answer(
    route: FastRoute, scope: Any, receive: Any, messages: list[dict[str, Any]]
) -> FastResponse | None:
    """The handler's answer, or None to decline (`messages`: what was read, for the replay)."""
    try:
        caller = await route.authorize(scope)
        if caller is DECLINE:
            return None
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: not ours to judge
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return await route.handler(scope, body, caller)
    except Exception:  # as BentoML answers an exception in an API
        log.exception("%s %s failed", scope["method"], scope["path"])
        return FastResponse(500, internals.UNEXPECTED)


async def _send(
    routes: FastRoutes, scope: Any, send: Any, response: FastResponse, started: float
) -> None:
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
    access = routes.access
    if access is None:
        access = routes.access = AccessLogFormat.from_bentoml()
    if access.enabled:
        _access_line(routes, scope, access, response, started)


def _access_line(
    routes: FastRoutes, scope: Any, access: AccessLogFormat, response: FastResponse, started: float
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
    line = internals.ACCESS_LINE.format(
        address=address, request=",".join(request), response=",".join(answer), latency=latency
    )
    writer = routes.access_writer
    if writer is None:
        writer = routes.access_writer = BufferedAccessLog(access_log)
    writer.write(line)


class BufferedAccessLog:
    """The fast path's access-log lines, through the access logger's own handlers and format,
    written in batches.

    logging.info per line (a record, BentoML's filter, a strftime, a write and a flush) cost the
    entry a quarter of its CPU per prediction: with the access log off the full service at 64
    clients served 3,416 instead of 2,720 requests/s. Here a line is the handler's formatted text
    for a record of the same second (formatted once per second: BentoML's format has second
    resolution) around the message, kept until the next flush (FLUSH_SECONDS, or MAX_LINES
    lines, or exit) and written with one write per batch, as Ray Serve's throughput mode buffers
    its request logs. A format whose text changes within a second (milliseconds, a trace id)
    or a handler that is not a stream falls back to logging each line.
    """

    FLUSH_SECONDS = 0.2
    MAX_LINES = 1000

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.second = -1
        # (handler, text before the message, text after it) for the current second, or None
        self.templates: list[tuple[logging.StreamHandler[Any], str, str]] | None = None
        self.pending: dict[logging.Handler, list[str]] = {}
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None
        atexit.register(self.flush)

    def write(self, message: str) -> None:
        now = time.time()
        if int(now) != self.second:
            self.second = int(now)
            self.templates = self._templates(now)
        if self.templates is None:
            self.logger.info("%s", message)
            return
        for handler, before, after in self.templates:
            self.pending.setdefault(handler, []).append(before + message + after)
        self.count += 1
        if self.count >= self.MAX_LINES:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        pending, self.pending, self.count = self.pending, {}, 0
        for handler, lines in pending.items():
            assert isinstance(handler, logging.StreamHandler)
            with handler.lock or contextlib.nullcontext():
                try:
                    handler.stream.write("".join(lines))
                    handler.flush()
                except Exception:  # noqa: BLE001 - as logging does: never fail the request path
                    pass

    def _templates(self, now: float) -> list[tuple[logging.StreamHandler[Any], str, str]] | None:
        """Each handler's text around the message at this second; None to log line by line."""
        if not self.logger.isEnabledFor(logging.INFO):
            return []
        if self.logger.filters:
            return None
        templates = []
        for handler in _handlers(self.logger):
            if not isinstance(handler, logging.StreamHandler) or handler.level > logging.INFO:
                return None
            around = set()
            for moment in (float(int(now)), int(now) + 0.999):
                record = self.logger.makeRecord(
                    self.logger.name, logging.INFO, __file__, 0, "\x00", (), None
                )
                record.created, record.msecs = moment, (moment % 1) * 1000
                if not handler.filter(record):
                    return None
                parts = handler.format(record).split("\x00")
                if len(parts) != 2:
                    return None
                around.add((parts[0], parts[1] + handler.terminator))
            if len(around) != 1:  # the text changes within a second
                return None
            ((before, after),) = around
            templates.append((handler, before, after))
        return templates


def _handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of `logger` reaches, as Logger.callHandlers walks them."""
    found: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        found += current.handlers
        current = current.parent if current.propagate else None
    return found
