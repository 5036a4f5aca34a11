"""BentoML's request metrics labelled by route instead of raw path, with the fast path inside
them.

Installed by `api.internals.install` while the gate is active (its base class is BentoML's
RunnerTrafficMetricsMiddleware, from api/internals.py); imported only then.
"""

from collections.abc import Iterable
from timeit import default_timer
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route, compile_path

from api import fastpath, internals

# BentoML's own routes on every service (Swagger UI, OpenAPI, probes, metrics).
BENTOML_PATHS = frozenset({"/", "/docs.json", "/livez", "/readyz", "/healthz", "/metrics"})
STATIC_PREFIX = "/static_content/"
UNMATCHED = "unmatched"
ORIGINAL_PATH = "attrition.original_path"
RunnerTrafficMetricsMiddleware = internals.metrics_base()


class RouteLabels:
    """The route a path belongs to, for metric labels: exact paths as they are, templated FastAPI
    routes as their template, Swagger assets as one, and everything else as UNMATCHED."""

    def __init__(self, apps: Iterable[FastAPI]) -> None:
        self.apps = tuple(apps)
        self.exact: frozenset[str] | None = None
        self.templates: list[tuple[Any, str]] = []

    def _build(self) -> frozenset[str]:
        server_context = internals.server_context()  # set by the worker before serving
        exact = set(BENTOML_PATHS) | set(server_context.service_routes)
        for app in self.apps:
            # Its own routes, and (through its OpenAPI document) those of included routers,
            # which FastAPI resolves lazily.
            paths = [route.path for route in app.routes if isinstance(route, Route)]
            paths += list(app.openapi().get("paths", {}))
            for path in dict.fromkeys(paths):
                if "{" in path:
                    self.templates.append((compile_path(path)[0], path))
                else:
                    exact.add(path)
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


class RouteLabelledMetrics(RunnerTrafficMetricsMiddleware):  # type: ignore[misc,valid-type]
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
        server_context = internals.server_context()
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
