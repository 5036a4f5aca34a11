"""`podman kube play` of the rendered dev overlay: entry, model and PostgreSQL pods; a user, a
token, a prediction and its inference-log row, with the shadow score of the challenger the image
carries; after `podman kube down` the database's volume and every row are still there."""

import base64
import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from tests.harness import free_port
from tests.helpers import employee_rows, rendered
from tests.integration.containers import podman

pytestmark = pytest.mark.integration

Doc = dict[str, Any]
SERVICE_IMAGE = "localhost/attrition-service"
POSTGRES_IMAGE = "localhost/attrition-postgres"
PASSWORD = "kube-play-password"
READY_SECONDS = 600  # three pods starting on a loaded 2-core machine


@dataclass
class Playable:
    """The rendered overlay made playable by podman 4.3 on a shared host, and what it creates.

    Each change works around something podman does differently from Kubernetes; everything
    else (Deployments, ConfigMaps, the PVC, securityContext, resources, volumes, the other
    probes, and the kinds podman ignores) is played as rendered.
    """

    docs: list[Doc]
    ports: dict[str, int] = field(default_factory=dict)  # Service name -> host port
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    pods: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def container(self, deployment: str, name: str) -> str:
        return next(f"{p}-{name}" for p in self.pods if p.startswith(f"{deployment}-"))

    def only(self, deployment: str) -> list[Doc]:
        """One Deployment and the ConfigMaps it may use, without the PVC (podman 4.3 refuses
        to play a claim whose volume exists)."""
        return [
            d
            for d in self.docs
            if d["kind"] == "ConfigMap"
            or (d["kind"] == "Deployment" and d["metadata"]["name"].startswith(deployment))
        ]


def for_podman(docs: list[Doc], images: dict[str, str], suffix: str) -> Playable:
    docs = copy.deepcopy(docs)
    play = Playable([d for d in docs if d["kind"] != "Secret"])
    # Pods, volumes and secrets are global on a podman host (no namespaces): a suffix of this
    # run's own, so a second run or another engineer's never meets them.
    renamed: dict[tuple[str, str], str] = {}
    for d in docs:
        if d["kind"] in ("Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim"):
            old = d["metadata"]["name"]
            d["metadata"]["name"] = renamed[d["kind"], old] = f"{old}-{suffix}"
    # No Service DNS in podman (CNI without a DNS plugin), and 4.3 ignores hostAliases with
    # host networking: every pod on the host's network, each Service's host:port in the
    # settings becomes 127.0.0.1 and a free port (the host is shared).
    moved: dict[int, int] = {}  # a Service's port (= its pods' containerPort) -> host port
    for d in docs:
        if d["kind"] == "Service":
            (port,) = d["spec"]["ports"]
            moved[port["port"]] = play.ports[d["metadata"]["name"]] = free_port()
            move = (f"{d['metadata']['name']}:{port['port']}", f"127.0.0.1:{moved[port['port']]}")
            for other in docs:
                if other["kind"] in ("ConfigMap", "Secret"):
                    values = other.get("data") or other.get("stringData") or {}
                    values.update({k: v.replace(*move) for k, v in values.items()})
    for d in docs:
        if d["kind"] == "Secret":
            # podman 4.3 stores a played Secret as YAML and reads it back as JSON for envFrom
            # ("not valid JSON", containers/podman#16269, fixed in 4.4): made beforehand in
            # the JSON form it reads (values base64), and left out of the play.
            play.secrets[d["metadata"]["name"]] = {
                k: base64.b64encode(v.encode()).decode() for k, v in d["stringData"].items()
            }
        elif d["kind"] == "PersistentVolumeClaim":
            play.volumes.append(d["metadata"]["name"])
        elif d["kind"] == "Deployment":
            name = d["metadata"]["name"]
            play.pods += [f"{name}-pod-{i}" for i in range(d["spec"].get("replicas", 1))]
            pod_for_podman(name, d["spec"]["template"]["spec"], play, renamed, moved, images)
    return play


def pod_for_podman(
    deployment: str,
    spec: Doc,
    play: Playable,
    renamed: dict[tuple[str, str], str],
    moved: dict[int, int],
    images: dict[str, str],
) -> None:
    spec["hostNetwork"] = True
    # podman 4.3 turns an emptyDir into a volume named after it, shared by every pod that uses
    # the name (entry and model would share one BentoML home, whose Prometheus directory each
    # server wipes at start): one per pod.
    local = {}
    for v in spec["volumes"]:
        if "emptyDir" in v:
            local[v["name"]] = v["name"] = f"{deployment}-{v['name']}"
            play.volumes.append(v["name"])
        elif "configMap" in v:
            v["configMap"]["name"] = renamed["ConfigMap", v["configMap"]["name"]]
            play.volumes.append(v["configMap"]["name"])  # podman keeps it as a volume
        elif "persistentVolumeClaim" in v:
            claim = v["persistentVolumeClaim"]
            claim["claimName"] = renamed["PersistentVolumeClaim", claim["claimName"]]
    for c in spec["containers"]:
        c["image"] = images.get(c["image"].split(":")[0], c["image"])
        for mount in c.get("volumeMounts", []):
            mount["name"] = local.get(mount["name"], mount["name"])
        for ref in c.get("envFrom", []):
            kind, key = ("ConfigMap", "configMapRef") if "configMapRef" in ref else ("Secret", "secretRef")  # fmt: skip
            ref[key]["name"] = renamed[kind, ref[key]["name"]]
        # podman runs a liveness probe as a healthcheck that restarts the container when it
        # fails (where systemd runs healthchecks), an httpGet one as `curl` inside the image
        # (ours has none) on a named port read as 0: it would always fail.
        if "httpGet" in c.get("livenessProbe", {}):
            del c["livenessProbe"]
        # Each server listens where its manifest says (env, args, exec probes); 4.3 publishes
        # every containerPort as a host port, which host networking refuses.
        for port in c.pop("ports", []):
            token = re.compile(rf"(?<!\d){port['containerPort']}(?!\d)")
            new = str(moved[port["containerPort"]])
            for env in c.get("env", []):
                if "value" in env:
                    env["value"] = token.sub(new, env["value"])
            for key in ("command", "args"):
                if key in c:
                    c[key] = [token.sub(new, a) for a in c[key]]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in c.get(probe, {}):
                    cmd = c[probe]["exec"]["command"]
                    c[probe]["exec"]["command"] = [token.sub(new, a) for a in cmd]


