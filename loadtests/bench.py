"""Side-by-side benchmark with wrk: start each scenario's real server, load it, print a table of
throughput and latency, and where the CPU went per request, by process group.

python -m loadtests.bench --scenarios full,noop,ray-1,ray-2 --concurrency 1,16,64 --duration 15
python -m loadtests.bench --scenarios full --baseline main --batch-seconds 60   # before/after
python -m loadtests.bench --scenarios floor,ray-2tier --concurrency 1,16 --duration 3 --warmup 1
python -m loadtests.bench --scenarios full,challenger --concurrency 64 --passes 2   # shadow cost

The ray-* scenarios need the `bench` extra (`make bench` installs it). Before a peer (or the
inline placement) is timed, its answers are checked against the service's on the same employees.
The challenger scenario needs a challenger in the store (`python -m training --challenger ...`).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from loadtests.cpu import Classifier, CpuMeter, Seen
from tests.harness import (
    PROJECT_DIR,
    Server,
    ServerProcess,
    auth_cli,
    database_cpu,
    inference_rows,
    split_topology,
    temporary_database,
)
from tests.otlp_receiver import otlp_receiver

SECRET = "bench-secret-" + "b" * 40
LUA = PROJECT_DIR / "loadtests" / "wrk" / "predict.lua"
REPORTS = PROJECT_DIR / "reports"


@dataclass
class Scenario:
    name: str
    description: str
    env: dict[str, str] = field(default_factory=dict)
    target: str = "service:AttritionService"
    path: str = "/predict/attrition"
    auth: bool = True
    ray_replicas: int = 0
    """Not a BentoML server but a Ray Serve peer (loadtests/ray_peer.py) with this many replicas
    (of its ingress deployment, with 2 tiers)."""
    ray_tiers: int = 1
    """2: the peer of the service's shape (token check and validation, then a model deployment)."""
    floor: bool = False
    """Not a BentoML server but the floor (loadtests/floor.py): bare ASGI on uvicorn, no model."""
    split: bool = False
    """The model service on a server of its own, the entry calling it by URL (split topology)."""
    otlp_sink: bool = False
    """Tracing on, every span exported to a local OTLP receiver that drops it."""
    checked: bool = False
    """Its answers are checked against the service's (1e-6) before it is timed."""
    challenger: bool = False
    """A challenger in shadow (--challenger): every batch scored by both models."""


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("full", "full service: auth, adaptive batching (placement service)"),
        Scenario(
            "inline",
            "full service, placement inline: each entry worker scores its coalesced batches "
            "on its own ONNX Runtime session (no model service, no hop)",
            {"ATTRITION_MODEL_PLACEMENT": "inline"},
            checked=True,
        ),
        Scenario(
            "challenger",
            "full service with a challenger in shadow (scored in the same batch, recorded)",
            challenger=True,
        ),
        Scenario(
            "inline-challenger",
            "inline, with a challenger in shadow (scored in the same batch, recorded)",
            {"ATTRITION_MODEL_PLACEMENT": "inline"},
            challenger=True,
        ),
        Scenario(
            "split",
            "same, the model service on a server of its own, called by URL (split topology)",
            split=True,
        ),
        Scenario(
            "nobatch",
            "same, adaptive batching off",
            {"ATTRITION_RUNNER_BATCHING": "false"},
        ),
        Scenario(
            "noop",
            "no-op endpoint, same BentoML setup, auth and validation (the ceiling)",
            target="loadtests.noop_service:NoopService",
        ),
        Scenario(
            "full-sklearn",
            "full service scoring with scikit-learn instead of ONNX Runtime",
            {"ATTRITION_RUNNER_BACKEND": "sklearn"},
        ),
        Scenario(
            "nobatch-sklearn",
            "scikit-learn, batching off",
            {"ATTRITION_RUNNER_BACKEND": "sklearn", "ATTRITION_RUNNER_BATCHING": "false"},
        ),
        Scenario(
            "explain",
            "full service, every prediction with its top 5 risk drivers (?explain=true)",
            path="/predict/attrition?explain=true",
        ),
        Scenario(
            "fsync",
            "full service, each answer waits for its record's fdatasync (group fsync)",
            {"ATTRITION_LOG_FSYNC": "true"},
        ),
        Scenario(
            "tracing",
            "full service, OpenTelemetry tracing on: every trace exported over OTLP/HTTP to a "
            "local receiver (the fast path steps aside)",
            {"OTEL_TRACES_EXPORTER": "otlp"},
            otlp_sink=True,
        ),
        Scenario(
            "tracing-10",
            "same, a tenth of the traces kept (parentbased_traceidratio 0.1)",
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.1",
            },
            otlp_sink=True,
        ),
        Scenario(
            "fullstack",
            "full service without the fast path (what tracing costs besides its spans)",
            {"ATTRITION_FAST_PATH": "off"},
        ),
        Scenario(
            "noauth",
            "same, auth middleware off (dev mode)",
            {"ATTRITION_DEV_MODE": "true", "ATTRITION_AUTH_ENABLED": "false"},
            auth=False,
        ),
        Scenario(
            "nolog",
            "same, inference log off (dev mode)",
            {"ATTRITION_DEV_MODE": "true", "ATTRITION_LOG_ENABLED": "false"},
        ),
        *(
            Scenario(
                f"ray-{n}",
                f"peer: Ray Serve throughput-optimized + HAProxy, ONNX, {n} replica(s); "
                "no auth, validation or log",
                auth=False,
                ray_replicas=n,
                checked=True,
            )
            for n in (1, 2)
        ),
        Scenario(
            "ray-2tier",
            "peer of the service's shape: Ray Serve throughput-optimized + HAProxy, ingress "
            "(JWT, EmployeeInput) x2 -> handle (gRPC) -> model (@serve.batch, ONNX) x1; no log",
            ray_replicas=2,  # the service's entry workers and model worker (configuration.yaml)
            ray_tiers=2,
            checked=True,
        ),
        Scenario(
            "floor",
            "floor: bare ASGI on uvicorn (httptools, uvloop), parses the JSON, answers a constant",
            auth=False,
            floor=True,
        ),
    ]
}
# Issue 20's table: both placements, both Ray Serve shapes, the floor.
DEFAULT_SCENARIOS = "full,inline,ray-1,ray-2,ray-2tier,floor"
# Each placement and its peers: the Ray shape it is measured against (the best of them per cell).
GOALS = {"full": ("ray-2tier",), "inline": ("ray-1", "ray-2")}
# The scenarios whose batch route --batch-seconds also loads.
BATCHED = ("full", "inline")


