"""The one gate around private BentoML and uvicorn names: no other module of the project imports
or names them (tests/api/test_internals.py greps for it).

What rests on them: uvicorn's header and body limits (api/protocol.py's LimitedHttpToolsProtocol, a
subclass of uvicorn's HttpToolsProtocol put in uvicorn's protocol table), BentoML's request
metrics labelled by route (api/route_metrics.py, a subclass of its RunnerTrafficMetricsMiddleware
put in the module BentoML reads it from), the fast path inside them (which copies BentoML's access-log line, its
500 and 504 bodies and its Server header, and reads its traffic timeout and access-log options
from BentoML's configuration container), the runner's JSON media type set on BentoML's output
specs, and the worker module name the drain looks for in command lines.

`check()` runs once per process, at the import of service.py: only with the exact versions
this was written for (WRITTEN_FOR) and every name below present is the gate active. Otherwise,
or with ATTRITION_FAST_PATH=off, nothing above is installed, a warning says why, /health reports
it and `attrition_internals_active` is 0: BentoML's full stack serves every request, with the same
answers (without the header limits and with BentoML's own metric labels).
"""

import importlib
import importlib.metadata
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from settings import Settings

log = logging.getLogger("attrition.internals")

# The distributions whose private names are used here, at the versions this was written for.
WRITTEN_FOR = {"bentoml": "1.4.40", "uvicorn": "0.55.0", "starlette": "1.10.0"}

METRICS_MODULE = "bentoml._internal.server.http.instruments"
CONTEXT_MODULE = "bentoml._internal.context"
CONTAINER_MODULE = "bentoml._internal.container"
PROTOCOL_MODULE = "uvicorn.protocols.http.httptools_impl"
# (module, dotted attribute) that must exist for the patches and the fast path to work.
REQUIRED: tuple[tuple[str, str], ...] = (
    (METRICS_MODULE, "RunnerTrafficMetricsMiddleware._setup"),
    (METRICS_MODULE, "RunnerTrafficMetricsMiddleware.__call__"),
    (CONTEXT_MODULE, "server_context.service_routes"),
    (CONTEXT_MODULE, "server_context.bento_name"),
    (CONTEXT_MODULE, "server_context.bento_version"),
    (CONTAINER_MODULE, "BentoMLContainer.config.services"),
    (CONTAINER_MODULE, "BentoMLContainer.api_server_config.logging.access"),
    (CONTAINER_MODULE, "BentoMLContainer.tracing.exporter_type"),
    (CONTAINER_MODULE, "BentoMLContainer.http.cors.enabled"),
    (PROTOCOL_MODULE, "STATUS_LINE"),
    *(
        (PROTOCOL_MODULE, f"HttpToolsProtocol.{method}")
        for method in (
            "connection_made",
            "connection_lost",
            "data_received",
            "on_message_begin",
            "on_url",
            "on_header",
            "on_headers_complete",
            "on_message_complete",
            "send_400_response",
        )
    ),
    ("uvicorn.config", "HTTP_PROTOCOLS"),
)

# BentoML's private packages (loadtests/profile.py names profile stages by their files).
IMPL_PACKAGE = "_bentoml_impl"
SDK_PACKAGE = "_bentoml_sdk"
# The command-line module of a BentoML worker process (_bentoml_impl/worker/service.py).
WORKER_MODULE = f"{IMPL_PACKAGE}.worker.service"
# BentoML's body for an exception raised inside an API (its 500, and its 503 for ServiceUnavailable).
UNEXPECTED = b'{"error":"An unexpected error has occurred, please check the server log."}'
# BentoML's access-log logger, and the line its AccessLogMiddleware writes.
ACCESS_LOGGER = "bentoml.access"
ACCESS_LINE = "{address} ({request}) ({response}) {latency:.3f}ms"


