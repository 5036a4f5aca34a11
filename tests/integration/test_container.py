"""The OCI images (make container), run with podman against the real PostgreSQL: the service
starts from environment variables alone, non-root, no compilers, <= 900 MB; token, prediction,
log row, the challenger the image packs scored in shadow, promoted and rolled back; the run block
of docs/operations/deploy.md works as written; SIGTERM (`podman stop`) under load costs no 5xx
and loses no row. The monitoring image runs the CronJob's command as its manifest says (podman
kube play ignores CronJobs) and stores the report's summary."""

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from persistence import partitions
from tests.conftest import PASSWORD, TEST_SECRET, PostgresDatabases, seed_users
from tests.docblocks import doc_block
from tests.harness import PG_ADMIN, free_port, inference_rows
from tests.helpers import PROJECT_DIR, employee_rows, rendered
from tests.integration.containers import podman
from tests.integration.traffic import Traffic

pytestmark = pytest.mark.integration

MAX_IMAGE_BYTES = 900 * 1000 * 1000
# What the monitoring image adds to the service image (the monitoring extra): 97 MB measured.
MAX_MONITORING_EXTRA_BYTES = 150 * 1000 * 1000
COMPILERS = "for t in cc gcc g++ make git; do command -v $t; done || true"
# The container run block of docs/operations/deploy.md, found by this text (tests/test_docs.py).
RUN_BLOCK = "podman run -d --name attrition "


def ready(url: str, deadline: float) -> bool:
    """Whether the server at `url` answered /readyz with 200 before `deadline` (monotonic)."""
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


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
        if not ready(self.url, started + 180):
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


@contextmanager
def started(image: str, postgres: PostgresDatabases) -> Iterator[tuple[Container, str]]:
    url = postgres.create()
    ctr = Container(image, url, free_port())
    try:
        yield ctr, url
    finally:
        ctr.remove()


@pytest.fixture
def container(image: str, postgres: PostgresDatabases) -> Iterator[tuple[Container, str]]:
    """A container of its own, on a database of its own."""
    with started(image, postgres) as pair:
        yield pair


@pytest.fixture(scope="module")
def served(image: str, postgres: PostgresDatabases) -> Iterator[tuple[Container, str]]:
    """One container with the test users, for the tests that leave it serving (a start costs
    10-20 s here)."""
    with started(image, postgres) as (ctr, url):
        seed_users(url)  # the container already migrated the database (on-deployment hook)
        yield ctr, url