def write_bodies(path: Path, batch: int = 0) -> None:
    """One request body per line: single employees, or batches of `batch` employees."""
    from training.data import load_reference
    from training.schema import FEATURES

    rows = load_reference()[list(FEATURES)].to_dict("records")
    if not batch:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return
    bodies = [
        json.dumps({"employees": [rows[(start + i) % len(rows)] for i in range(batch)]})
        for start in range(0, len(rows), 97)
    ]
    path.write_text("\n".join(bodies) + "\n")


def batch_throughput(
    server: Server, bodies: Path, token: str, url: str, seconds: int
) -> dict[str, float]:
    """Employees/s through the batch route, and rows/s the log sustains into the database."""
    before = inference_rows(url)
    cpu, pg = server.cpu_seconds(), database_cpu(url)
    started = time.monotonic()
    samples: list[float] = []
    sampler = threading.Thread(target=sample_backlog, args=(server, url, before, seconds, samples))
    sampler.start()
    r = wrk(server.url, "/predict/attrition/batch", bodies, token, 4, seconds)
    sampler.join()
    employees = (r["requests"] - r["non2xx"]) * 1000
    target = before + employees
    while inference_rows(url) < target and time.monotonic() - started < seconds + 120:
        time.sleep(0.2)
    drained = time.monotonic() - started
    written = inference_rows(url) - before
    return {
        **r,
        "employees_per_s": employees / r["seconds"],
        "log_rows": written,
        "log_rows_per_s": written / drained,
        "lag_s": drained - r["seconds"],
        "service_cpu_us": 1e6 * (server.cpu_seconds() - cpu) / max(employees, 1),
        "pg_cpu_us": 1e6 * (database_cpu(url) - pg) / max(written, 1),
        "backlog_half": samples[len(samples) // 2] if samples else float("nan"),
        "backlog_end": samples[-1] if samples else float("nan"),
    }


def answered_batches(url: str) -> float:
    """Batch requests the server has answered 200 so far (BentoML's own request counter)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bentoml_service_request_total{")
        and 'endpoint="/predict/attrition/batch"' in line
        and 'http_response_code="200"' in line
    )


def sample_backlog(server: Server, db: str, before: int, seconds: int, out: list[float]) -> None:
    """Every 5 s while the load runs: employees answered minus rows in the table, i.e. whether
    the log's backlog grows or holds (works for any version, whatever its own metrics)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline - 1:
        time.sleep(min(5.0, max(deadline - 1 - time.monotonic(), 0)))
        try:
            answered = answered_batches(server.url) * 1000
        except httpx.HTTPError:
            continue
        out.append(answered - (inference_rows(db) - before))


def mint_token(env: dict[str, str], cwd: Path = PROJECT_DIR) -> str:
    """Create the bench user in the scenario's database (once) and mint a token for it."""
    out = auth_cli(env, "token", "bench", "--ttl", "2h", cwd=cwd)
    if out.returncode != 0:
        made = auth_cli(
            env, "create-user", "bench", "--role", "admin", "--password-stdin",
            stdin="bench-password-123\n", cwd=cwd,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"cannot create the bench user: {made.stderr[-1500:]}")
        out = auth_cli(env, "token", "bench", "--ttl", "2h", cwd=cwd)
    if out.returncode != 0:
        raise RuntimeError(f"cannot mint a bench token: {out.stderr[-1500:]}")
    return out.stdout.strip().splitlines()[-1]


CHECKED_ROWS = 200
TOLERANCE = 1e-6


def answers(url: str, rows: list[dict[str, Any]], token: str = "") -> list[float]:
    """The probability a server answers for each employee, one request each, in order."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        found = []
        for row in rows:
            response = client.post("/predict/attrition", json=row)
            response.raise_for_status()
            found.append(float(response.json()["probability"]))
        return found


def mismatches(
    expected: list[float], got: list[float], tolerance: float = TOLERANCE
) -> list[tuple[int, float, float]]:
    """(row, expected, got) wherever the two differ by more than `tolerance`; a missing answer
    counts as a difference."""
    wrong = [
        (i, e, g)
        for i, (e, g) in enumerate(zip(expected, got, strict=False))
        if abs(e - g) > tolerance
    ]
    if len(expected) != len(got):
        wrong.append((min(len(expected), len(got)), float("nan"), float("nan")))
    return wrong


def service_answers(
    args: argparse.Namespace, work: Path, model_tag: str, rows: list[dict[str, Any]]
) -> list[float]:
    """This checkout's service's answers for `rows`, from a server started for them alone."""
    with scenario_database(args) as url:
        env = {
            "ATTRITION_JWT_SECRET": SECRET,
            "ATTRITION_DATA_DIR": str(work / "data-reference"),
            "ATTRITION_MODEL_TAG": model_tag,
            "ATTRITION_DATABASE_URL": url,
        }
        token = mint_token(env)
        server = Server("service:AttritionService", env, log=work / "reference.log")
        try:
            return answers(server.url, rows, token)
        finally:
            server.stop()


RESULT = re.compile(r"RESULT (.*)")
WRK = "wrk"
DRIVER = "driver"
REST = "rest"
# Process groups of the CPU table (short names: the table is wide), in the order shown.
GROUPS = {
    "entry": "BentoML entry workers (AttritionService: HTTP, auth, validation, coalescer, log writer thread)",
    "model": "BentoML model service worker (AttritionModel: runner HTTP, batching dispatcher, ONNX)",
    "arbiter": "the `bentoml serve` process that supervises the workers",
    "pg:db": "PostgreSQL backends connected to this run's database",
    "pg:server": "PostgreSQL's own processes (postmaster, checkpointer, WAL writer...)",
    "pg:exited": "PostgreSQL backends that exited during the run: this database's, and any too short-lived to be sampled (those may be another database's)",
    "ray:replicas": "Ray Serve replicas (direct HTTP ingress, @serve.batch, ONNX)",
    "ray:ingress": "2-tier peer's ingress replicas (direct HTTP ingress, JWT, validation, handle)",
    "ray:model": "2-tier peer's model replicas (@serve.batch, ONNX)",
    "ray:haproxy": "HAProxy in front of the replicas",
    "ray:actors": "Ray Serve controller, proxy and HAProxy manager actors",
    "ray:core": "raylet and GCS server",
    "ray:other": "Ray driver, agents and monitors",
    WRK: "the load generator",
    DRIVER: "this bench process (the CPU sampler)",
    "floor": "the floor's uvicorn process",
    REST: "everything else on the machine (other users), in cores kept busy",
}


def wrk(
    url: str,
    path: str,
    bodies: Path,
    token: str,
    connections: int,
    seconds: int,
    classifier: Classifier | None = None,
) -> dict[str, float]:
    """One wrk run; with a classifier, also CPU seconds per process group ("cpu:<group>")."""
    env = {**os.environ, "BODIES": str(bodies), "TOKEN": token, "WRK_PATH": path}
    threads = str(min(2, connections))
    cmd = [
        "wrk",
        "-t",
        threads,
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    meter = CpuMeter(classifier or Classifier())
    started = time.monotonic()
    with meter.measure():
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - started
    match = RESULT.search(out)
    if not match:
        raise RuntimeError(f"no RESULT line from wrk:\n{out}")
    result = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    if classifier is not None:
        result["cpu_wall_s"] = wall
        result.update({f"cpu:{group}": seconds for group, seconds in meter.groups.items()})
    return result


def bentoml_group(seen: Seen) -> str:
    cmd = seen.cmdline
    if "--service-name" in cmd[:-1]:
        service = cmd[cmd.index("--service-name") + 1]
        return {"AttritionService": "entry", "AttritionModel": "model"}.get(service, service)
    return "arbiter"


def ray_group(seen: Seen) -> str:
    """Ray's processes by role (Ray names its workers' processes after the actor they host)."""
    title = " ".join(seen.cmdline)
    if seen.name == "haproxy":
        return "ray:haproxy"
    if "AttritionIngressPeer" in title:  # ray::ServeReplica:<app>:<deployment>
        return "ray:ingress"
    if "AttritionModelPeer" in title:
        return "ray:model"
    if "ServeReplica" in title:
        return "ray:replicas"
    if any(k in title for k in ("ServeController", "ProxyActor", "HAProxyManager")):
        return "ray:actors"
    if seen.name in ("raylet", "gcs_server"):
        return "ray:core"
    return "ray:other"


POSTGRES_BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "archiver",
    "stats collector",
)


def postgres_matcher(database: str | None) -> Any:
    """PostgreSQL processes: this run's database's backends, and the server's own processes.

    Other databases' backends (other users of the shared server) stay in the rest.
    """

    def match(pid: int, seen: Seen) -> str | None:
        if seen.name not in ("postgres", "postmaster"):
            return None
        title = " ".join(seen.cmdline)
        if database and database in title.split():
            return "pg:db"
        if "-D" in seen.cmdline or title.rstrip().endswith(POSTGRES_BACKGROUND):
            return "pg:server"
        return None

    return match


def postmaster() -> int | None:
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] in ("postgres", "postmaster") and "-D" in (p.info["cmdline"] or []):
            return p.pid
    return None


def server_group(sc: Scenario) -> Any:
    """How the processes of the scenario's servers are grouped."""
    if sc.ray_replicas:
        return ray_group
    if sc.floor:
        return lambda seen: "floor"
    return bentoml_group


