"""The served service end to end: answers equal the pipeline's, concurrency, batching, bad input."""

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import Stack
from tests.helpers import employee_rows
from training.schema import FEATURES

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return employee_rows()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=stack.server.url, timeout=60, headers=stack.headers("predictor")
    ) as c:
        yield c


def expected(pipeline: Any, rows: list[dict[str, Any]]) -> np.ndarray:
    return pipeline.predict_proba(pd.DataFrame(rows, columns=list(FEATURES)))[:, 1]


def test_single_prediction_equals_the_pipeline(
    client: httpx.Client, pipeline: Any, rows: list[dict[str, Any]], model_tag: str
) -> None:
    want = expected(pipeline, rows[:20])
    for row, p in zip(rows[:20], want, strict=True):
        r = client.post("/predict/attrition", json=row)
        assert r.status_code == 200, r.text
        body = r.json()
        assert abs(body["probability"] - p) <= 1e-9
        assert body["model_tag"] == model_tag
        assert body["label"] == ("Yes" if p >= body["threshold"] else "No")
        assert r.headers["x-request-id"] == body["request_id"]


def test_batch_of_the_maximum_size_keeps_order(
    client: httpx.Client, pipeline: Any, rows: list[dict[str, Any]]
) -> None:
    batch = rows[:1000]
    r = client.post("/predict/attrition/batch", json={"employees": batch})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["index"] for p in preds] == list(range(1000))
    np.testing.assert_allclose(
        [p["probability"] for p in preds], expected(pipeline, batch), rtol=0, atol=1e-9
    )


def batch_histogram(metrics: str) -> tuple[float, float]:
    """(batches of one employee, all batches) from the runner's batch size histogram."""
    ones = total = 0.0
    for line in metrics.splitlines():
        value = line.rsplit(" ", 1)[-1]
        if line.startswith('attrition_runner_batch_employees_bucket{le="1.0"}'):
            ones += float(value)
        elif line.startswith("attrition_runner_batch_employees_count"):
            total += float(value)
    return ones, total


def test_64_concurrent_requests_get_their_own_answers_in_batches(
    stack: Stack, pipeline: Any, rows: list[dict[str, Any]]
) -> None:
    server = stack.server
    sample = rows[100:164]
    want = expected(pipeline, sample)
    before = batch_histogram(httpx.get(f"{server.url}/metrics").text)

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        headers = stack.headers("predictor")
        async with httpx.AsyncClient(
            base_url=server.url, timeout=60, limits=limits, headers=headers
        ) as c:
            return await asyncio.gather(*(c.post("/predict/attrition", json=r) for r in sample))

    for _ in range(3):  # three waves, so batching has a chance even on a busy machine
        responses = asyncio.run(run())
        assert [r.status_code for r in responses] == [200] * 64
        got = [r.json()["probability"] for r in responses]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        assert len({r.json()["request_id"] for r in responses}) == 64

    ones, total = batch_histogram(httpx.get(f"{server.url}/metrics").text)
    batches, singles = total - before[1], ones - before[0]
    assert batches > 0
    assert batches - singles > 0, f"no batch larger than 1 in {batches} batches"
    assert batches < 3 * 64, "every request was its own batch"


