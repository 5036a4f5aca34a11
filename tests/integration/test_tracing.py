"""Tracing end to end: a real `bentoml serve` with OTEL_TRACES_EXPORTER=otlp exports to an OTLP
receiver the span tree of each kind of request; records and access-log lines carry the trace id;
an incoming traceparent's trace is kept."""

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import PostgresDatabases, Stack, start_stack
from tests.helpers import employee_rows
from tests.otlp_receiver import Receiver, Span, otlp_receiver

pytestmark = pytest.mark.integration

ROWS = employee_rows()
SERVER, INTERNAL = 2, 1  # OTLP span kinds
ENTRY_SERVICE, MODEL_SERVICE = "AttritionService", "AttritionModel"


@pytest.fixture(scope="module")
def traced(
    model_tag: str, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Receiver]]:
    with otlp_receiver() as receiver:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a test's patience
        }
        tmp = tmp_path_factory.mktemp("traced")
        stack = start_stack("postgresql", model_tag, postgres, tmp, env)
        try:
            yield stack, receiver
        finally:
            stack.server.stop()


def traceparent() -> tuple[str, str, str]:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def wait_for_spans(receiver: Receiver, trace_id: str, names: set[str]) -> list[Span]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        if names <= {s.name for s in spans}:
            return spans
        time.sleep(0.2)
    raise AssertionError(f"{names} not all in {sorted({s.name for s in receiver.trace(trace_id)})}")


def one(spans: list[Span], name: str, service: str = ENTRY_SERVICE) -> Span:
    found = [s for s in spans if s.name == name and s.service == service]
    assert len(found) == 1, (name, [(s.name, s.service) for s in spans])
    return found[0]


def copy_span_linking(receiver: Receiver, trace_id: str, span_id: str) -> Span:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for s in list(receiver.spans):
            if s.name == "attrition.log.copy" and (trace_id, span_id) in s.links:
                return s
        time.sleep(0.2)
    raise AssertionError("no database write span links to the request")


def recorded_trace_ids(url: str, ids: list[str]) -> dict[str, str | None]:
    deadline = time.monotonic() + 20
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    while True:
        with psycopg.connect(plain) as conn:
            rows = conn.execute(
                "SELECT id::text, trace_id FROM inferences WHERE id = ANY(%s::uuid[])", (ids,)
            ).fetchall()
        if len(rows) == len(ids) or time.monotonic() > deadline:
            return dict(rows)
        time.sleep(0.2)


def access_line(stack: Stack, path: str, status: int, trace_id: str) -> str:
    log = Path(stack.server.log_path)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if f"path={path}," in line and f"(status={status}," in line and trace_id in line:
                return line
        time.sleep(0.2)
    raise AssertionError(f"no access-log line for {path} {status} with trace {trace_id}")