def classifier_for(servers: list[ServerProcess], database: str | None, group: Any) -> Classifier:
    """Who is who during one wrk run of this scenario (`servers`: the one it calls first)."""
    me = os.getpid()
    reapers = {me: WRK}  # wrk is this process's only child that exits during the run
    pm = postmaster()
    if pm is not None:
        # Backends that exit during the run (any database's: they cannot be told apart once
        # gone) are counted from the postmaster's reaped-children time.
        reapers[pm] = "pg:exited"
    return Classifier(
        # The server's tree is looked up first (it is also this process's child).
        roots={
            **{s.proc.pid: group for s in servers},
            me: lambda seen: WRK if seen.name == "wrk" else DRIVER,
        },
        matchers=[postgres_matcher(database)],
        reapers=reapers,
        rest=REST,
    )


def start(
    name: str,
    sc: Scenario,
    env: dict[str, str],
    work: Path,
    cwd: Path,
    sample: bytes,
    model_tag: str,
    token: str,
    stack: ExitStack,
) -> list[ServerProcess]:
    """The scenario's servers (from the checkout in `cwd`), the one wrk calls first; `stack`
    stops them."""
    if sc.split:
        model, entries = stack.enter_context(split_topology(env, work / name))
        return [*entries, model]
    server: ServerProcess
    if sc.ray_replicas:
        from loadtests.ray_peer import RayPeer

        server = RayPeer(
            replicas=sc.ray_replicas,
            tiers=sc.ray_tiers,
            model_tag=model_tag,
            sample=sample,
            log=work / f"{name}.log",
            env=env,
            token=token,
        )
    elif sc.floor:
        from loadtests.floor import FloorServer

        server = FloorServer(sample=sample, log=work / f"{name}.log", env=dict(os.environ))
    else:
        server = Server(sc.target, env, log=work / f"{name}.log", cwd=cwd)
    stack.callback(server.stop)
    return [server]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    parser.add_argument(
        "--scenarios", default=DEFAULT_SCENARIOS, help=f"from {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="run the scenario list this many times; on a shared machine compare within a pass",
    )
    parser.add_argument(
        "--database-url", help="default: a fresh PostgreSQL database for each scenario"
    )
    parser.add_argument(
        "--batch-seconds",
        type=int,
        default=0,
        help=f"also load the batch route ({', '.join(BATCHED)})",
    )
    parser.add_argument(
        "--baseline",
        help="also run each scenario from this git revision (e.g. main), just before this one",
    )
    parser.add_argument(
        "--challenger",
        default="attrition-challenger:latest",
        help="the challenger scenario's shadow model (default: the newest saved challenger)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed (Debian package 'wrk'; `make bench` installs it)", file=sys.stderr
        )
        return 2
    return run(args)


