"""HTTP-layer limits BentoML does not expose: request header size, header and body read time (in
uvicorn), /metrics labelled by route, and 400 for every malformed request to the FastAPI routes.

BentoML 1.4.40 builds each worker's `uvicorn.Config(app, http="auto", ...)` itself
(_bentoml_impl/worker/service.py) after importing service.py, and its request metrics middleware
labels by raw path. `install()` runs when service.py is imported, so in every worker of every
`bentoml serve` (a container's included): it points uvicorn's "auto" protocol at
LimitedHttpToolsProtocol and BentoML's metrics middleware at RouteLabelledMetrics. The
integration tests (tests/integration/test_http_limits.py) fail if a BentoML or uvicorn upgrade
stops these from taking effect.
"""

import asyncio
import logging
from collections.abc import Iterable
from timeit import default_timer
from typing import Any

import uvicorn.config
from bentoml._internal.server.http import instruments
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from auth import fastpath
from auth.guard import BODY_TIMED_OUT, BODY_TIMEOUT_MESSAGE
from auth.login import NO_STORE
from auth.middleware import error_body
from settings import Settings

log = logging.getLogger("attrition.http")

# BentoML's own routes on every service (Swagger UI, OpenAPI, probes, metrics).
BENTOML_PATHS = frozenset({"/", "/docs.json", "/livez", "/readyz", "/healthz", "/metrics"})
STATIC_PREFIX = "/static_content/"
UNMATCHED = "unmatched"
ORIGINAL_PATH = "attrition.original_path"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request line plus headers (431), on the
    time to send them (408), counted from the connection or the request's first byte, and on the
    time to send the body (408), counted from the end of the headers; each closes the connection.

    Plain uvicorn keeps reading a header for as long as it grows, keeps a connection that never
    completes one open forever (its keep-alive timer only starts after a response), and reads a
    body for as long as bytes trickle in, even after the response (a 401 or a 504 sent before
    the body arrived leaves the connection open for the rest of it).
    """

    max_header_bytes = 32 * 1024
    header_timeout = 10.0
    body_timeout = 20.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.in_headers = True
        self.in_body = False
        self.raw_header_bytes = 0  # bytes received since the headers began, body bytes excluded
        self.header_bytes = 0  # the parsed request line and headers
        self.too_large = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.in_headers:
            self.raw_header_bytes += len(data)
        super().data_received(data)
        # A header still incomplete after this chunk: its bytes so far were all header bytes
        # (at most one read beyond the limit is ever buffered).
        if self.in_headers and self.raw_header_bytes > self.max_header_bytes:
            self.reject(431, "request headers exceed the limit")
        # Armed only for a body still incomplete after the read that ended its headers: the
        # usual request (headers and body in one read) costs no timer.
        elif self.in_body and self.body_timer is None and not self.transport.is_closing():
            self.body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers = True
        self.header_bytes = 0
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._disarm_header_timer()
        super().on_headers_complete()
        self.in_body = not self.parser.should_upgrade()  # an upgrade is another protocol's

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.in_headers = True  # a pipelined request's headers come next
        self.in_body = False
        self.raw_header_bytes = 0
        self._disarm_body_timer()

    def _count(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.max_header_bytes:
            self.too_large = True
            raise ValueError("request headers exceed the limit")  # parser -> send_400_response

    def send_400_response(self, msg: str) -> None:
        if self.too_large:
            self.reject(431, "request headers exceed the limit")
        else:
            super().send_400_response(msg)

    def _arm_header_timer(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _disarm_body_timer(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.in_headers and (self.cycle is None or self.cycle.response_complete):
            self.reject(408, "request headers not received in time")

    def _body_too_slow(self) -> None:
        self.body_timer = None
        if not self.in_body or self.transport.is_closing():
            return
        cycle = self.cycle
        waiting_on_us = self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue
        )
        if waiting_on_us and not (cycle is not None and cycle.response_complete):
            # The application has not taken what it was sent yet (or not asked for the body):
            # the client is not the slow one. The service's traffic timeout bounds this.
            self.body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)
            return
        self.reject(408, BODY_TIMEOUT_MESSAGE, "body")

    def reject(self, status: int, msg: str, part: str = "header") -> None:
        """Answer with a JSON error and close the connection (nothing more is read from it); only
        close it when the response to the request whose body is being read has begun."""
        if self.transport.is_closing():
            return
        self._disarm_header_timer()
        self._disarm_body_timer()
        cycle = self.cycle
        if self.in_body and cycle is not None:  # the request whose body is being read
            if not cycle.response_complete:
                # Its application ends here: receive() gets http.disconnect, sends are dropped,
                # and RequestGuard answers it as 408 for the metrics and the access log.
                cycle.disconnected = True
                cycle.scope[BODY_TIMED_OUT] = True  # type: ignore[literal-required]
                cycle.message_event.set()
            if cycle.response_started:  # answered (or answering) already: only close
                self.transport.close()
                return
        body = error_body(msg, [part], msg, f"{part}_limit")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class RouteLabels:
    """The route a path belongs to, for metric labels: exact paths as they are, templated FastAPI
    routes as their template, Swagger assets as one, and everything else as UNMATCHED."""

    def __init__(self, apps: Iterable[FastAPI]) -> None:
        self.apps = tuple(apps)
        self.exact: frozenset[str] | None = None
        self.templates: list[tuple[Any, str]] = []

    def _build(self) -> frozenset[str]:
        from bentoml._internal.context import server_context  # set by the worker before serving

        exact = set(BENTOML_PATHS) | set(server_context.service_routes)
        for app in self.apps:
            for route in app.routes:
                if not isinstance(route, Route):
                    continue
                if route.param_convertors:
                    self.templates.append((route.path_regex, route.path))
                else:
                    exact.add(route.path)
        self.exact = frozenset(exact)
        return self.exact

    def __call__(self, path: str) -> str:
        exact = self.exact if self.exact is not None else self._build()
        if path in exact:
            return path
        for regex, template in self.templates:
            if regex.match(path):
                return str(template)
        if path.startswith(STATIC_PREFIX):
            return STATIC_PREFIX + "{path}"
        return UNMATCHED


def _restore_path(app: Any) -> Any:
    async def restore(scope: Any, receive: Any, send: Any) -> None:
        if ORIGINAL_PATH in scope:  # the inner app gets the real path back
            scope = {**scope, "path": scope[ORIGINAL_PATH]}
            del scope[ORIGINAL_PATH]
        await app(scope, receive, send)

    return restore


class RouteLabelledMetrics(instruments.RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics labelled by route instead of raw path: requests for paths no
    route serves share one label instead of each adding series to /metrics."""

    labels: RouteLabels | None = None

    def __init__(self, app: Any, **options: Any) -> None:
        super().__init__(_restore_path(fastpath.wrap(app)), **options)
        self._series: dict[str, RouteSeries] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.labels is None:  # websockets, lifespan: BentoML's own
            await super().__call__(scope, receive, send)
            return
        if not self._is_setup:
            self._setup()
        if scope["path"] == "/metrics":  # as BentoML: a scrape is not a request
            await self.app(scope, receive, send)
            return
        series = self._series_of(self.labels(scope["path"]))
        if series.stamp is not None:
            series.stamp.set_to_current_time()
        started = default_timer()
        status = 0

        async def wrapped_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                total, duration = series.by_status.get(status) or series.add(status)
                total.inc()
                duration.observe(max(default_timer() - started, 0))
            await send(message)

        series.in_progress.inc()
        try:
            await self.app(scope, receive, wrapped_send)
        finally:
            series.in_progress.dec()

    def _series_of(self, route: str) -> "RouteSeries":
        series = self._series.get(route)
        if series is None:
            series = self._series[route] = RouteSeries(self, route)
        return series


