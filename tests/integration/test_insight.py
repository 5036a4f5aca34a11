"""Risk drivers, what-if, outcomes, the monitoring report and the model card on a real server."""

import json
import math
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.helpers import PROJECT_DIR, employee_rows
from tests.integration.test_inference_log import rows_for, wait_for
from training.schema import FEATURES

pytestmark = pytest.mark.integration
ROWS = employee_rows()
TOLERANCE = 1e-9


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def post(stack: Stack, path: str, body: Any, user: str = "hr", **params: Any) -> httpx.Response:
    return httpx.post(f"{stack.server.url}{path}", json=body, params=params,
                      headers=stack.headers(user), timeout=60)  # fmt: skip


def assert_exact(answer: dict[str, Any], k: int) -> None:
    e = answer["explanation"]
    assert e["method"] == "linear-exact" and len(e["drivers"]) == k
    assert {d["feature"] for d in e["drivers"]} <= set(FEATURES)
    sizes = [abs(d["contribution"]) for d in e["drivers"]]
    assert sizes == sorted(sizes, reverse=True)
    total = e["base_value"] + sum(d["contribution"] for d in e["drivers"]) + e["other"]
    assert abs(total - logit(answer["probability"])) <= TOLERANCE


@pytest.mark.parametrize("k", [5, 30])
def test_explained_single_prediction_is_exact_and_scores_like_a_plain_one(
    stack: Stack, pipeline: Any, k: int
) -> None:
    import pandas as pd

    for row in ROWS[:15]:
        plain = post(stack, "/predict/attrition", row).json()
        params = {"explain": "true"} if k == 5 else {"explain": "true", "top_k": k}
        explained = post(stack, "/predict/attrition", row, **params).json()
        assert plain["explanation"] is None
        assert abs(explained["probability"] - plain["probability"]) <= 1e-12
        want = pipeline.predict_proba(pd.DataFrame([row]))[0, 1]
        assert abs(explained["probability"] - want) <= TOLERANCE
        assert_exact(explained, k)
        if k == 30:
            assert explained["explanation"]["other"] == 0.0
            drivers = {d["feature"]: d["value"] for d in explained["explanation"]["drivers"]}
            assert drivers == row