def challenger_tag(args: argparse.Namespace) -> str:
    """The challenger scenario's model, resolved in the store (a clear error when it is not)."""
    import bentoml

    try:
        return str(bentoml.models.get(args.challenger).tag)
    except bentoml.exceptions.NotFound:
        raise SystemExit(
            f"no {args.challenger} in the model store: save one with "
            "`python -m training --exclude-protected --no-compare --challenger`"
        ) from None


@contextmanager
def scenario_database(args: argparse.Namespace) -> Iterator[str]:
    """The given database, or a fresh one for this scenario (so no table carries over)."""
    if args.database_url:
        yield args.database_url
        return
    with temporary_database("attrition_bench") as url:
        yield url


def checkout(revision: str, work: Path) -> Path:
    """The files of a git revision, unpacked in work (the servers run from there)."""
    target = work / f"checkout-{revision.replace('/', '_')}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_DIR), "archive", revision], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


@dataclass(frozen=True)
class BeforeAfter:
    """What a before/after measurement runs: the served model, the reference rows to send, a
    work folder, and the checkouts to serve from (the baseline's first, then this one)."""

    model_tag: str
    rows: list[dict[str, Any]]
    work: Path
    versions: list[tuple[str, Path]]


def before_and_after(baseline: str | None, prefix: str) -> BeforeAfter:
    import bentoml

    from settings import get_settings
    from training.data import load_reference
    from training.schema import FEATURES

    model_tag = str(bentoml.models.get(get_settings().model_tag).tag)
    rows = load_reference()[list(FEATURES)].to_dict("records")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    versions = [("this checkout", PROJECT_DIR)]
    if baseline:
        versions.insert(0, (baseline, checkout(baseline, work)))
    return BeforeAfter(model_tag, rows, work, versions)


