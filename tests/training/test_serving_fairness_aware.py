"""A fairness-aware challenger served by the unchanged service: single, batch and what-if
routes take all 30 features, the left-out ones change nothing and explain as exactly 0."""

from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.conftest import PostgresDatabases, Stack, start_stack
from tests.helpers import employee_rows
from training.fairness import PROTECTED
from training.train import TrainingResult, save

pytestmark = pytest.mark.integration
ROWS = employee_rows(12)
CHANGES = {"Gender": "Female", "MaritalStatus": "Divorced", "Age": 58}


@pytest.fixture(scope="module")
def served(
    governed: TrainingResult, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    import bentoml

    tag = save(governed, challenger=True)
    with pytest.MonkeyPatch.context() as env:
        # ONNX or nothing: the runner refuses to start on a model without a verified export.
        env.setenv("ATTRITION_RUNNER_BACKEND", "onnx")
        stack = start_stack("sqlite", tag, postgres, tmp_path_factory.mktemp("challenger"))
    yield stack
    stack.server.stop()
    bentoml.models.delete(tag)


def post(stack: Stack, path: str, body: Any, **params: Any) -> dict[str, Any]:
    r = httpx.post(f"{stack.server.url}{path}", json=body, params=params,
                   headers=stack.headers("hr"), timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def contributions(answer: dict[str, Any]) -> dict[str, float]:
    return {d["feature"]: d["contribution"] for d in answer["explanation"]["drivers"]}


def test_the_challenger_is_served_with_its_verified_onnx_export(
    served: Stack, governed: TrainingResult
) -> None:
    assert governed.metadata["onnx"]["included"]
    assert governed.metadata["explanation"]["onnx_verified"]
    model = httpx.get(f"{served.server.url}/model", headers=served.headers("hr"), timeout=10)
    assert model.json()["tag"].startswith("attrition-challenger:")


def test_single_and_batch_ignore_protected_values_and_explain_them_as_zero(
    served: Stack, governed: TrainingResult
) -> None:
    changed = [{**row, **CHANGES} for row in ROWS]
    want = governed.pipeline.predict_proba(pd.DataFrame(ROWS))[:, 1]
    for i, (row, other) in enumerate(zip(ROWS, changed, strict=True)):
        a = post(served, "/predict/attrition", row, explain="true", top_k=30)
        b = post(served, "/predict/attrition", other, explain="true", top_k=30)
        assert a["probability"] == b["probability"]
        assert abs(a["probability"] - want[i]) <= 1e-9
        for answer in (a, b):
            assert all(contributions(answer)[f] == 0.0 for f in PROTECTED)
            assert sum(v != 0.0 for v in contributions(answer).values()) == 27
    batch = post(served, "/predict/attrition/batch", {"employees": [*ROWS, *changed]})
    probs = [p["probability"] for p in batch["predictions"]]
    assert probs[: len(ROWS)] == probs[len(ROWS) :]


def test_what_if_on_a_protected_attribute_changes_nothing(served: Stack) -> None:
    scenarios = [{"name": f, "changes": {f: v}} for f, v in CHANGES.items()]
    scenarios.append({"name": "overtime", "changes": {"OverTime": "No"}})
    body = post(served, "/predict/attrition/what-if", {"employee": ROWS[0], "scenarios": scenarios})
    changes = {s["name"]: s["change"] for s in body["scenarios"]}
    assert [changes[f] for f in CHANGES] == [0.0, 0.0, 0.0]
    assert changes["overtime"] != 0.0  # a feature the model uses still moves it
    for s in body["scenarios"]:
        assert all(d["contribution"] == 0.0 for d in s["explanation"]["drivers"]
                   if d["feature"] in PROTECTED)  # fmt: skip