def test_explained_batch_is_exact_per_row_and_stored_for_the_history(stack: Stack) -> None:
    batch = ROWS[300:340]
    r = post(stack, "/predict/attrition/batch", {"employees": batch}, explain="true", top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    for item in body["predictions"]:
        assert_exact(item, 3)
    ids = [str(uuid.uuid5(uuid.UUID(body["request_id"]), str(i))) for i in range(len(batch))]
    wait_for(lambda: len(rows_for(stack.url, ids)) == len(batch), what="rows")
    item = httpx.get(f"{stack.server.url}/predict/history/{ids[7]}", headers=stack.headers("hr"),
                     timeout=30).json()  # fmt: skip
    assert item["drivers"] == body["predictions"][7]["explanation"]
    page = httpx.get(f"{stack.server.url}/predict/history", params={"limit": 500},
                     headers=stack.headers("hr"), timeout=30).json()  # fmt: skip
    listed = {i["id"]: i for i in page["items"]}
    assert listed[ids[0]]["drivers"] == body["predictions"][0]["explanation"]


def test_plain_prediction_stores_no_drivers(stack: Stack) -> None:
    body = post(stack, "/predict/attrition", ROWS[5]).json()
    wait_for(lambda: len(rows_for(stack.url, [body["request_id"]])) == 1, what="row")
    item = httpx.get(f"{stack.server.url}/predict/history/{body['request_id']}",
                     headers=stack.headers("hr"), timeout=30).json()  # fmt: skip
    assert item["drivers"] is None


@pytest.mark.parametrize(
    "params,loc",
    [
        ({"explain": "maybe"}, ["query", "explain"]),
        ({"explain": "true", "top_k": 0}, ["query", "top_k"]),
        ({"explain": "true", "top_k": 31}, ["query", "top_k"]),
        ({"explain": "true", "top_k": "five"}, ["query", "top_k"]),
        ({"explian": "true"}, ["query", "explian"]),
    ],
)
def test_bad_explain_query_is_a_400_naming_the_parameter(
    stack: Stack, params: dict[str, Any], loc: list[str]
) -> None:
    for path, body in (
        ("/predict/attrition", ROWS[0]),
        ("/predict/attrition/batch", {"employees": ROWS[:2]}),
    ):
        r = post(stack, path, body, **params)
        assert r.status_code == 400, r.text
        assert r.json()["detail"][0]["loc"] == loc


def test_explain_is_documented_in_openapi(stack: Stack) -> None:
    spec = httpx.get(f"{stack.server.url}/docs.json", timeout=30).json()
    for path in ("/predict/attrition", "/predict/attrition/batch"):
        assert "explain=true" in spec["paths"][path]["post"]["description"]
    assert "/predict/attrition/what-if" in spec["paths"]


def what_if(stack: Stack, scenarios: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return post(stack, "/predict/attrition/what-if",
                {"employee": ROWS[0], "scenarios": scenarios, **extra})  # fmt: skip


def test_what_if_answers_each_scenario_and_an_empty_one_equals_the_baseline(stack: Stack) -> None:
    scenarios = [
        {"name": "as is", "changes": {}},
        {"name": "no overtime", "changes": {"OverTime": "No"}},
        {"changes": {"MonthlyIncome": 12000, "JobLevel": 3}},
        {"name": "same value", "changes": {"Age": ROWS[0]["Age"]}},
    ]
    r = what_if(stack, scenarios, top_k=4)
    assert r.status_code == 200, r.text
    body = r.json()
    base = body["baseline"]
    single = post(stack, "/predict/attrition", ROWS[0]).json()
    assert abs(base["probability"] - single["probability"]) <= 1e-12
    empty, overtime, pay, same = body["scenarios"]
    assert empty["probability"] == base["probability"] and empty["change"] == 0.0
    assert empty["explanation"] == base["explanation"]
    assert same["probability"] == base["probability"] and same["explanation"] == base["explanation"]
    assert overtime["name"] == "no overtime" and overtime["changes"] == {"OverTime": "No"}
    assert overtime["change"] == overtime["probability"] - base["probability"] < 0
    for answer in (base, *body["scenarios"]):
        assert_exact(answer, 4)
        assert answer["label"] == ("Yes" if answer["probability"] >= body["threshold"] else "No")
    ids = [str(uuid.uuid5(uuid.UUID(body["request_id"]), str(i))) for i in range(5)]
    wait_for(lambda: len(rows_for(stack.url, ids)) == 5, what="what-if rows")
    rows = rows_for(stack.url, ids)
    assert {r["route"] for r in rows.values()} == {"/predict/attrition/what-if"}
    assert rows[ids[2]]["inputs"]["OverTime"] == "No" and rows[ids[2]]["position"] == 2


@pytest.mark.parametrize(
    "scenarios,loc",
    [
        (
            [{"changes": {}}, {"changes": {"OverTime": "Sometimes"}}],
            ["scenarios", 1, "changes", "OverTime"],
        ),
        ([{"changes": {"TotalWorkingYears": 1}}], ["scenarios", 0, "YearsAtCompany"]),
        ([{"changes": {"Salary": 1}}], ["scenarios", 0, "changes", "Salary"]),
        ([{"changes": {"Age": 41.5}}], ["scenarios", 0, "changes", "Age"]),
        ([{"changes": {}}] * 51, ["scenarios"]),
        ([], ["scenarios"]),
    ],
)
def test_bad_scenario_is_a_400_naming_scenario_and_field(
    stack: Stack, scenarios: list[dict[str, Any]], loc: list[Any]
) -> None:
    r = what_if(stack, scenarios)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == loc


def test_what_if_rows_carry_the_employee_ref_and_its_erasure_removes_them_all(
    backend_stack: Stack,
) -> None:
    stack = backend_stack
    ref = f"E-WI-{uuid.uuid4().hex[:8]}"
    scenarios = [{"changes": {}}, {"changes": {"OverTime": "No"}}, {"changes": {"Age": 50}}]
    employee = {**ROWS[0], "employee_ref": ref}
    r = post(stack, "/predict/attrition/what-if", {"employee": employee, "scenarios": scenarios})
    assert r.status_code == 200, r.text
    where = f"employee_ref = '{ref}'"
    wait_for(lambda: count_rows(stack.url, where) == 4, what="the baseline and 3 scenarios")
    assert count_rows(stack.url, f"{where} AND route = '/predict/attrition/what-if'") == 4
    # A scenario cannot change the reference: it is no feature.
    changed = [{"changes": {"employee_ref": "E-other"}}]
    r = post(stack, "/predict/attrition/what-if", {"employee": employee, "scenarios": changed})
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"] == ["scenarios", 0, "changes", "employee_ref"]
    env = {**os.environ, "ATTRITION_DATABASE_URL": stack.url,
           "ATTRITION_DATA_DIR": str(stack.settings.data_dir)}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "persistence", "erase", "--employee-ref", ref],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and "deleted 4 predictions" in out.stdout, out.stdout + out.stderr
    assert count_rows(stack.url, where) == 0


def count_rows(url: str, where: str) -> int:
    from tests.persistence.test_inference_log import query

    return int(query(url, f"SELECT count(*) FROM inferences WHERE {where}")[0][0])


def predicted_ids(stack: Stack, user: str, n: int) -> list[str]:
    ids = [
        post(stack, "/predict/attrition", row, user=user).json()["request_id"] for row in ROWS[:n]
    ]
    wait_for(lambda: len(rows_for(stack.url, ids)) == n, what="rows")
    return ids


def outcomes(stack: Stack, items: list[dict[str, Any]], user: str = "hr") -> httpx.Response:
    return post(stack, "/outcomes", {"outcomes": items}, user=user)


def soon(days: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def test_outcomes_only_for_own_predictions_unless_admin(stack: Stack) -> None:
    mine, theirs = predicted_ids(stack, "hr", 2), predicted_ids(stack, "hr2", 1)
    r = outcomes(stack, [{"inference_id": mine[0], "outcome": "left", "observed_at": soon()}])
    assert r.status_code == 201, r.text
    assert r.json()["recorded"][0]["revision"] == 0
    r = outcomes(stack, [{"inference_id": theirs[0], "outcome": "left", "observed_at": soon()}])
    assert r.status_code == 404 and r.json()["detail"][0]["loc"] == ["outcomes", 0, "inference_id"]
    r = outcomes(
        stack, [{"inference_id": str(uuid.uuid4()), "outcome": "left", "observed_at": soon()}]
    )
    assert r.status_code == 404
    r = outcomes(
        stack,
        [{"inference_id": theirs[0], "outcome": "stayed", "observed_at": soon()}],
        user="admin",
    )
    assert r.status_code == 201
    # Role: predict alone may not post outcomes; outcomes do not grant predictions to others.
    assert outcomes(stack, [{"inference_id": mine[1], "outcome": "left", "observed_at": soon()}],
                    user="predictor").status_code == 403  # fmt: skip


def test_outcome_validation_duplicates_and_corrections(stack: Stack) -> None:
    [a, b] = predicted_ids(stack, "hr", 2)
    r = outcomes(stack, [{"inference_id": a, "outcome": "left", "observed_at": soon(2)}])
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["outcomes", 0, "observed_at"]
    r = outcomes(stack, [{"inference_id": a, "outcome": "left", "observed_at": soon(-2)}])
    assert r.status_code == 400 and r.json()["detail"][0]["type"] == "before_prediction"
    r = outcomes(stack, [{"inference_id": a, "outcome": "quit", "observed_at": soon()}])
    assert r.status_code == 400
    r = outcomes(
        stack, [{"inference_id": a, "outcome": "left", "observed_at": "2027-01-01T00:00:00"}]
    )
    assert r.status_code == 400  # no timezone
    assert (
        outcomes(
            stack, [{"inference_id": a, "outcome": "stayed", "observed_at": soon()}]
        ).status_code
        == 201
    )
    r = outcomes(stack, [{"inference_id": a, "outcome": "left", "observed_at": soon()}])
    assert r.status_code == 409
    r = outcomes(
        stack, [{"inference_id": a, "outcome": "left", "observed_at": soon(), "correction": True}]
    )
    assert r.status_code == 201 and r.json()["recorded"][0]["revision"] == 1

    # The same first outcome posted 8 times at once: exactly one is recorded.
    def once(_: int) -> int:
        return outcomes(
            stack, [{"inference_id": b, "outcome": "left", "observed_at": soon()}]
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(once, range(8)))
    assert statuses == [201] + [409] * 7, statuses


def test_monitoring_report_is_stored_served_to_admins_and_exported(
    stack: Stack, model_tag: str, tmp_path: Path
) -> None:
    ids = [post(stack, "/predict/attrition/batch", {"employees": ROWS[i : i + 200]}).json()["request_id"]
           for i in range(0, 1000, 200)]  # fmt: skip
    assert len(ids) == 5
    mine = predicted_ids(stack, "hr", 30)
    r = outcomes(stack, [{"inference_id": i, "outcome": "left" if n % 3 == 0 else "stayed",
                          "observed_at": soon()} for n, i in enumerate(mine)])  # fmt: skip
    assert r.status_code == 201, r.text
    wait_for(lambda: len(rows_for(stack.url, mine)) == 30, what="rows")
    env = {**os.environ, "ATTRITION_DATABASE_URL": stack.url}
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    out = subprocess.run(
        [sys.executable, "-m", "monitoring", "report", "--since", since, "--model-tag", model_tag,
         "--out", str(tmp_path)],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    [html_file] = tmp_path.glob("*.html")
    [json_file] = tmp_path.glob("*.json")
    summary = json.loads(json_file.read_text())
    assert summary["rows"] >= 1030 and summary["model_tag"] == model_tag
    assert {"drift", "quality", "fairness", "performance"} <= set(summary)
    assert summary["performance"]["n_outcomes"] >= 30
    assert summary["performance"]["roc_auc"] is not None
    assert "Monitoring report" in html_file.read_text() and "<img" in html_file.read_text()

    r = httpx.get(
        f"{stack.server.url}/monitoring/latest", headers=stack.headers("admin"), timeout=30
    )
    assert r.status_code == 200 and r.json()["summary"]["window"] == summary["window"]
    for user in ("predictor", "historian", "hr"):
        assert httpx.get(f"{stack.server.url}/monitoring/latest", headers=stack.headers(user),
                         timeout=30).status_code == 403  # fmt: skip
    # Each worker reads the last report at most every MONITORING_CACHE_SECONDS (30 s); an
    # earlier scrape in this stack may have cached "no report" just before this one was saved.
    scraped: list[str] = []

    def gauge_shown() -> bool:
        scraped[:] = [httpx.get(f"{stack.server.url}/metrics", timeout=30).text]
        return "attrition_monitoring_drift_share " in scraped[0]

    wait_for(gauge_shown, timeout=45, what="the report's gauges in /metrics")
    metrics = scraped[0]
    share = [
        ln for ln in metrics.splitlines() if ln.startswith("attrition_monitoring_drift_share ")
    ]
    assert float(share[0].split()[1]) == summary["drift"]["share_drifted"]
    assert "attrition_monitoring_report_age_seconds " in metrics
    assert "attrition_monitoring_min_selection_ratio " in metrics


def test_model_card_for_any_valid_token(stack: Stack, model_tag: str) -> None:
    url = f"{stack.server.url}/model/card"
    assert httpx.get(url, timeout=30).status_code == 401
    for user in ("predictor", "historian", "hr"):
        r = httpx.get(url, headers=stack.headers(user), timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.headers["x-model-tag"] == model_tag
    # ROC + PR, calibration + threshold curves, coefficients + importances.
    assert r.text.count("<img") == 3 and "Threshold rule" in r.text
    meta = httpx.get(f"{stack.server.url}/model", headers=stack.headers("hr"), timeout=30).json()
    assert meta["tag"] == model_tag
    assert meta["explanation"]["method"] == "linear-exact"
    assert meta["explanation"]["max_additivity_error"] <= TOLERANCE