def run(args: argparse.Namespace) -> int:
    """Every scenario's server in turn, measured with the same wrk settings."""
    import bentoml

    from settings import get_settings

    work = Path(tempfile.mkdtemp(prefix="attrition-bench-"))
    bodies = work / "bodies.jsonl"
    write_bodies(bodies)
    batch_bodies = work / "batches.jsonl"
    write_bodies(batch_bodies, batch=1000)
    sample = bodies.read_bytes().split(b"\n", 1)[0]
    # The employees every peer is checked on before it is timed, and the service's answers.
    checked = [json.loads(line) for line in bodies.read_text().splitlines()[:CHECKED_ROWS]]
    reference: list[float] | None = None
    # Every scenario, the peer included, serves this one model (and so the same ONNX export).
    model_tag = str(bentoml.models.get(get_settings().model_tag).tag)
    versions = [("", PROJECT_DIR)]
    if args.baseline:  # the baseline first, then this checkout, scenario by scenario
        versions.insert(0, (f"@{args.baseline}", checkout(args.baseline, work)))
    batch_rows: list[tuple[str, dict[str, float]]] = []
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[tuple[str, int, dict[str, float]]] = []
    failed: list[str] = []
    for number in range(1, args.passes + 1):
        for scenario in args.scenarios.split(","):
            for suffix, cwd in versions:
                name = scenario + suffix
                sc = SCENARIOS[scenario]
                with scenario_database(args) as url, ExitStack() as stack:
                    env = {
                        "ATTRITION_JWT_SECRET": SECRET,
                        "ATTRITION_DATA_DIR": str(work / f"data-{name}-{number}"),
                        "ATTRITION_MODEL_TAG": model_tag,
                        "ATTRITION_DATABASE_URL": url,
                        **sc.env,
                    }
                    if sc.challenger:
                        env["ATTRITION_CHALLENGER_TAG"] = challenger_tag(args)
                    if sc.otlp_sink:
                        sink = stack.enter_context(otlp_receiver(keep=False))
                        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url
                    token = mint_token(env, cwd) if sc.auth else ""
                    try:
                        servers = start(name, sc, env, work, cwd, sample, model_tag, token, stack)
                    except RuntimeError as exc:  # report it, keep the other scenarios' numbers
                        failed.append(name)
                        print(f"{name}: did not start: {str(exc)[-3000:]}", file=sys.stderr)
                        continue
                    server = servers[0]
                    if sc.checked:
                        if reference is None:
                            reference = service_answers(args, work, model_tag, checked)
                        wrong = mismatches(reference, answers(server.url, checked, token))
                        if wrong:
                            failed.append(name)
                            print(
                                f"{name}: answers differ from the service's: {wrong[:5]}",
                                file=sys.stderr,
                            )
                            continue
                        print(
                            f"{name}: {len(checked)} answers equal the service's within {TOLERANCE}",
                            file=sys.stderr,
                        )
                    database = url.rsplit("/", 1)[-1].split("?")[0]
                    classifier = classifier_for(servers, database, server_group(sc))
                    wrk(server.url, sc.path, bodies, token, 16, args.warmup)
                    for c in levels:
                        result = wrk(
                            server.url, sc.path, bodies, token, c, args.duration, classifier
                        )
                        result["pass"] = number
                        rows.append((name, c, result))
                        print(f"{name:>8} c={c:<3} {result}", file=sys.stderr, flush=True)
                        time.sleep(1)
                    if args.batch_seconds and scenario in BATCHED and isinstance(server, Server):
                        b = batch_throughput(server, batch_bodies, token, url, args.batch_seconds)
                        batch_rows.append((name if args.passes == 1 else f"{name} #{number}", b))
                        print(f"{name:>8} batch {b}", file=sys.stderr, flush=True)
    table = "\n\n".join(
        t
        for t in (render(rows, args), render_goal(rows), render_cpu(rows), render_floor(rows))
        if t
    ) + render_batch(batch_rows)
    print(table)
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (REPORTS / f"bench-{stamp}.md").write_text(table + "\n")
    raw = {"model_tag": model_tag, "duration_s": args.duration, "rows": rows, "batch": batch_rows}
    (REPORTS / f"bench-{stamp}.json").write_text(json.dumps(raw, indent=1) + "\n")
    if failed:
        print(f"did not start or answered wrong: {', '.join(failed)} (see above)", file=sys.stderr)
        return 1
    return 0