def token(ctr: Container, user: str = "predictor") -> dict[str, str]:
    r = httpx.post(
        f"{ctr.url}/auth/token", data={"username": user, "password": PASSWORD}, timeout=30
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def wait_for_rows(url: str, n: int) -> None:
    deadline = time.monotonic() + 30
    while inference_rows(url) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert inference_rows(url) == n


def test_image_runs_from_environment_alone_and_serves(
    image: str, served: tuple[Container, str], model_tag: str, challenger: str
) -> None:
    """Also the challenger the image packs (build.sh, ATTRITION_CHALLENGER_TAG): named by its
    tag, set in its environment, scored in shadow and recorded, never returned."""
    ctr, url = served
    (info,) = json.loads(podman("image", "inspect", image))
    size = int(info["Size"])
    packed = podman("exec", ctr.name, "du", "-s", "-B1", f"/home/bentoml/bento/models/{challenger.split(':')[0]}")  # fmt: skip
    print(
        f"image {image}: {size / 1e6:.0f} MB (the challenger {int(packed.split()[0]) / 1e6:.1f} MB"
        f" of it), start to /readyz {ctr.start_seconds:.1f}s ({ctr.start_cpu_seconds:.1f} CPU-s)"
    )
    assert size <= MAX_IMAGE_BYTES
    assert image.endswith(f"-{model_tag.split(':')[1]}-{challenger.split(':')[1]}")
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert (env["ATTRITION_MODEL_TAG"], env["ATTRITION_CHALLENGER_TAG"]) == (model_tag, challenger)
    assert podman("exec", ctr.name, "id", "-u").strip() != "0"
    tools = podman("exec", ctr.name, "sh", "-c", COMPILERS)
    assert tools.strip() == "", f"compilers in the image: {tools}"
    logged = inference_rows(url)
    headers = token(ctr)
    row = employee_rows(1)[0]
    r = httpx.post(f"{ctr.url}/predict/attrition", json=row, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model_tag"] == model_tag and challenger not in r.text
    wait_for_rows(url, logged + 1)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        (record,) = conn.execute(
            "SELECT model_tag, challenger_tag, challenger_probability FROM inferences WHERE id = %s",
            (r.json()["request_id"],),
        ).fetchall()
    assert record[:2] == (model_tag, challenger) and 0 <= record[2] <= 1


def test_the_packed_challenger_is_promoted_and_rolled_back_without_a_rebuild(
    container: tuple[Container, str], model_tag: str, challenger: str
) -> None:
    """The commands in the running image (as `kubectl exec` runs them in an entry pod), no new
    image, no restart: the next answers come from the model each one chose."""
    ctr, url = container
    seed_users(url)
    headers = token(ctr)

    def answering() -> str:
        r = httpx.post(f"{ctr.url}/predict/attrition", json=employee_rows(1)[0], headers=headers,
                       timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        return str(r.json()["model_tag"])

    assert answering() == model_tag
    for command, expected in (("promote", challenger), ("rollback", model_tag)):
        podman("exec", "-w", "/home/bentoml/bento/src", ctr.name, "python", "-m", "persistence",
               command, "--by", "test", "--reason", "in the image")  # fmt: skip
        deadline = time.monotonic() + 60  # read every ATTRITION_MODEL_CHOICE_SECONDS (5 s)
        while answering() != expected and time.monotonic() < deadline:
            time.sleep(0.5)
        changes = podman("exec", "-w", "/home/bentoml/bento/src", ctr.name, "python", "-m",
                         "persistence", "model-changes", check=False)  # fmt: skip
        assert answering() == expected, f"{command}:\n{changes}\n{ctr.logs()}"


def test_the_docs_run_block_works_as_written(image: str, tmp_path: Path) -> None:
    """The block in a shell with nothing but PATH and HOME (no CONTAINERS_CONF), from the project
    folder after `make container`; only the names and the port are the test's own. Then the user
    it creates gets a token and a prediction."""
    name, db, port = f"attrition-readme-{uuid.uuid4().hex[:8]}", f"attrition_readme_{uuid.uuid4().hex[:8]}", free_port()  # fmt: skip
    script = doc_block(RUN_BLOCK)
    for old, new in [
        ("--name attrition ", f"--name {name} "),
        ("attrition-data:", f"{name}-data:"),
        ("BENTOML_PORT=3000", f"BENTOML_PORT={port}"),
        ("-U postgres attrition\n", f"-U postgres {db}\n"),
        ("5432/attrition ", f"5432/{db} "),
        ("/bento/src attrition python", f"/bento/src {name} python"),
    ]:
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    try:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=PROJECT_DIR, env=env,
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        url = f"http://127.0.0.1:{port}"
        assert ready(url, time.monotonic() + 180), podman("logs", name, check=False)[-4000:]
        login = {"username": "alice", "password": "a-long-password"}
        r = httpx.post(f"{url}/auth/token", data=login, timeout=30)
        assert r.status_code == 200, r.text
        headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = httpx.post(f"{url}/predict/attrition", json=employee_rows(1)[0], headers=headers,
                       timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
    finally:
        podman("rm", "-f", "-t", "5", name, check=False)
        podman("volume", "rm", "-f", f"{name}-data", check=False)
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


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


def as_podman_run(
    spec: dict[str, Any], config_maps: dict[str, dict[str, str]], secret: dict[str, str]
) -> tuple[list[str], list[str]]:
    """`podman run` options and arguments for a Job's pod as its manifest says: user, read-only
    root, capabilities, memory, working directory, command, an empty volume per mount, and the
    env it gets from the ConfigMap and the Secret (whose values are given: the test's)."""
    (c,) = spec["containers"]
    pod = spec["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    memory = c["resources"]["limits"]["memory"].replace("Gi", "g").replace("Mi", "m")
    options = ["--user", f"{pod['runAsUser']}:{pod['runAsGroup']}", "--read-only",
               "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--memory", memory,
               "-w", c["workingDir"], "--entrypoint", c["command"][0]]  # fmt: skip
    for mount in c["volumeMounts"]:
        options += ["--tmpfs", f"{mount['mountPath']}:rw,U"]  # every volume is an emptyDir
    for ref in c["envFrom"]:
        env = config_maps[ref["configMapRef"]["name"]] if "configMapRef" in ref else secret
        options += [a for name, value in env.items() for a in ("-e", f"{name}={value}")]
    return options, [*c["command"][1:], *c.get("args", [])]


def test_the_monitoring_cronjob_reports_yesterday_into_the_database(
    image: str, monitoring_image: str, served: tuple[Container, str], model_tag: str
) -> None:
    ctr, url = served
    sizes = [int(json.loads(podman("image", "inspect", i))[0]["Size"]) for i in (image, monitoring_image)]  # fmt: skip
    print(f"monitoring image {monitoring_image}: {sizes[1] / 1e6:.0f} MB, +{(sizes[1] - sizes[0]) / 1e6:.0f} MB")  # fmt: skip
    assert sizes[1] - sizes[0] <= MAX_MONITORING_EXTRA_BYTES
    assert (
        json.loads(podman("image", "inspect", monitoring_image))[0]["Config"]["User"] == "bentoml"
    )
    tools = podman("run", "--rm", "--entrypoint", "sh", monitoring_image, "-c", COMPILERS)
    assert tools.strip() == "", f"compilers in the image: {tools}"
    logged = inference_rows(url)
    hr = token(ctr, "hr")
    rows = employee_rows(230)
    r = httpx.post(f"{ctr.url}/predict/attrition/batch", json={"employees": rows[:200]},
                   headers=hr, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    ids = []
    for row in rows[200:]:
        r = httpx.post(f"{ctr.url}/predict/attrition", json=row, headers=hr, timeout=30)
        assert r.status_code == 200, r.text
        ids.append(r.json()["request_id"])
    wait_for_rows(url, logged + 230)
    outcomes = [{"inference_id": i, "outcome": "left" if n % 3 == 0 else "stayed",
                 "observed_at": datetime.now(UTC).isoformat()} for n, i in enumerate(ids)]  # fmt: skip
    r = httpx.post(f"{ctr.url}/outcomes", json={"outcomes": outcomes}, headers=hr, timeout=30)
    assert r.status_code == 201, r.text
    # The CronJob reports the previous UTC day (--days 1): move the log to that day's noon.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=1)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        partitions.ensure(conn, [partitions.month_of(since)])
        first = "(SELECT min(created_at) FROM inferences)"
        conn.execute(
            f"UPDATE inferences SET created_at = %s + (created_at - {first})",
            (since + timedelta(hours=12),),
        )

    docs = rendered("dev")
    (job,) = [d for d in docs if d["kind"] == "CronJob"]
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    secret = {"ATTRITION_DATABASE_URL": url, "ATTRITION_JWT_SECRET": TEST_SECRET}
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    options, args = as_podman_run(spec, config_maps, secret)
    started = time.monotonic()
    out = podman("run", "--rm", "--network", "host", *options, monitoring_image, *args)
    print(f"monitoring CronJob's command in {time.monotonic() - started:.1f}s: {out.strip()}")

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        stored = conn.execute("SELECT model_tag, summary FROM monitoring_reports").fetchall()
    [(tag, summary)] = stored
    assert tag == model_tag
    assert summary["window"] == {"since": since.isoformat(), "until": today.isoformat()}
    assert summary["rows"] == logged + 230 and summary["performance"]["n_outcomes"] == 30
    r = httpx.get(f"{ctr.url}/monitoring/latest", headers=token(ctr, "admin"), timeout=30)
    assert r.status_code == 200 and r.json()["summary"] == summary