def post(stack: Stack, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{stack.server.url}{path}", json=body, headers=headers, timeout=60)


def test_a_single_prediction_is_one_trace_from_the_callers_traceparent(
    traced: tuple[Stack, Receiver],
) -> None:
    stack, receiver = traced
    header, trace_id, caller_span = traceparent()
    r = post(
        stack, "/predict/attrition", ROWS[0], {**stack.headers("analyst"), "traceparent": header}
    )
    assert r.status_code == 200
    spans = wait_for_spans(
        receiver, trace_id, {"POST /predict/attrition", "attrition.batch", "attrition.log.append"}
    )
    entry = one(spans, "POST /predict/attrition")
    assert (entry.kind, entry.parent_id) == (SERVER, caller_span)
    assert entry.attributes["http.status_code"] == 200
    batch = one(spans, "attrition.batch")
    assert batch.parent_id == entry.span_id and (trace_id, entry.span_id) in batch.links
    assert batch.attributes["attrition.batch.items"] >= 1
    model = wait_for_spans(receiver, trace_id, {"POST /predict_proba"})
    runner = one(model, "POST /predict_proba", MODEL_SERVICE)
    assert (runner.kind, runner.parent_id) == (SERVER, batch.span_id)
    append = one(spans, "attrition.log.append")
    assert append.parent_id == entry.span_id and append.attributes["attrition.log.records"] == 1
    copy = copy_span_linking(receiver, trace_id, entry.span_id)
    assert copy.trace_id != trace_id and copy.attributes["attrition.log.records"] >= 1
    request_id = r.json()["request_id"]
    assert recorded_trace_ids(stack.url, [request_id]) == {request_id: trace_id}
    history = httpx.get(
        f"{stack.server.url}/predict/history/{request_id}", headers=stack.headers("analyst")
    )
    assert history.json()["trace_id"] == trace_id  # where an auditor starts
    line = access_line(stack, "/predict/attrition", 200, trace_id)
    assert f"(trace={trace_id},span={entry.span_id}," in line


def test_a_batch_prediction_records_every_row_with_the_trace(
    traced: tuple[Stack, Receiver],
) -> None:
    stack, receiver = traced
    r = post(stack, "/predict/attrition/batch", {"employees": ROWS[:5]}, stack.headers("analyst"))
    assert r.status_code == 200
    batch = uuid.UUID(r.json()["request_id"])
    ids = [str(uuid.uuid5(batch, str(i))) for i in range(5)]
    recorded = recorded_trace_ids(stack.url, ids)
    trace_id = str(recorded[ids[0]])
    assert re.fullmatch("[0-9a-f]{32}", trace_id) and recorded == dict.fromkeys(ids, trace_id)
    access_line(stack, "/predict/attrition/batch", 200, trace_id)
    spans = wait_for_spans(
        receiver,
        trace_id,
        {"POST /predict/attrition/batch", "attrition.batch", "attrition.log.append"},
    )
    entry = one(spans, "POST /predict/attrition/batch")
    assert entry.parent_id == ""  # no traceparent: a trace of its own
    assert one(spans, "attrition.log.append").attributes["attrition.log.records"] == 5
    assert one(spans, "attrition.batch").attributes["attrition.batch.items"] == 5


def test_an_explained_prediction_traces_the_explainer_call(
    traced: tuple[Stack, Receiver],
) -> None:
    stack, receiver = traced
    header, trace_id, _ = traceparent()
    r = post(
        stack,
        "/predict/attrition?explain=true",
        ROWS[1],
        {**stack.headers("analyst"), "traceparent": header},
    )
    assert r.status_code == 200 and r.json()["explanation"]
    spans = wait_for_spans(receiver, trace_id, {"attrition.batch", "POST /explain"})
    batch = one(spans, "attrition.batch")
    assert one(spans, "POST /explain", MODEL_SERVICE).parent_id == batch.span_id
    request_id = r.json()["request_id"]
    assert recorded_trace_ids(stack.url, [request_id]) == {request_id: trace_id}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [({}, ROWS[0], 401), ("analyst", {"Age": "old"}, 400)],
    ids=["unauthenticated", "invalid"],
)
def test_a_refused_request_is_a_trace_without_model_or_log(
    traced: tuple[Stack, Receiver], headers: Any, body: Any, status: int
) -> None:
    stack, receiver = traced
    header, trace_id, caller_span = traceparent()
    auth = stack.headers(headers) if headers else {}
    r = post(stack, "/predict/attrition", body, {**auth, "traceparent": header})
    assert r.status_code == status
    spans = wait_for_spans(receiver, trace_id, {"POST /predict/attrition"})
    entry = one(spans, "POST /predict/attrition")
    assert entry.parent_id == caller_span and entry.attributes["http.status_code"] == status
    time.sleep(1)  # anything else of this trace would have been exported by now
    names = {s.name for s in receiver.trace(trace_id)}
    assert not names & {"attrition.batch", "attrition.log.append", "POST /predict_proba"}
    access_line(stack, "/predict/attrition", status, trace_id)


@pytest.mark.parametrize("path", ["/predict/attrition", "/predict/attrition?explain=true"])
def test_with_tracing_off_a_record_keeps_the_incoming_traceparents_trace(
    stack: Stack, path: str
) -> None:
    """Both paths (the fast path takes the plain prediction, the full stack the explained one)."""
    header, trace_id, _ = traceparent()
    r = post(stack, path, ROWS[2], {**stack.headers("analyst"), "traceparent": header})
    assert r.status_code == 200
    request_id = r.json()["request_id"]
    assert recorded_trace_ids(stack.url, [request_id]) == {request_id: trace_id}
    r = post(stack, path, ROWS[2], stack.headers("analyst"))
    request_id = r.json()["request_id"]
    assert recorded_trace_ids(stack.url, [request_id]) == {request_id: None}