def valid(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(rows[0])


BAD_SINGLE = {
    "missing field": (lambda e: {k: v for k, v in e.items() if k != "Age"}, "Age", "missing"),
    "extra field": (lambda e: {**e, "EmployeeNumber": 1}, "EmployeeNumber", "extra_forbidden"),
    "wrong type": (lambda e: {**e, "Age": "forty"}, "Age", "int_type"),
    "float for int": (lambda e: {**e, "JobLevel": 2.5}, "JobLevel", "int_type"),
    "unknown category": (lambda e: {**e, "Gender": "F"}, "Gender", "literal_error"),
    "below range": (lambda e: {**e, "Age": 3}, "Age", "greater_than_equal"),
    "above range": (lambda e: {**e, "StockOptionLevel": 9}, "StockOptionLevel", "less_than_equal"),
    "impossible years": (lambda e: {**e, "YearsAtCompany": 99}, "YearsAtCompany", None),
    "null": (lambda e: {**e, "MonthlyIncome": None}, "MonthlyIncome", "int_type"),
}


@pytest.mark.parametrize("case", BAD_SINGLE, ids=list(BAD_SINGLE))
def test_bad_employee_is_a_400_naming_the_field(
    client: httpx.Client, rows: list[dict[str, Any]], case: str
) -> None:
    make, field, kind = BAD_SINGLE[case]
    r = client.post("/predict/attrition", json=make(valid(rows)))
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert any(field in d["loc"] and (kind is None or d["type"] == kind) for d in detail), detail


def test_unknown_category_lists_the_allowed_values(
    client: httpx.Client, rows: list[dict[str, Any]]
) -> None:
    r = client.post("/predict/attrition", json={**valid(rows), "MaritalStatus": "Widowed"})
    assert r.status_code == 400
    assert "'Single', 'Married' or 'Divorced'" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(
    client: httpx.Client, rows: list[dict[str, Any]], token: str
) -> None:
    body = json.dumps(valid(rows)).replace('"Age": 41', f'"Age": {token}')
    assert token in body
    r = client.post(
        "/predict/attrition", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["Age"]


@pytest.mark.parametrize("body", ["{bad json", "", "[]", "42"])
def test_malformed_json_is_a_400(client: httpx.Client, body: str) -> None:
    r = client.post(
        "/predict/attrition", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"]


def test_non_json_content_type_is_a_415(client: httpx.Client, rows: list[dict[str, Any]]) -> None:
    r = client.post("/predict/attrition", data={"Age": "41"})
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"][0]["msg"]


def test_empty_batch_is_a_400(client: httpx.Client) -> None:
    r = client.post("/predict/attrition/batch", json={"employees": []})
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"] == ["employees"]


def test_batch_over_the_limit_is_a_400(client: httpx.Client, rows: list[dict[str, Any]]) -> None:
    r = client.post("/predict/attrition/batch", json={"employees": [valid(rows)] * 1001})
    assert r.status_code == 400
    [err] = r.json()["detail"]
    assert err["loc"] == ["employees"] and err["type"] == "too_long"


def test_bad_row_in_a_batch_is_named_by_position(
    client: httpx.Client, rows: list[dict[str, Any]]
) -> None:
    batch = [valid(rows), {**valid(rows), "OverTime": "Sometimes"}]
    r = client.post("/predict/attrition/batch", json={"employees": batch})
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"] == ["employees", 1, "OverTime"]


def test_batch_must_be_an_object_with_only_employees(
    client: httpx.Client, rows: list[dict[str, Any]]
) -> None:
    assert client.post("/predict/attrition/batch", json=[valid(rows)]).status_code == 400
    r = client.post("/predict/attrition/batch", json={"employees": [valid(rows)], "x": 1})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["x"]


def test_oversized_body_is_a_413(client: httpx.Client) -> None:
    big = b'{"employees": [' + b" " * (5 * 1024 * 1024) + b"]}"
    r = client.post(
        "/predict/attrition/batch", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert "exceeds the limit" in r.json()["detail"][0]["msg"]


def test_oversized_chunked_body_is_a_413(client: httpx.Client) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"employees": ['
        for _ in range(80):
            yield b" " * 65536
        yield b"]}"

    r = client.post(
        "/predict/attrition/batch", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_health_and_model_card(client: httpx.Client, model_tag: str) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_tag"] == model_tag
    assert health["uptime_seconds"] >= 0
    card = client.get("/model").json()
    assert card["tag"] == model_tag and 0 < card["threshold"] < 1
    assert card["metrics"]["cv"][card["model_family"]]["roc_auc"]["mean"] >= 0.82
    assert set(card["feature_schema"]["properties"]) == set(FEATURES)
    assert card["model_changes"] == []  # no promotion on this stack


def test_bentoml_endpoints_stay_available(client: httpx.Client) -> None:
    for path in ("/livez", "/readyz", "/healthz"):
        assert client.get(path).status_code == 200, path
    assert "bentoml_service_request_total" in client.get("/metrics").text
    assert client.get("/").status_code == 200
    spec = client.get("/docs.json").json()
    assert {"/predict/attrition", "/predict/attrition/batch"} <= set(spec["paths"])
    assert re.search(r"swagger", client.get("/").text, re.I)
