"""The OCI image (make container), run with podman against the real PostgreSQL: starts from
environment variables alone, non-root, no compilers, <= 900 MB; token, prediction, log row;
SIGTERM (`podman stop`) under load costs no 5xx and loses no row."""

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loadtests.harness import free_port, inference_rows
from tests.conftest import PASSWORD, TEST_SECRET, PostgresDatabases, seed_users
from tests.helpers import employee_rows
from tests.integration.containers import podman
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.integration

MAX_IMAGE_BYTES = 900 * 1000 * 1000


class Container:
    def __init__(self, image: str, url: str, port: int, extra: tuple[str, ...] = ()) -> None:
        self.name = f"attrition-test-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-data"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        podman(
            "run", "-d", "--name", self.name, "--network", "host", "--read-only",
            "--tmpfs", "/tmp", "--tmpfs", "/var/lib/bentoml:rw,U",
            "-v", f"{self.volume}:/var/lib/attrition",
            "-e", f"BENTOML_PORT={port}", "-e", f"ATTRITION_DATABASE_URL={url}",
            "-e", f"ATTRITION_JWT_SECRET={TEST_SECRET}", *extra, image,
        )  # fmt: skip
        deadline = started + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"not ready:\n{self.logs()}")
        self.start_seconds = time.monotonic() - started
        # CPU time it took, which contention does not stretch as it does the wall time.
        cpu = podman("stats", "--no-stream", "--format", "{{.CPUNano}}", self.name)
        self.start_cpu_seconds = int(cpu) / 1e9

    def logs(self) -> str:
        return podman("logs", self.name, check=False)[-4000:]

    def remove(self) -> None:
        podman("rm", "-f", "-t", "5", self.name, check=False)
        podman("volume", "rm", "-f", self.volume, check=False)


@pytest.fixture
def container(image: str, postgres: PostgresDatabases) -> Iterator[tuple[Container, str]]:
    url = postgres.create()
    ctr = Container(image, url, free_port())
    try:
        yield ctr, url
    finally:
        ctr.remove()


def token(ctr: Container) -> dict[str, str]:
    r = httpx.post(
        f"{ctr.url}/auth/token", data={"username": "predictor", "password": PASSWORD}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_image_runs_from_environment_alone_and_serves(
    image: str, container: tuple[Container, str]
) -> None:
    ctr, url = container
    size = int(json.loads(podman("image", "inspect", image))[0]["Size"])
    print(
        f"image {image}: {size / 1e6:.0f} MB, start to /readyz {ctr.start_seconds:.1f}s"
        f" ({ctr.start_cpu_seconds:.1f} CPU-s)"
    )
    assert size <= MAX_IMAGE_BYTES
    assert podman("exec", ctr.name, "id", "-u").strip() != "0"
    tools = podman("exec", ctr.name, "sh", "-c", "for t in cc gcc g++ make git; do command -v $t; done || true")  # fmt: skip
    assert tools.strip() == "", f"compilers in the image: {tools}"
    seed_users(url)  # the container already migrated the database (on-deployment hook)
    headers = token(ctr)
    row = employee_rows(1)[0]
    r = httpx.post(f"{ctr.url}/predict/attrition", json=row, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 30
    while inference_rows(url) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert inference_rows(url) == 1


def test_podman_stop_under_load_costs_no_error_and_no_row(
    container: tuple[Container, str], tmp_path: Path
) -> None:
    ctr, url = container
    seed_users(url)
    traffic = Traffic(ctr.url, token(ctr), employee_rows(), clients=32).start()
    try:
        time.sleep(3)
        signalled = time.monotonic()
        podman("stop", "-t", "90", ctr.name, timeout=120)  # SIGTERM to the arbiter (PID 1)
    finally:
        traffic.stop()
    print(f"podman stop under load: {dict(traffic.counts())}, log rows {inference_rows(url)}")
    assert not traffic.server_errors(), traffic.server_errors()[:3]
    before = [o for o in traffic.outcomes if o.sent < signalled]
    assert before and all(o.status == 200 for o in before)
    assert inference_rows(url) == len(traffic.ok_ids())