def render(rows: list[tuple[str, int, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"wrk, {args.duration}s per cell, real employees from the dataset, {os.cpu_count()} cores",
        "",
        "| scenario | clients | requests/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (_, c, r) in zip(labels(rows), rows, strict=True):
        lines.append(
            f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['non2xx']:.0f} | {r['socket_errors']:.0f} |"
        )
    return "\n".join(lines)


def labels(rows: list[tuple[str, int, dict[str, float]]]) -> list[str]:
    """Scenario names, with the pass ("full #2") when the run made several."""
    several = any(r.get("pass", 1) > 1 for _, _, r in rows)
    return [f"{name} #{r['pass']:.0f}" if several else name for name, _, r in rows]


def render_goal(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    """Issue 20's goals in this run's ratios: each placement against the best of its Ray Serve
    shape (GOALS) in the same pass (on a shared machine, minutes apart can differ more than the
    servers do)."""
    cells = {(r.get("pass", 1), name, c): r for name, c, r in rows}
    passes = sorted({p for p, _, _ in cells})
    lines = [
        "Each placement against the best Ray Serve configuration of its shape at each client "
        "count, within each pass (goal: requests/s >= 1 and p99 <= 1 at 16 and 64 clients, "
        "p50 <= 1 at 1 client):",
        "",
        "| pass | placement | clients | best Ray | requests/s ratio | p50 ratio | p99 ratio |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    found = False
    for number in passes:
        for placement, peers in GOALS.items():
            for c in sorted({c for p, name, c in cells if p == number and name == placement}):
                candidates = [p for p in peers if (number, p, c) in cells]
                if not candidates:
                    continue
                best = max(candidates, key=lambda p: cells[(number, p, c)]["rps"])
                f, r = cells[(number, placement, c)], cells[(number, best, c)]
                found = True
                lines.append(
                    f"| {number} | {placement} | {c} | {best} | {f['rps'] / r['rps']:.2f} "
                    f"| {f['p50_ms'] / r['p50_ms']:.2f} | {f['p99_ms'] / r['p99_ms']:.2f} |"
                )
    return "\n".join(lines) if found else ""


def render_floor(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    """CPU per request of every server against the floor's in the same pass and client count:
    how far from the machine's limit each is (the driver and wrk left out)."""
    cells = {(r.get("pass", 1), name, c): r for name, c, r in rows}
    lines = [
        "CPU per request of the servers and PostgreSQL (wrk, the driver and the rest of the "
        "machine left out) against the floor (bare ASGI on uvicorn, no framework, no model, no "
        "log) in the same pass: ms, and how many times the floor's:",
        "",
        "| pass | clients | scenario | CPU ms/request | floor ms/request | x floor |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    found = False
    for (number, name, c), r in sorted(cells.items()):
        floor = cells.get((number, "floor", c))
        if floor is None or name == "floor":
            continue
        mine, base = server_cpu_ms(r), server_cpu_ms(floor)
        found = True
        lines.append(f"| {number} | {c} | {name} | {mine:.3f} | {base:.3f} | {mine / base:.1f} |")
    return "\n".join(lines) if found else ""


def server_cpu_ms(r: dict[str, float]) -> float:
    """ms of CPU per completed request of the servers and PostgreSQL: every group but the load
    generator, this process and the rest of the machine."""
    cpu = sum(v for k, v in r.items() if k.startswith("cpu:") and k[4:] not in (WRK, DRIVER, REST))
    return cpu * 1000 / (r["requests"] or 1)


def render_cpu(rows: list[tuple[str, int, dict[str, float]]]) -> str:
    """CPU milliseconds per completed request, by process group, over each wrk run."""
    found = {k[4:] for _, _, r in rows for k in r if k.startswith("cpu:")}
    shown = [g for g in GROUPS if g in found and g != REST]
    shown += sorted(found - set(GROUPS))  # a group this table does not know yet
    if not shown:
        return ""
    system = [g for g in shown if g != DRIVER]
    lines = [
        "CPU per request: ms of user+system CPU per completed request over each wrk run (psutil;",
        "processes that exit during the run are counted from their parent's reaped-children time).",
        "'total' adds every group but the driver and the rest of the machine.",
        "",
        "| scenario | clients | " + " | ".join(shown) + f" | total | {REST} (cores) |",
        "| --- | ---: |" + " ---: |" * (len(shown) + 2),
    ]
    for name, (_, c, r) in zip(labels(rows), rows, strict=True):
        done = r["requests"] or 1
        per = {g: r.get(f"cpu:{g}", 0.0) * 1000 / done for g in shown}
        rest_cores = r.get(f"cpu:{REST}", 0.0) / r["cpu_wall_s"]
        lines.append(
            f"| {name} | {c} | "
            + " | ".join(f"{per[g]:.3f}" for g in shown)
            + f" | {sum(per[g] for g in system):.3f} | {rest_cores:.2f} |"
        )
    lines += ["", *(f"- {g}: {GROUPS.get(g, g)}" for g in [*shown, REST])]
    return "\n".join(lines)


def render_batch(rows: list[tuple[str, dict[str, float]]]) -> str:
    if not rows:
        return ""
    lines = [
        "",
        "",
        "Batch route, 1,000 employees per request, 4 clients:",
        "",
        "| scenario | requests/s | employees/s | p50 ms | p99 ms | non-2xx | log rows written | log rows/s (until caught up) | log backlog halfway / at the end (records) | log lag after load s | service CPU us/employee | PostgreSQL CPU us/row |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['rps']:.1f} | {r['employees_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['non2xx']:.0f} | {r['log_rows']:.0f} | {r['log_rows_per_s']:.0f} "
            f"| {r['backlog_half']:.0f} / {r['backlog_end']:.0f} | {r['lag_s']:.1f} "
            f"| {r['service_cpu_us']:.0f} | {r['pg_cpu_us']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
