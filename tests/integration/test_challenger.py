"""A challenger on a real `bentoml serve`, in both placements of the model: scored in the same
batch (its own answer for the recorded inputs) and recorded on every route,
never returned; promotion and rollback under load with no error, every record naming the model
that answered."""

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pandas as pd
import psycopg
import pytest

from tests.conftest import PostgresDatabases, Stack, start_stack
from tests.helpers import PROJECT_DIR, employee_rows
from training.schema import FEATURES

pytestmark = pytest.mark.integration
ROWS = employee_rows(8)


@pytest.fixture(scope="module", params=["service", "inline"])
def shadowed(
    request: pytest.FixtureRequest,
    model_tag: str,
    challenger: str,
    postgres: PostgresDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """A server with the challenger in shadow, in each placement of the model."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ATTRITION_CHALLENGER_TAG", challenger)
        env.setenv("ATTRITION_MODEL_CHOICE_SECONDS", "0.5")
        env.setenv("ATTRITION_MODEL_PLACEMENT", request.param)
        stack = start_stack("postgresql", model_tag, postgres, tmp_path_factory.mktemp("shadow"))
    yield stack
    stack.server.stop()


def records(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        cur = conn.execute(
            "SELECT id::text, model_tag, probability, label, threshold, challenger_tag,"
            " challenger_probability, challenger_label, inputs FROM inferences"
            " WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def wait_for_records(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = records(url, ids)
        if len(found) == len(set(ids)):
            return found
        time.sleep(0.3)
    raise AssertionError(f"{len(set(ids)) - len(found)} of {len(set(ids))} records missing")


def ids_of(response: httpx.Response, rows: int | None) -> list[str]:
    """The record ids of an answer: the request id, or one per row of a batch."""
    import uuid

    request_id = response.headers["x-request-id"]
    if rows is None:
        return [request_id]
    return [str(uuid.uuid5(uuid.UUID(request_id), str(i))) for i in range(rows)]


def persistence(
    stack: Stack, model_tag: str, challenger: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The CLI with the server's settings."""
    env = {**os.environ, "ATTRITION_DATABASE_URL": stack.url, "ATTRITION_MODEL_TAG": model_tag,
           "ATTRITION_CHALLENGER_TAG": challenger}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "persistence", *args], cwd=PROJECT_DIR, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_every_route_records_the_challenger_and_never_returns_it(
    shadowed: Stack, model_tag: str, challenger: str
) -> None:
    import bentoml

    shadow = bentoml.sklearn.load_model(challenger)
    url, headers = shadowed.server.url, shadowed.headers("hr")
    answers: list[tuple[httpx.Response, int | None]] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        answers.append((client.post("/predict/attrition", json=ROWS[0]), None))  # fast path
        answers.append((client.post("/predict/attrition?explain=true", json=ROWS[1]), None))
        answers.append((client.post("/predict/attrition/batch", json={"employees": ROWS}),
                        len(ROWS)))  # fmt: skip
        what_if = {"employee": ROWS[2], "scenarios": [{"name": "raise",
                   "changes": {"MonthlyIncome": 9000}}]}  # fmt: skip
        answers.append((client.post("/predict/attrition/what-if", json=what_if), 2))
        card = client.get("/model").json()
    assert (card["tag"], card["challenger_tag"], card["answering"]) == (
        model_tag,
        challenger,
        model_tag,
    )
    for response, rows in answers:
        assert response.status_code == 200, response.text
        found = wait_for_records(shadowed.url, ids_of(response, rows))
        for record in found.values():
            assert record["model_tag"] == model_tag and record["challenger_tag"] == challenger
            p = record["challenger_probability"]
            assert p is not None and 0 <= p <= 1 and p != record["probability"]
            # The challenger's own answer for the recorded inputs, computed apart.
            frame = pd.DataFrame([record["inputs"]], columns=list(FEATURES))
            assert abs(p - shadow.predict_proba(frame)[0, 1]) <= 1e-9
            assert record["challenger_label"] in ("Yes", "No")
            for text in (repr(p), f"{p:.6f}", f"{p:.4f}"):
                assert text not in response.text, (text, response.text)
            assert challenger not in response.text
    first = answers[0][0].headers["x-request-id"]  # recorded by now: nor does the history show it
    recorded = httpx.get(f"{url}/predict/history/{first}", headers=headers, timeout=10)
    assert recorded.status_code == 200 and "challenger" not in recorded.text


def test_promotion_and_rollback_under_load(
    shadowed: Stack, model_tag: str, challenger: str
) -> None:
    url, headers = shadowed.server.url, shadowed.headers("hr")
    stop = threading.Event()
    answers: list[tuple[float, int, str | None, list[str]]] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            i = 0
            while not stop.is_set():
                batch = i % 3 == 0
                r = (http.post("/predict/attrition/batch", json={"employees": ROWS[:3]})
                     if batch else http.post("/predict/attrition", json=ROWS[(n + i) % 8]))  # fmt: skip
                body = r.json() if r.status_code == 200 else {}
                ids = ids_of(r, 3 if batch else None) if r.status_code == 200 else []
                with lock:
                    answers.append((time.time(), r.status_code, body.get("model_tag"), ids))
                i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        promote = persistence(
            shadowed, model_tag, challenger, "promote", "--by", "test", "--reason", "under load"
        )
        assert promote.returncode == 0, promote.stdout + promote.stderr
        time.sleep(3)
        rollback = persistence(
            shadowed, model_tag, challenger, "rollback", "--by", "test", "--reason", "back"
        )
        assert rollback.returncode == 0, rollback.stdout + rollback.stderr
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    card = httpx.get(f"{url}/model", headers=headers, timeout=10).json()
    changes = card["model_changes"]
    assert [(c["action"], c["to_tag"]) for c in changes] == [
        ("rollback", model_tag),
        ("promote", challenger),
    ]
    assert card["answering"] == model_tag
    rolled_back, promoted = (datetime.fromisoformat(c["at"]).timestamp() for c in changes)
    assert all(status == 200 for _, status, _, _ in answers), {s for _, s, _, _ in answers}
    assert {tag for _, _, tag, _ in answers} == {model_tag, challenger}
    from_challenger = [t for t, _, tag, _ in answers if tag == challenger]
    first_back = min(t for t, _, tag, _ in answers if t > rolled_back and tag == model_tag)
    print(f"\n{len(answers)} answers, no error. Promotion row written at 0.00 s; first answer "
          f"from {challenger} at {min(from_challenger) - promoted:+.2f} s; rollback row written "
          f"at {rolled_back - promoted:+.2f} s; last answer from {challenger} at "
          f"{max(from_challenger) - promoted:+.2f} s, first from {model_tag} after the rollback "
          f"at {first_back - promoted:+.2f} s")  # fmt: skip
    # Each worker reads the choice every 0.5 s here: no answer from before the row, or long after.
    assert promoted < min(from_challenger) < promoted + 3
    assert max(from_challenger) < rolled_back + 3
    by_id = {i: tag for _, _, tag, ids in answers for i in ids}
    found = wait_for_records(shadowed.url, list(by_id))
    for record_id, tag in by_id.items():
        record = found[record_id]
        assert record["model_tag"] == tag
        assert record["challenger_tag"] == (challenger if tag == model_tag else model_tag)
