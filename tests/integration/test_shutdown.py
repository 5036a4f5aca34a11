"""SIGTERM under load on a bare `bentoml serve`: readiness false at once, no 5xx, every request
sent before the signal answered 200, and every 200 has its inference-log row and access-log line."""

import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVER_ENV, PostgresDatabases, app_settings, seed_users
from tests.harness import Server, inference_rows
from tests.helpers import employee_rows
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.integration

ROWS = employee_rows()


def bearer(url: str, data_dir: Path) -> dict[str, str]:
    from auth.tokens import create_token

    token = create_token(app_settings(url, data_dir), subject="predictor", roles=["predict"])
    return {"Authorization": f"Bearer {token}"}


def readiness_after(url: str, seconds: float) -> list[tuple[float, int | None]]:
    """/readyz polled for `seconds`: (time, status or None when nothing answers)."""
    seen: list[tuple[float, int | None]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            status: int | None = httpx.get(f"{url}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            status = None
        seen.append((time.monotonic(), status))
        time.sleep(0.05)
    return seen


@pytest.mark.parametrize("delay", [0.0, 2.0], ids=["no-delay", "delay-2s"])
def test_sigterm_under_load_answers_everything_it_accepted(
    model_tag: str, postgres: PostgresDatabases, tmp_path: Path, delay: float
) -> None:
    url = postgres.create()
    seed_users(url)
    env = {
        **SERVER_ENV,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
        "ATTRITION_SHUTDOWN_DELAY_SECONDS": str(delay),
        # Keep records buffered at the signal: the shutdown hook must flush them.
        "ATTRITION_LOG_FLUSH_INTERVAL_MS": "2000",
    }
    server = Server("service:AttritionService", env, log=tmp_path / "serve.log")
    traffic = Traffic(server.url, bearer(url, tmp_path / "data"), ROWS, clients=32).start()
    try:
        time.sleep(3)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # the arbiter, as `podman stop` and kubelet do
        readiness = readiness_after(server.url, delay + 0.5) if delay else []
        server.proc.wait(120)
    finally:
        traffic.stop()
        server.stop()
    counts = traffic.counts()
    print(f"SIGTERM under load (delay {delay}s): {dict(counts)}, log rows {inference_rows(url)}")
    assert not traffic.server_errors(), traffic.server_errors()[:3]
    before = [o for o in traffic.outcomes if o.sent < signalled]
    assert before and all(o.status == 200 for o in before), [o for o in before if o.status != 200][
        :3
    ]
    in_flight = [o for o in before if o.done > signalled]
    assert in_flight, "no request was in flight at the signal"
    ok = traffic.ok_ids()
    # The server has exited: its shutdown flushed every buffered record...
    assert inference_rows(url) == len(ok)
    # ...and every buffered access-log line of the fast path.
    lines = re.findall(r"path=/predict/attrition,[^)]*\) \(status=200", server.log_path.read_text())
    assert len(lines) == len(ok), f"{len(ok)} answered 200, {len(lines)} access-log lines"
    if delay:
        not_ready = [t for t, status in readiness if status != 200]
        assert not_ready and not_ready[0] - signalled < 0.5, readiness[:5]
        # ...while predictions were still answered until the delay ran out.
        assert any(o.status == 200 and o.sent > not_ready[0] for o in traffic.outcomes)