def timeout_body(seconds: float | None) -> bytes:
    """BentoML's body for a request that ran past its traffic timeout (504)."""
    return f'{{"error":"Not able to process the request in {seconds} seconds"}}'.encode()


def server_header(service: str) -> list[tuple[bytes, bytes]]:
    """The header BentoML adds to every API response of `service` (its _add_response_headers)."""
    return [(b"server", f"BentoML Service/{service}".encode())]


@dataclass(frozen=True)
class Gate:
    """Whether the code resting on private names is in use in this process, and why (not)."""

    active: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"active": self.active, "reason": self.reason}


INACTIVE = Gate(False, "not checked")
_gate = INACTIVE


def installed_versions() -> dict[str, str | None]:
    """The installed version of each distribution in WRITTEN_FOR (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in WRITTEN_FOR:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def missing_names() -> list[str]:
    """The REQUIRED names that cannot be found."""
    missing = []
    for module_name, dotted in REQUIRED:
        try:
            target: Any = importlib.import_module(module_name)
            for part in dotted.split("."):
                target = getattr(target, part)
        except Exception:  # noqa: BLE001 - an import or attribute error: either way, missing
            missing.append(f"{module_name}.{dotted}")
    return missing


def check(fast_path: str) -> Gate:
    """Decide whether the internals may be used here (ATTRITION_FAST_PATH, the versions, the
    names), remember it for `gate()`, and log a warning when they may not."""
    global _gate
    _gate = _decide(fast_path)
    if not _gate.active:
        log.warning(
            "the fast path and the uvicorn and metrics patches are off (%s): BentoML's full "
            "stack serves every request",
            _gate.reason,
        )
    return _gate


def _decide(fast_path: str) -> Gate:
    if fast_path == "off":
        return Gate(False, "ATTRITION_FAST_PATH=off")
    found = installed_versions()
    wrong = [
        f"{name} {found[name] or 'missing'} (written for {want})"
        for name, want in WRITTEN_FOR.items()
        if found[name] != want
    ]
    if wrong:
        return Gate(False, "untested versions: " + ", ".join(wrong))
    missing = missing_names()
    if missing:
        return Gate(False, "missing internals: " + ", ".join(missing))
    versions = ", ".join(f"{name} {want}" for name, want in WRITTEN_FOR.items())
    return Gate(True, f"written for the installed {versions}")


def install(settings: "Settings", *apps: "FastAPI") -> Gate:
    """Check the gate; while it is active, apply the header limits to every uvicorn server this
    process starts and label BentoML's request metrics by the routes of `apps`."""
    decided = check(settings.fast_path)
    if decided.active:
        from api.protocol import LimitedHttpToolsProtocol
        from api.route_metrics import RouteLabelledMetrics, RouteLabels

        LimitedHttpToolsProtocol.configure(settings)
        use_protocol(LimitedHttpToolsProtocol)
        RouteLabelledMetrics.labels = RouteLabels(apps)
        use_metrics_middleware(RouteLabelledMetrics)
    return decided


def gate() -> Gate:
    """This process's decision (INACTIVE before `check`)."""
    return _gate


def active_gauge() -> str:
    """`attrition_internals_active` in Prometheus text, for the service's __metrics__."""
    return (
        "# HELP attrition_internals_active 1 when the fast path and the uvicorn and metrics "
        "patches are in use (api/internals.py), 0 when BentoML's full stack serves everything\n"
        "# TYPE attrition_internals_active gauge\n"
        f"attrition_internals_active {int(_gate.active)}\n"
    )


def _require_active() -> None:
    if not _gate.active:
        raise RuntimeError(f"BentoML and uvicorn internals are off: {_gate.reason}")


# What the patches build on; only called while the gate is active.


def protocol_base() -> tuple[type[Any], dict[int, bytes]]:
    """uvicorn's httptools protocol class and its status lines."""
    _require_active()
    module = importlib.import_module(PROTOCOL_MODULE)
    return module.HttpToolsProtocol, module.STATUS_LINE


