"""A model call that hangs ends in BentoML's 504 at the service's configured traffic timeout on
every prediction path: the fast path, the full stack, batch, explain and what-if."""

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import SERVER_ENV, PostgresDatabases, Stack, app_settings, seed_users
from tests.harness import Server
from tests.helpers import PROJECT_DIR, employee_rows

pytestmark = pytest.mark.integration

# The entry's traffic.timeout in the test's configuration (configuration.yaml says 30 s).
TIMEOUT = 3


class HangingModel:
    """A stand-in for the model service (split topology): ready, and every call it accepts
    waits, unanswered, until close()."""

    def __init__(self) -> None:
        release = self.release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # /readyz, /livez: ready
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # a model call: never answered
                release.wait()
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hanging(
    model_tag: str, postgres: PostgresDatabases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """An entry server whose model service never answers, with traffic.timeout set to TIMEOUT
    in its BENTOML_CONFIG (the decorator says nothing about it)."""
    work = tmp_path_factory.mktemp("hanging")
    config = yaml.safe_load((PROJECT_DIR / "configuration.yaml").read_text())
    config["services"]["AttritionService"]["traffic"]["timeout"] = TIMEOUT
    (work / "configuration.yaml").write_text(yaml.safe_dump(config))
    url = postgres.create()
    seed_users(url)
    model = HangingModel()
    env = {
        **SERVER_ENV,
        "BENTOML_CONFIG": str(work / "configuration.yaml"),
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        "ATTRITION_DATA_DIR": str(work / "data"),
        "ATTRITION_MODEL_URL": model.url,
    }
    server = Server("service:AttritionService", env, log=work / "serve.log")
    try:
        yield Stack("postgresql", url, server, app_settings(url, work / "data"))
    finally:
        server.stop()
        model.close()


ROW = employee_rows(1)[0]
CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    "fast_path": ("/predict/attrition", ROW),
    "full_stack": ("/predict/attrition?explain=false", ROW),
    "explain": ("/predict/attrition?explain=true", ROW),
    "batch": ("/predict/attrition/batch", {"employees": [ROW, ROW]}),
    "batch_explain": ("/predict/attrition/batch?explain=true", {"employees": [ROW]}),
    "what_if": ("/predict/attrition/what-if",
                {"employee": ROW, "scenarios": [{"changes": {"OverTime": "No"}}]}),
}  # fmt: skip


def test_a_hanging_model_call_is_a_504_at_the_configured_timeout_on_every_path(
    hanging: Stack,
) -> None:
    headers = hanging.headers("predictor")

    def call(path_body: tuple[str, dict[str, Any]]) -> tuple[int, Any, float]:
        path, body = path_body
        started = time.monotonic()
        try:
            r = httpx.post(f"{hanging.server.url}{path}", json=body, headers=headers,
                           timeout=TIMEOUT * 5)  # fmt: skip
        except httpx.TimeoutException:
            return 0, None, time.monotonic() - started
        return r.status_code, r.json(), time.monotonic() - started

    with ThreadPoolExecutor(len(CALLS)) as pool:
        answers = dict(zip(CALLS, pool.map(call, CALLS.values()), strict=True))
    print({name: f"{code} after {waited:.1f}s" for name, (code, _, waited) in answers.items()})
    bentoml_504 = {"error": f"Not able to process the request in {TIMEOUT} seconds"}
    assert {name: (code, body) for name, (code, body, _) in answers.items()} == dict.fromkeys(
        CALLS, (504, bentoml_504)
    )
    waits = [waited for _, _, waited in answers.values()]
    assert TIMEOUT - 0.5 <= min(waits) and max(waits) <= TIMEOUT * 3, waits