class RouteSeries:
    """BentoML's request metrics of one route, as prometheus children looked up once: BentoML
    calls .labels() with five keyword labels four times per request (~2 % of a worker's CPU)."""

    def __init__(self, metrics: RouteLabelledMetrics, route: str) -> None:
        from bentoml._internal.context import server_context

        self.metrics = metrics
        self.names = {
            "endpoint": route,
            "service_name": server_context.bento_name,
            "service_version": server_context.bento_version,
            "runner_name": server_context.service_name,
        }
        stamp = {k: v for k, v in self.names.items() if k != "endpoint"}
        skipped = route.startswith(tuple(metrics.skip_paths))
        self.stamp = None if skipped else metrics.metrics_last_request_timestamp.labels(**stamp)
        self.in_progress = metrics.metrics_request_in_progress.labels(**self.names)
        self.by_status: dict[int, tuple[Any, Any]] = {}

    def add(self, status: int) -> tuple[Any, Any]:
        labels = {**self.names, "http_response_code": status}
        children = (
            self.metrics.metrics_request_total.labels(**labels),
            self.metrics.metrics_request_duration.labels(**labels),
        )
        self.by_status[status] = children
        return children


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """400 for malformed requests to the FastAPI routes, in the shape the middlewares use:
    the field and the reason, never the submitted value (it may be a password)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    headers = NO_STORE if request.url.path == "/auth/token" else None
    body = {"error": "invalid request", "detail": detail}
    return JSONResponse(body, status_code=400, headers=headers)


def install(settings: Settings, *apps: FastAPI) -> None:
    """Apply the limits to every uvicorn server this process starts, and route labels to
    BentoML's metrics; also register the 400 handler on `apps`."""
    LimitedHttpToolsProtocol.max_header_bytes = settings.http_max_header_bytes
    LimitedHttpToolsProtocol.header_timeout = settings.http_header_timeout_seconds
    LimitedHttpToolsProtocol.body_timeout = settings.http_body_timeout_seconds
    protocol = f"{__name__}:{LimitedHttpToolsProtocol.__name__}"
    for name in ("auto", "httptools"):
        if name not in uvicorn.config.HTTP_PROTOCOLS:
            raise RuntimeError(f"uvicorn has no {name!r} HTTP protocol to limit")
        uvicorn.config.HTTP_PROTOCOLS[name] = protocol
    RouteLabelledMetrics.labels = RouteLabels(apps)
    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledMetrics  # type: ignore[assignment,misc]
    for app in apps:
        app.add_exception_handler(RequestValidationError, invalid_request)
