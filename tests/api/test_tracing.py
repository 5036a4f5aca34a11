"""The trace id a record gets, and BentoML's tracing option from the OTEL_* variables."""

import pytest
from opentelemetry.sdk.trace import TracerProvider

from api.tracing import UNTRACED_PATHS, bentoml_tracing, trace_id
from settings import Settings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f" 00-{TRACE}-00f067aa0ba902b7-00 ", TRACE),  # not sampled: still its trace
        (None, None),
        ("", None),
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),  # version ff is invalid
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-" + "0" * 16 + "-01", None),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),  # W3C: lowercase hex only
        (f"00-{TRACE}-00f067aa0ba902b7", None),
    ],
)
def test_trace_id_without_a_span_is_the_incoming_traceparents(
    header: str | None, expected: str | None
) -> None:
    assert trace_id(header) == expected


def test_trace_id_is_the_current_spans_when_there_is_one() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("request") as span:
        expected = format(span.get_span_context().trace_id, "032x")
        assert trace_id(f"00-{TRACE}-00f067aa0ba902b7-01") == expected
    assert len(expected) == 32 and expected != TRACE


def test_tracing_is_off_by_default_and_builds_no_span(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert bentoml_tracing(Settings(_env_file=None)) == {"excluded_urls": [".*"]}  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("sampler", "arg", "rate"),
    [
        (None, None, 1.0),
        ("always_off", None, 0.0),
        ("parentbased_traceidratio", "0.25", 0.25),
        ("traceidratio", None, 1.0),
    ],
)
def test_otel_variables_turn_bentoml_tracing_on(
    monkeypatch: pytest.MonkeyPatch, sampler: str | None, arg: str | None, rate: float
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    for name, value in (("OTEL_TRACES_SAMPLER", sampler), ("OTEL_TRACES_SAMPLER_ARG", arg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert bentoml_tracing(Settings(_env_file=None)) == {  # type: ignore[call-arg]
        "exporter_type": "otlp",
        "sample_rate": rate,
        "excluded_urls": UNTRACED_PATHS,
        "otlp": {"protocol": "http"},
    }


def test_grpc_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValueError, match="http/protobuf"):
        Settings(_env_file=None)  # type: ignore[call-arg]
