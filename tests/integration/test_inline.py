"""The `inline` placement on a real `bentoml serve`: no model service; every answer, record,
explanation and refusal equals the `service` placement's for the same request, one at a time and
under concurrency (the coalesced batches scored on the entry worker's threads)."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import PostgresDatabases, Stack, start_stack
from tests.helpers import employee_rows

pytestmark = pytest.mark.integration
ROWS = employee_rows(40)
TOLERANCE = 1e-9
# The record's columns that say what was answered and from what (ids, times and latency differ).
RECORDED = ("subject", "route", "model_tag", "position", "inputs", "probability", "label",
            "threshold", "employee_ref", "drivers")  # fmt: skip


@pytest.fixture(scope="module")
def inline(
    model_tag: str, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    stack = start_stack(
        "postgresql", model_tag, postgres, tmp_path_factory.mktemp("inline"),
        extra_env={"ATTRITION_MODEL_PLACEMENT": "inline"},
    )  # fmt: skip
    yield stack
    stack.server.stop()


def requests() -> dict[str, tuple[str, str, dict[str, Any], str]]:
    """name: (method, path with query, JSON body, user), each answered by both placements."""
    row = {**ROWS[0], "employee_ref": "E-1"}
    what_if = {"employee": ROWS[1], "top_k": 4, "scenarios": [
        {"name": "no overtime", "changes": {"OverTime": "No"}}, {"changes": {}},
        {"changes": {"MonthlyIncome": 9000, "JobLevel": 3}}]}  # fmt: skip
    return {
        "single": ("POST", "/predict/attrition", row, "predictor"),
        "explained": ("POST", "/predict/attrition?explain=true&top_k=6", ROWS[2], "predictor"),
        "batch": ("POST", "/predict/attrition/batch", {"employees": ROWS[3:23]}, "predictor"),
        "batch_explained": (
            "POST",
            "/predict/attrition/batch?explain=true",
            {"employees": ROWS[23:30]},
            "predictor",
        ),  # fmt: skip
        "what_if": ("POST", "/predict/attrition/what-if", what_if, "predictor"),
        # Refusals: the field and the reason, the status, the same on both.
        "bad_field": ("POST", "/predict/attrition", {**ROWS[0], "Age": -3}, "predictor"),
        "missing_field": (
            "POST",
            "/predict/attrition",
            {k: v for k, v in ROWS[0].items() if k != "OverTime"},
            "predictor",
        ),  # fmt: skip
        "bad_query": ("POST", "/predict/attrition?explain=true&top_k=0", ROWS[0], "predictor"),
        "bad_scenario": (
            "POST",
            "/predict/attrition/what-if",
            {"employee": ROWS[0], "scenarios": [{"changes": {"Age": "old"}}]},
            "predictor",
        ),  # fmt: skip
        "empty_batch": ("POST", "/predict/attrition/batch", {"employees": []}, "predictor"),
        "no_token": ("POST", "/predict/attrition", ROWS[0], ""),
        "wrong_role": ("POST", "/predict/attrition", ROWS[0], "auditor"),
    }


def answer(stack: Stack, method: str, path: str, body: dict[str, Any], user: str) -> httpx.Response:
    headers = stack.headers(user) if user else {}
    return httpx.request(method, stack.server.url + path, json=body, headers=headers, timeout=60)


def comparable(value: Any) -> Any:
    """The answer without its request id (and with floats kept for a tolerance check)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k != "request_id"}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def assert_close(got: Any, want: Any, where: str = "") -> None:
    """Equal, floats within TOLERANCE."""
    if isinstance(want, float) and isinstance(got, float | int):
        assert abs(got - want) <= TOLERANCE, f"{where}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), f"{where}: {got} != {want}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def record_ids(response: httpx.Response) -> list[str]:
    """The ids of an answer's records: the request id, or one per row of a batch."""
    body = response.json()
    request_id = uuid.UUID(response.headers["x-request-id"])
    rows = body.get("predictions") or ([None] * (1 + len(body.get("scenarios", [])))
                                       if "scenarios" in body else None)  # fmt: skip
    if rows is None:
        return [str(request_id)]
    return [str(uuid.uuid5(request_id, str(i))) for i in range(len(rows))]


def records(url: str, ids: list[str]) -> list[dict[str, Any]]:
    """The records of `ids`, in the order of `ids` (waited for: the log writes behind)."""
    query = f"SELECT id::text, {', '.join(RECORDED)} FROM inferences WHERE id = ANY(%s::uuid[])"
    for _ in range(100):
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            found = {r[0]: r[1:] for r in conn.execute(query, (ids,)).fetchall()}
        if len(found) == len(ids):
            return [dict(zip(RECORDED, found[i], strict=True)) for i in ids]
        asyncio.run(asyncio.sleep(0.3))
    raise AssertionError(f"{len(ids) - len(found)} of {len(ids)} records missing")


def test_inline_runs_no_model_service(inline: Stack, stack: Stack) -> None:
    assert stack.server.worker("AttritionModel")  # the service placement has one
    with pytest.raises(LookupError):
        inline.server.worker("AttritionModel")
    assert inline.server.worker("AttritionService")


@pytest.mark.parametrize("name", list(requests()))
def test_inline_answers_and_records_equal_the_service_placements(
    name: str, inline: Stack, stack: Stack
) -> None:
    method, path, body, user = requests()[name]
    got, want = answer(inline, method, path, body, user), answer(stack, method, path, body, user)
    assert got.status_code == want.status_code, (got.text, want.text)
    assert_close(comparable(got.json()), comparable(want.json()), name)
    if want.status_code != 200:
        assert want.status_code in (400, 401, 403, 422), want.text  # never a 5xx
        return
    if "explain" in path or name == "what_if":
        assert '"contribution"' in got.text  # explained, not a null explanation
    for g, w in zip(records(inline.url, record_ids(got)), records(stack.url, record_ids(want)),
                    strict=True):  # fmt: skip
        assert_close(g, w, f"{name} record")


def batches(stack: Stack) -> float:
    """Batches scored so far (the runner's histogram, kept by the entry workers inline)."""
    metrics = httpx.get(f"{stack.server.url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("attrition_runner_batch_employees_count"))  # fmt: skip


def test_concurrent_inline_answers_are_the_one_at_a_time_answers(inline: Stack) -> None:
    """256 requests at once: batched together on the entry workers' threads, answered as alone."""
    alone = [answer(inline, "POST", "/predict/attrition", row, "predictor").json() for row in ROWS]
    before = batches(inline)
    headers = inline.headers("predictor")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=inline.server.url, timeout=60) as client:
            calls = [client.post("/predict/attrition", json=ROWS[i % len(ROWS)], headers=headers)
                     for i in range(256)]  # fmt: skip
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * len(responses)
    for i, r in enumerate(responses):
        assert_close(comparable(r.json()), comparable(alone[i % len(ROWS)]), f"request {i}")
    recorded = records(inline.url, [r.headers["x-request-id"] for r in responses])
    assert [r["probability"] for r in recorded] == [r.json()["probability"] for r in responses]
    scored = batches(inline) - before
    print(f"256 concurrent requests scored in {scored:.0f} batches")
    assert 0 < scored < len(responses)  # some requests were scored together