def write(docs: list[Doc], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def wait_until(check: Any, what: str, seconds: float = READY_SECONDS) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if check():
                return time.monotonic() - started
        except (httpx.HTTPError, psycopg.OperationalError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {seconds}s")


def logged(url: str, request_id: str) -> int:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM inferences WHERE id = %s", (request_id,)
        ).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def played(image: str, postgres_image: str, tmp_path: Path) -> Iterator[Playable]:
    images = {SERVICE_IMAGE: image, POSTGRES_IMAGE: postgres_image}
    play = for_podman(rendered("dev"), images, uuid.uuid4().hex[:6])
    try:
        for name, data in play.secrets.items():
            podman("secret", "create", name, "-", input=json.dumps(data))
        yield play
    finally:
        for pod in play.pods:
            podman("pod", "rm", "-f", "-t", "0", "--ignore", pod)
        for volume in dict.fromkeys(play.volumes):
            podman("volume", "rm", "-f", volume, check=False)
        for name in play.secrets:
            podman("secret", "rm", name)


def test_kube_play_of_the_dev_overlay_serves_logs_and_keeps_its_rows(
    played: Playable, challenger: str, tmp_path: Path
) -> None:
    manifest = write(played.docs, tmp_path / "dev.yaml")
    started = time.monotonic()
    podman("kube", "play", str(manifest))
    # Only Deployments become pods: the migration Job, the monitoring CronJob, Services, HPAs,
    # PDBs, NetworkPolicy are skipped (the dev overlay migrates in the entry's on-deployment
    # hook instead; test_container.py runs the CronJob's command).
    names = set(podman("pod", "ps", "--format", "{{.Name}}").split())
    assert set(played.pods) <= names, names
    assert not {n for n in names if "migrate" in n or "monitoring" in n}

    entry = f"http://127.0.0.1:{played.ports['attrition-entry']}"
    db = f"postgresql://attrition@127.0.0.1:{played.ports['attrition-postgres']}/attrition"
    wait_until(lambda: httpx.get(f"{entry}/readyz", timeout=3).status_code == 200, "/readyz")
    print(f"kube play to entry /readyz: {time.monotonic() - started:.0f}s")

    # securityContext and resources reach the containers (podman's own checks, not a kubelet's).
    ctr = played.container("attrition-entry", "entry")
    (info,) = json.loads(podman("inspect", ctr))
    assert info["Config"]["User"] == "1034:1034"
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["Memory"] == 2 * 1024**3
    assert info["HostConfig"]["CapDrop"] and not info["HostConfig"]["CapAdd"]

    # A user through the image's CLI, with the database URL the pod got from the Secret.
    podman("exec", "-i", "-w", "/home/bentoml/bento/src", ctr, "python", "-m", "auth", "create-user", "kube", "--role", "predict", "--password-stdin", input=PASSWORD + "\n")  # fmt: skip
    r = httpx.post(f"{entry}/auth/token", data={"username": "kube", "password": PASSWORD}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = httpx.post(f"{entry}/predict/attrition", json=employee_rows(1)[0], headers=headers, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    request_id = r.json()["request_id"]
    wait_until(lambda: logged(db, request_id) == 1, "the inference-log row", 60)
    # Scored by both models in the model pod, from the image's settings alone (no ConfigMap entry).
    with psycopg.connect(db) as conn:
        shadow = conn.execute("SELECT challenger_tag FROM inferences WHERE id = %s", (request_id,))
        assert shadow.fetchone() == (challenger,)

    started = time.monotonic()
    podman("kube", "down", str(manifest))
    print(f"podman kube down: {time.monotonic() - started:.1f}s")
    assert not set(played.pods) & set(podman("pod", "ps", "--format", "{{.Name}}").split())
    # The claim's volume outlives the pods; the database comes back on it with every row.
    (claim,) = [v for v in played.volumes if v.startswith("attrition-postgres-data")]
    assert claim in podman("volume", "ls", "-q").split()
    again = write(played.only("attrition-postgres"), tmp_path / "postgres.yaml")
    podman("kube", "play", str(again))
    wait_until(lambda: logged(db, request_id) == 1, "the row after kube down")
    podman("kube", "down", str(again))
