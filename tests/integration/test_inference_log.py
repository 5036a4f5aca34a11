"""The inference log on real PostgreSQL behind a real server: every 200 has exactly one row,
through outages, SIGKILL under load and SIGTERM; a row the database refuses holds back no other;
employee_ref is stored apart from the inputs; the history API pages and keeps ownership."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from loadtests.log_crash import HEADER, VICTIMS, crash_run, entry_workers
from persistence.inference_log.dead_letters import DeadLetters, stored
from persistence.inference_log.wal import waiting_records
from persistence.inference_log.writer import directory
from persistence.retention import Tombstones
from tests.conftest import SERVER_ENV, PostgresDatabases, Stack, app_settings, seed_users
from tests.harness import Server, inference_rows
from tests.helpers import PROJECT_DIR, employee_rows
from tests.proxy import TcpProxy

pytestmark = pytest.mark.integration

ROWS = employee_rows()


def pg(url: str) -> psycopg.Connection:
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def rows_for(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    with pg(url) as conn:
        cur = conn.execute(
            "SELECT id::text, subject, route, batch_id::text, position, inputs, probability, label,"
            " threshold, latency_ms FROM inferences WHERE id = ANY(%s::uuid[])",
            (ids,),
        )
        names = [d.name for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def post_single(url: str, headers: dict[str, str], row: dict[str, Any]) -> httpx.Response | None:
    try:
        return httpx.post(f"{url}/predict/attrition", json=row, headers=headers, timeout=30)
    except httpx.HTTPError:
        return None


def row_ids(response: httpx.Response) -> list[str]:
    """Record ids a 200 response stands for: its request id, or one per batch row."""
    body = response.json()
    if "predictions" not in body:
        return [body["request_id"]]
    batch = uuid.UUID(body["request_id"])
    return [str(uuid.uuid5(batch, str(p["index"]))) for p in body["predictions"]]


def test_concurrent_predictions_each_get_exactly_one_matching_row(stack: Stack) -> None:
    headers = stack.headers("analyst")
    singles = ROWS[:64]
    batches = [ROWS[200 + 25 * i : 225 + 25 * i] for i in range(8)]

    def batch(rows: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(
            f"{stack.server.url}/predict/attrition/batch",
            json={"employees": rows},
            headers=headers,
            timeout=60,
        )

    with ThreadPoolExecutor(32) as pool:
        single_f = [pool.submit(post_single, stack.server.url, headers, r) for r in singles]
        batch_f = [pool.submit(batch, b) for b in batches]
        responses = [f.result() for f in single_f + batch_f]
    assert all(r is not None and r.status_code == 200 for r in responses)
    expected: dict[str, tuple[dict[str, Any], float, str, int | None]] = {}
    for r, sent in zip(responses[:64], singles, strict=True):
        body = r.json()
        expected[body["request_id"]] = (sent, body["probability"], body["label"], None)
    for r, sent_rows in zip(responses[64:], batches, strict=True):
        for rid, sent, pred in zip(row_ids(r), sent_rows, r.json()["predictions"], strict=True):
            expected[rid] = (sent, pred["probability"], pred["label"], pred["index"])
    assert len(expected) == 64 + 200

    wait_for(lambda: len(rows_for(stack.url, list(expected))) == len(expected), what="all rows")
    got = rows_for(stack.url, list(expected))
    for rid, (sent, probability, label, position) in expected.items():
        row = got[rid]
        assert row["inputs"] == sent and row["probability"] == probability
        assert row["label"] == label and row["position"] == position
        assert row["subject"] == "analyst"
        assert row["route"] == (
            "/predict/attrition" if position is None else "/predict/attrition/batch"
        )


@pytest.fixture
def proxied(
    model_tag: str, postgres: PostgresDatabases, tmp_path: Path
) -> Iterator[tuple[TcpProxy, str, dict[str, str]]]:
    """A database reachable only through a proxy the test can cut, and the env of its server."""
    direct = postgres.create()
    seed_users(direct)
    proxy = TcpProxy()
    via_proxy = direct.replace("127.0.0.1:5432", proxy.url_host)
    env = {
        **SERVER_ENV,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": via_proxy,
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
        "ATTRITION_LOG_RETRY_SECONDS": "0.5",
    }
    yield proxy, direct, env
    try:
        proxy.cut()
    except OSError:
        pass


def token_headers(tmp_path: Path, url: str, user: str = "predictor") -> dict[str, str]:
    from auth.tokens import create_token

    settings = app_settings(url, tmp_path / "data")
    return {"Authorization": f"Bearer {create_token(settings, subject=user, roles=['predict'])}"}


def health(server: Server) -> dict[str, Any]:
    return httpx.get(f"{server.url}/health", timeout=10).json()


def test_database_outage_loses_and_duplicates_nothing(
    proxied: tuple[TcpProxy, str, dict[str, str]], tmp_path: Path
) -> None:
    proxy, direct, env = proxied
    server = Server("service:AttritionService", env, log=tmp_path / "serve.log")
    headers = token_headers(tmp_path, direct)
    ok: list[str] = []
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        nonlocal failed
        i = n
        while not stop.is_set():
            r = post_single(server.url, headers, ROWS[i % len(ROWS)])
            with lock:
                if r is not None and r.status_code == 200:
                    ok.append(r.json()["request_id"])
                else:
                    failed += 1
            i += 8

    try:
        assert post_single(server.url, headers, ROWS[0]).status_code == 200  # warm the user cache
        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        proxy.cut()
        during: dict[str, Any] = {}

        def degraded() -> bool:
            nonlocal during
            during = health(server)
            # The log's own state: /health is degraded as soon as its database probe fails,
            # which can come before the writer's first failed write.
            log_state = during["inference_log"]
            return log_state["state"] == "degraded" and log_state["backlog_records"] > 0

        # A writer learns of the outage at its next write: up to a flush interval after the cut.
        wait_for(degraded, 20, "degraded, with a backlog")
        time.sleep(1.5)
        proxy.restore()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        wait_for(lambda: health(server)["inference_log"]["state"] == "ok", 30, "recovery")
    finally:
        stop.set()
        server.stop()
    assert during["status"] == "degraded" and during["inference_log"]["state"] == "degraded"
    assert failed == 0, "predictions must keep being served during the outage"
    successes = len(ok) + 1
    print(f"outage test: {successes} predictions answered 200, {failed} failed")
    assert len(rows_for(direct, ok)) == len(ok)
    assert inference_rows(direct) == successes, "a row without a 200, or a duplicate"


def waiting(data_dir: Path) -> int:
    """Records in the write-ahead files under a data folder."""
    return waiting_records(directory(data_dir) / "wal")


@pytest.mark.parametrize("victim", ["entry_worker", "whole_server"])
def test_sigkill_during_an_outage_then_restart_delivers_the_rows(
    proxied: tuple[TcpProxy, str, dict[str, str]], tmp_path: Path, victim: str
) -> None:
    proxy, direct, env = proxied
    server = Server("service:AttritionService", env, log=tmp_path / "first.log")
    headers = token_headers(tmp_path, direct)
    try:
        first = post_single(server.url, headers, ROWS[0])
        assert first is not None and first.status_code == 200
        wait_for(lambda: inference_rows(direct) == 1, what="first row")
        proxy.cut()
        ids = []
        for row in ROWS[1:21]:
            r = post_single(server.url, headers, row)
            assert r is not None and r.status_code == 200
            ids.append(r.json()["request_id"])
        wait_for(lambda: health(server)["status"] == "degraded", 30, "degraded")
        if victim == "entry_worker":
            worker = server.worker("AttritionService")
            worker.kill()  # SIGKILL: no shutdown hook, no flush
            worker.wait(10)
        else:
            server.stop(signal.SIGKILL)
        assert waiting(tmp_path / "data") == 20
        proxy.restore()
        assert rows_for(direct, ids) == {}  # nothing reached the database before the kill
        if victim == "whole_server":  # the next start replays what the dead process kept
            server = Server("service:AttritionService", env, log=tmp_path / "second.log")
        # else BentoML starts a new worker, whose writer replays the dead one's file at start
        wait_for(lambda: len(rows_for(direct, ids)) == 20, 60, "replayed rows")
    finally:
        server.stop()
    assert inference_rows(direct) == 21
    assert waiting(tmp_path / "data") == 0


@pytest.mark.parametrize("victim", VICTIMS)
def test_sigkill_under_load_loses_no_answered_prediction(
    model_tag: str, postgres: PostgresDatabases, tmp_path: Path, victim: str
) -> None:
    url = postgres.create()
    env = {
        **SERVER_ENV,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
    }
    result = crash_run(victim, url, env, ROWS, tmp_path, clients=8, seconds=3)
    print(HEADER, result.line(), sep="\n")
    assert result.answered > 100, "the load never got going"
    assert result.missing == 0, "an answered prediction has no row"
    assert result.duplicates == 0
    assert result.rows == result.answered + result.unanswered_rows


def test_sigterm_during_load_flushes_every_answered_prediction(
    proxied: tuple[TcpProxy, str, dict[str, str]], tmp_path: Path
) -> None:
    _, direct, env = proxied
    env = {**env, "ATTRITION_LOG_FLUSH_INTERVAL_MS": "2000"}  # keep records queued at the signal
    server = Server("service:AttritionService", env, log=tmp_path / "serve.log")
    headers = token_headers(tmp_path, direct)
    ok: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(n, 400, 8):
            r = post_single(server.url, headers, ROWS[i])
            if r is None:
                return
            if r.status_code == 200:
                with lock:
                    ok.append(r.json()["request_id"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.stop(signal.SIGTERM, timeout=60)
    for t in threads:
        t.join()
    assert ok, "no prediction was answered before the signal"
    print(f"sigterm test: {len(ok)} predictions answered 200 before shutdown")
    assert len(rows_for(direct, ok)) == len(ok)
    assert inference_rows(direct) == len(ok)


@pytest.fixture(scope="module")
def recorded(stack: Stack) -> tuple[str, list[dict[str, Any]]]:
    """A fresh user with predict+history roles and the 45 predictions it made (5 singles, 2 batches)."""
    from sqlmodel import Session

    from auth.users import create_user
    from persistence.db import make_engine
    from persistence.models import UserCreate

    name = f"walker{uuid.uuid4().hex[:6]}"
    engine = make_engine(stack.url)
    with Session(engine) as session:
        create_user(
            session=session,
            user_in=UserCreate(username=name, roles=["predict", "history"], password="pw-123456"),
        )
    engine.dispose()
    from auth.tokens import create_token

    headers = {
        "Authorization": f"Bearer {create_token(stack.settings, subject=name, roles=['predict', 'history'])}"
    }
    made: list[dict[str, Any]] = []
    for row in ROWS[300:305]:
        body = httpx.post(f"{stack.server.url}/predict/attrition", json=row, headers=headers).json()
        made.append({"id": body["request_id"], "inputs": row, "probability": body["probability"]})
    for start in (400, 420):
        chunk = ROWS[start : start + 20]
        r = httpx.post(
            f"{stack.server.url}/predict/attrition/batch",
            json={"employees": chunk},
            headers=headers,
        )
        for rid, row, p in zip(row_ids(r), chunk, r.json()["predictions"], strict=True):
            made.append({"id": rid, "inputs": row, "probability": p["probability"]})
    wait_for(lambda: len(rows_for(stack.url, [m["id"] for m in made])) == 45, what="rows")
    stack.tokens[name] = headers["Authorization"].split()[1]
    return name, made


def history(stack: Stack, token: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{stack.server.url}/predict/history",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_pagination_walks_every_row_once_newest_first(
    stack: Stack, recorded: tuple[str, list[dict[str, Any]]]
) -> None:
    name, made = recorded
    token = stack.tokens[name]
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 7} | ({"cursor": cursor} if cursor else {})
        page = history(stack, token, **params).json()
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 7  # 45 rows, 7 per page
    assert sorted(i["id"] for i in seen) == sorted(m["id"] for m in made)
    times = [(i["created_at"], i["id"]) for i in seen]
    assert times == sorted(times, reverse=True)
    by_id = {m["id"]: m for m in made}
    for item in seen:  # exactly as recorded
        assert item["inputs"] == by_id[item["id"]]["inputs"]
        assert item["probability"] == by_id[item["id"]]["probability"]
        assert item["subject"] == name


def test_history_filters(stack: Stack, recorded: tuple[str, list[dict[str, Any]]]) -> None:
    name, made = recorded
    token = stack.tokens[name]
    yes = history(stack, token, label="Yes", limit=500).json()["items"]
    assert {i["id"] for i in yes} == {m["id"] for m in made if m["probability"] >= 0.35} or all(
        i["label"] == "Yes" for i in yes
    )
    high = history(stack, token, min_probability=0.5, limit=500).json()["items"]
    assert {i["id"] for i in high} == {m["id"] for m in made if m["probability"] >= 0.5}
    everything = history(stack, token, limit=500).json()["items"]
    middle = sorted(i["created_at"] for i in everything)[len(everything) // 2]
    later = history(stack, token, since=middle, limit=500).json()["items"]
    assert later and all(i["created_at"] >= middle for i in later)
    assert history(stack, token, model_tag="attrition:nope").json()["items"] == []


def test_history_ownership(stack: Stack, recorded: tuple[str, list[dict[str, Any]]]) -> None:
    name, made = recorded
    one = made[0]["id"]
    historian = stack.token("historian")
    assert history(stack, historian).json()["items"] == []  # nothing of anyone else's
    assert history(stack, historian, subject=name).status_code == 403
    r = httpx.get(
        f"{stack.server.url}/predict/history/{one}",
        headers={"Authorization": f"Bearer {historian}"},
    )
    assert r.status_code == 404
    own = httpx.get(
        f"{stack.server.url}/predict/history/{one}",
        headers={"Authorization": f"Bearer {stack.tokens[name]}"},
    )
    assert own.status_code == 200 and own.json()["inputs"] == made[0]["inputs"]
    admin = history(stack, stack.token("admin"), subject=name, limit=500).json()["items"]
    assert len(admin) == 45
    assert history(stack, stack.token("predictor")).status_code == 403  # no history role


def test_bad_history_queries_are_4xx(stack: Stack) -> None:
    token = stack.token("admin")
    assert history(stack, token, limit=501).status_code == 400
    assert history(stack, token, cursor="garbage!").status_code == 400
    assert history(stack, token, since="2026-01-01T00:00:00").status_code == 400  # no timezone
    r = httpx.get(
        f"{stack.server.url}/predict/history/not-a-uuid",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 400


def test_rejections_are_counted_by_reason_not_recorded(stack: Stack) -> None:
    before = inference_rows(stack.url)
    r = httpx.post(
        f"{stack.server.url}/predict/attrition",
        json={"Age": "x"},
        headers=stack.headers("predictor"),
    )
    assert r.status_code == 400
    assert httpx.post(f"{stack.server.url}/predict/attrition", json=ROWS[0]).status_code == 401
    metrics = httpx.get(f"{stack.server.url}/metrics").text
    assert 'attrition_rejected_requests_total{reason="invalid_input"}' in metrics
    assert 'attrition_rejected_requests_total{reason="unauthenticated"}' in metrics
    time.sleep(0.5)
    assert inference_rows(stack.url) == before


def test_a_row_the_database_refuses_is_isolated_and_retried(stack: Stack) -> None:
    """One employee the database refuses (a rule on the table) in a batch of 200 and among
    concurrent singles: every other row arrives, the refused one waits in the dead letters
    until the command writes it, and /health stays ok with the dead letter counted."""
    refs = [f"E-{uuid.uuid4().hex[:8]}" for _ in range(200)]
    refs[137] = poison = f"E-POISON-{uuid.uuid4().hex[:6]}"
    batch = [{**row, "employee_ref": ref} for row, ref in zip(ROWS[500:700], refs, strict=True)]
    rule = f"ALTER TABLE inferences ADD CONSTRAINT refuse_poison CHECK (employee_ref <> '{poison}')"
    with pg(stack.url) as conn:
        conn.execute(rule)
    data_dir = Path(stack.settings.data_dir)
    letters = DeadLetters(directory(data_dir) / "dead-letters.jsonl",
                          tombstones=Tombstones(stack.url))  # fmt: skip
    before = len(letters.load())
    headers = stack.headers("analyst")
    try:
        with ThreadPoolExecutor(9) as pool:
            batch_f = pool.submit(
                httpx.post, f"{stack.server.url}/predict/attrition/batch",
                json={"employees": batch}, headers=headers, timeout=60,
            )  # fmt: skip
            singles = list(pool.map(lambda r: post_single(stack.server.url, headers, r), ROWS[:40]))
            r = batch_f.result()
        assert r.status_code == 200 and all(s is not None and s.status_code == 200 for s in singles)
        good = [rid for rid, ref in zip(row_ids(r), refs, strict=True) if ref != poison]
        singles_ids = [s.json()["request_id"] for s in singles if s is not None]
        wait_for(lambda: len(rows_for(stack.url, good + singles_ids)) == 239, what="good rows")
        # The writer moves it from the file into the database's table.
        wait_for(lambda: len(stored(engine=letters.tombstones.engine)) == before + 1,
                 what="the dead letter in the database")  # fmt: skip
        [letter] = [e for e in letters.load() if e.values().get("employee_ref") == poison]
        assert "refuse_poison" in letter.error and letters.local_count() == 0
        wait_for(lambda: health(stack.server)["inference_log"]["dead_letter_records"] == before + 1,
                 what="/health counting it")  # fmt: skip
        state = health(stack.server)
        assert state["status"] == "ok" and state["inference_log"]["state"] == "ok"
    finally:
        with pg(stack.url) as conn:
            conn.execute("ALTER TABLE inferences DROP CONSTRAINT IF EXISTS refuse_poison")
    env = {**os.environ, "ATTRITION_DATABASE_URL": stack.url, "ATTRITION_DATA_DIR": str(data_dir)}
    retried = subprocess.run(
        [sys.executable, "-m", "persistence", "dead-letters", "retry"],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stdout + retried.stderr
    poisoned = [rid for rid, ref in zip(row_ids(r), refs, strict=True) if ref == poison]
    assert rows_for(stack.url, poisoned)[poisoned[0]]["position"] == 137
    letters.tombstones.close()
    wait_for(lambda: health(stack.server)["inference_log"]["dead_letter_records"] == before,
             what="/health counting it no more")  # fmt: skip


def test_employee_ref_is_stored_apart_from_the_model_inputs(stack: Stack) -> None:
    headers = stack.headers("analyst")
    single = httpx.post(
        f"{stack.server.url}/predict/attrition",
        json={**ROWS[0], "employee_ref": "HR-1/42"},
        headers=headers,
    )
    plain = httpx.post(f"{stack.server.url}/predict/attrition", json=ROWS[0], headers=headers)
    assert single.status_code == 200 and plain.status_code == 200
    assert single.json()["probability"] == plain.json()["probability"]  # not a model input
    rid = single.json()["request_id"]
    wait_for(lambda: rid in rows_for(stack.url, [rid]), what="row")
    with pg(stack.url) as conn:
        ref, inputs = conn.execute(
            "SELECT employee_ref, inputs FROM inferences WHERE id = %s", (rid,)
        ).fetchone()
    assert ref == "HR-1/42" and inputs == ROWS[0]
    item = httpx.get(f"{stack.server.url}/predict/history/{rid}", headers=headers).json()
    assert item["employee_ref"] == "HR-1/42" and "employee_ref" not in item["inputs"]


@pytest.mark.parametrize("ref", ["", "has space", "nul\u0000", "x" * 65, "-leading", 42])
def test_bad_employee_ref_is_a_400_naming_the_field(stack: Stack, ref: object) -> None:
    r = httpx.post(
        f"{stack.server.url}/predict/attrition/batch",
        json={"employees": [ROWS[0], {**ROWS[1], "employee_ref": ref}]},
        headers=stack.headers("analyst"),
    )
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["loc"] == ["employees", 1, "employee_ref"]


def test_no_answer_without_its_record(
    model_tag: str, postgres: PostgresDatabases, tmp_path: Path
) -> None:
    """When the record cannot be written to the worker's disk (full, failing), the prediction
    is refused (503), never answered 200 without a record, and the writer survives the fault."""
    url = postgres.create()
    seed_users(url)
    env = {**SERVER_ENV, "ATTRITION_MODEL_TAG": model_tag, "ATTRITION_DATABASE_URL": url,
           "ATTRITION_DATA_DIR": str(tmp_path / "data"),
           # One entry worker, warmed by the first request: BentoML creates a worker's metric
           # files at its first request, and under this fault it would answer 500 itself.
           "BENTOML_CONFIG_OVERRIDES": json.dumps({"services": {"AttritionService": {"workers": 1}}})}  # fmt: skip
    server = Server("service:AttritionService", env, log=tmp_path / "serve.log")
    headers = token_headers(tmp_path, url)
    try:
        first = post_single(server.url, headers, ROWS[0])
        assert first is not None and first.status_code == 200
        workers = entry_workers(server)
        for worker in workers:  # no file of theirs may grow: write() fails with EFBIG
            worker.rlimit(psutil.RLIMIT_FSIZE, (1, psutil.RLIM_INFINITY))
        refused = [post_single(server.url, headers, row) for row in ROWS[1:6]]
        for worker in workers:
            worker.rlimit(psutil.RLIMIT_FSIZE, (psutil.RLIM_INFINITY, psutil.RLIM_INFINITY))
        after = post_single(server.url, headers, ROWS[6])
        assert after is not None and after.status_code == 200
        wait_for(lambda: inference_rows(url) == 2, what="two rows")
    finally:
        server.stop()
    statuses = [r.status_code if r else None for r in refused]
    # 503: the log refuses to answer without its record.
    assert statuses == [503] * 5, statuses
    time.sleep(0.5)
    assert inference_rows(url) == 2  # the refused ones left no row either