def metrics_base() -> type[Any]:
    """BentoML's request metrics middleware class."""
    _require_active()
    return importlib.import_module(METRICS_MODULE).RunnerTrafficMetricsMiddleware  # type: ignore[no-any-return]


def tracer_provider() -> Any:
    """The tracer provider BentoML built from its `tracing` option (it exports the entry's and
    the runner's spans; BentoML never makes it the global one). Another BentoML without it: the
    global provider, which exports nothing unless someone configured it."""
    container = importlib.import_module(CONTAINER_MODULE).BentoMLContainer
    provider = getattr(container, "tracer_provider", None)
    if provider is None:
        from opentelemetry import trace

        return trace.get_tracer_provider()
    return provider.get()


def server_context() -> Any:
    """BentoML's per-worker server context (routes, bento and service names)."""
    return importlib.import_module(CONTEXT_MODULE).server_context


def use_protocol(protocol: type[Any]) -> None:
    """Make `protocol` the one uvicorn uses for http="auto" and "httptools" in this process."""
    _require_active()
    import uvicorn.config

    path = f"{protocol.__module__}:{protocol.__name__}"
    for name in ("auto", "httptools"):
        if name not in uvicorn.config.HTTP_PROTOCOLS:
            raise RuntimeError(f"uvicorn has no {name!r} HTTP protocol to limit")
        uvicorn.config.HTTP_PROTOCOLS[name] = path


def use_metrics_middleware(middleware: type[Any]) -> None:
    """Make BentoML wrap each service's app in `middleware` instead of its own metrics one (its
    app factory imports the class from the module when it builds the app)."""
    _require_active()
    module: Any = importlib.import_module(METRICS_MODULE)
    module.RunnerTrafficMetricsMiddleware = middleware


def json_output(service: Any, *apis: str) -> None:
    """Name the JSON media type of `apis`' outputs: BentoML works out a root-typed output's
    media type by building its JSON schema on every response otherwise."""
    if not _gate.active:
        return
    for name in apis:
        service.apis[name].output_spec.media_type = "application/json"


def traffic_timeout(service: str) -> float | None:
    """The service's effective `traffic.timeout`, where BentoML's app factory reads it for its
    TimeoutMiddleware: the decorator's arguments merged with BENTOML_CONFIG and
    BENTOML_CONFIG_OVERRIDES (the decorator alone holds only what it was given)."""
    container = importlib.import_module(CONTAINER_MODULE).BentoMLContainer
    services = container.config.services.get()
    timeout: float | None = services.get(service, {}).get("traffic", {}).get("timeout")
    return timeout


def bypassed_options(service: str) -> list[str]:
    """The BentoML options of `service` whose middlewares the fast path, running ahead of them,
    would skip: tracing, CORS and `traffic.max_concurrency`. With any set, the fast path stays
    off and the full stack serves every request."""
    container = importlib.import_module(CONTAINER_MODULE).BentoMLContainer
    found = []
    exporter = container.tracing.exporter_type.get()
    if exporter:
        found.append(f"tracing ({exporter})")
    if container.http.cors.enabled.get():
        found.append("http.cors")
    try:
        services = container.config.services.get()
    except KeyError:  # outside a 1.4 worker the configuration has no services
        services = {}
    if (services.get(service, {}).get("traffic") or {}).get("max_concurrency"):
        found.append("traffic.max_concurrency")
    return found


def access_log_options() -> dict[str, bool]:
    """What BentoML's AccessLogMiddleware puts in a line, from its configuration."""
    container = importlib.import_module(CONTAINER_MODULE).BentoMLContainer
    access = container.api_server_config.logging.access
    return {
        "enabled": bool(access.enabled.get()),
        "request_type": bool(access.request_content_type.get()),
        "request_length": bool(access.request_content_length.get()),
        "response_type": bool(access.response_content_type.get()),
        "response_length": bool(access.response_content_length.get()),
    }
