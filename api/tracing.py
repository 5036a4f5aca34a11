"""OpenTelemetry for the service (issue 18): BentoML's tracing configured from the standard
OTEL_* variables, the trace id each inference record carries, and the entry's own spans.

BentoML 1.4 builds the spans of the HTTP entry (its ASGI instrumentation) and of the call to the
model service; this module adds the batch a request joined in the entry's Coalescer (the
inference log adds its append and COPY spans). Tracing is off unless OTEL_TRACES_EXPORTER=otlp
(docs/operations/tracing.md).
"""

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, Tracer

from api import internals
from settings import Settings

# Health and metrics scrapes are not requests anyone traces.
UNTRACED_PATHS = ["/livez", "/healthz", "/readyz", "/metrics"]
# W3C trace context: version-traceid-parentid-flags; version ff and an all-zero id are invalid.
TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
SAMPLE_RATES = {
    "always_on": 1.0,
    "parentbased_always_on": 1.0,
    "always_off": 0.0,
    "parentbased_always_off": 0.0,
}


def bentoml_tracing(settings: Settings) -> dict[str, Any]:
    """The `tracing` option of both services' `@bentoml.service`. Off: no span is built at all
    (docs/adr/0008-tracing-excluded.md). On: OTLP over HTTP; the exporter itself reads
    OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS and _TIMEOUT."""
    if settings.otel_traces_exporter == "none":
        return {"excluded_urls": [".*"]}
    return {
        "exporter_type": "otlp",
        "sample_rate": sample_rate(settings),
        "excluded_urls": UNTRACED_PATHS,
        "otlp": {"protocol": "http"},
    }


def sample_rate(settings: Settings) -> float:
    """BentoML always samples parent-based: a sampled incoming traceparent is followed, and a
    new trace is kept with this probability."""
    if settings.otel_traces_sampler in SAMPLE_RATES:
        return SAMPLE_RATES[settings.otel_traces_sampler]
    arg = settings.otel_traces_sampler_arg
    return 1.0 if arg is None else arg


def trace_id(traceparent: str | None) -> str | None:
    """The trace id a record gets: the current span's when tracing is on, else the incoming
    W3C traceparent's, else None."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format(context.trace_id, "032x")
    if traceparent is None:
        return None
    match = TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match[1] == "ff" or match[2] == "0" * 32 or match[3] == "0" * 16:
        return None
    return match[2]


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def tracer(settings: Settings) -> Tracer | None:
    """The tracer of this worker's own spans, None with tracing off. Call in the worker (BentoML
    builds its provider from the worker's configuration)."""
    if settings.otel_traces_exporter == "none":
        return None
    return internals.tracer_provider().get_tracer("attrition")  # type: ignore[no-any-return]


def current_context() -> SpanContext:
    return trace.get_current_span().get_span_context()


@contextmanager
def batch_span(tracer: Tracer, requests: Sequence[SpanContext], items: int) -> Iterator[Span]:
    """The span of one call the entry's Coalescer makes for the requests that shared it: a child
    of the first request's span (so the model service's span lands in a request's trace) with
    a link to each of them."""
    parent = trace.set_span_in_context(NonRecordingSpan(requests[0])) if requests else None
    links = [Link(c) for c in requests if c.is_valid]
    with tracer.start_as_current_span(
        "attrition.batch",
        context=parent,
        links=links,
        attributes={"attrition.batch.requests": len(requests), "attrition.batch.items": items},
    ) as span:
        yield span
