"""Where a request's CPU goes: py-spy on every worker of a real server under wrk, stacks sorted
into the stages of the request path, scaled by the CPU per request the bench measures.

python -m loadtests.profile --scenario full --concurrency 16,64 --duration 20

Needs the `bench` extra (py-spy). Writes the raw stacks (collapsed, flamegraph.pl input) and the
tables to reports/profile-<time>/.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from api.internals import IMPL_PACKAGE, SDK_PACKAGE
from loadtests.bench import (
    REPORTS,
    SCENARIOS,
    SECRET,
    classifier_for,
    mint_token,
    server_group,
    start,
    write_bodies,
    wrk,
)
from loadtests.cpu import Seen
from tests.harness import PROJECT_DIR, ServerProcess, temporary_database

PY_SPY = str(Path(sys.executable).with_name("py-spy"))

# Stage of a stack: its leaf-most frame that matches a rule, rules tried in this order. Generic
# frames (the event loop, numpy, the standard library) name the stage only when no frame of the
# stack matches a specific rule, so `await` in the coalescer stays the coalescer's.
SPECIFIC = [
    ("ONNX Runtime (and feeds)", r"onnxruntime/|onnx_export\.py"),
    # The fast path (api/fastpath.py) and the HTTP-layer patches (api/) are not auth.
    ("access log", r"_access_line \(api/fastpath\.py"),
    ("fast path: body read, dispatch, response", r"\(api/fastpath\.py"),
    ("HTTP server (uvicorn, httptools)", r"LimitedHttpToolsProtocol"),
    ("metrics (prometheus)", r"RouteLabel|restore \(api/route_metrics\.py"),
    ("auth: JWT, user cache", r"\((auth/|jwt/)"),
    ("request guard (415/413)", r"(RequestGuard|count_rejections|wrapped).* \(api/middleware\.py"),
    ("coalescer", r"Coalescer\.\w+ \(api/batching\.py"),
    ("feature matrix", r"feature_matrix \(training/schema\.py"),
    ("inference record + log submit", r"\(persistence/|_infer \(service\.py"),
    ("runner call: entry side (aiohttp client, serde)", rf"{IMPL_PACKAGE}/client/|aiohttp/"),
    ("batching dispatcher", r"marshal/dispatcher\.py"),
    ("serialization (BentoML serde, pickle)", rf"{IMPL_PACKAGE}/serde\.py|pickle"),
    ("pydantic: validation, JSON parse and dump", r"pydantic"),
    ("our endpoint code", r"\(service\.py|\(training/|\(loadtests/"),
    ("Ray Serve @serve.batch", r"ray/serve/batching\.py"),
    ("Ray Serve replica machinery (request wrapper, router, metrics)", r"ray/"),
    ("BentoML io models (from/to HTTP)", rf"{SDK_PACKAGE}/"),
    ("metrics (prometheus)", r"prometheus_client|instruments\.py|metrics"),
    ("access log", r"access\.py"),
    ("HTTP server (uvicorn, httptools)", r"uvicorn/|httptools"),
    ("starlette (routing, responses, background)", r"starlette/"),
    ("BentoML server glue (app, context, traffic)", r"bentoml"),
]
GENERIC = [
    ("event loop (asyncio, uvloop, anyio)", r"asyncio/|uvloop|anyio/|selectors\.py"),
    ("numpy", r"numpy/"),
    ("logging", r"logging/"),
]
STAGES = [(name, re.compile(pattern)) for name, pattern in SPECIFIC]
FALLBACKS = [(name, re.compile(pattern)) for name, pattern in GENERIC]
WRITER_THREAD = "inference-log"


# A sample whose leaf-most Python frame is a wait was not running Python: the loop runner is
# uvloop in epoll_pwait (py-spy --native on the model service under load: nearly all such
# samples), Connection.wait is psycopg waiting for PostgreSQL, Event/Condition.wait a sleeping
# thread, Worker.main_loop and Thread.run Ray's core worker and its replica's loop thread (both
# in native code). py-spy counts a thread as busy while it is runnable, and on a loaded machine a thread
# that was just woken spends long in the run queue still showing its wait: left out of shares.
WAITING = "waiting (epoll, PostgreSQL round trips, sleeps): left out of the shares"
WAIT_LEAF = re.compile(
    r"^(Runner\.run|run_until_complete|run_forever|Connection\.wait|Condition\.wait|Event\.wait"
    r"|sleep|select|poll|Worker\.main_loop|Thread\.run) \("
)


def stage(frames: list[str]) -> str:
    if frames and WAIT_LEAF.search(frames[-1]):
        return WAITING
    for rules in (STAGES, FALLBACKS):
        for frame in reversed(frames):
            for name, pattern in rules:
                if pattern.search(frame):
                    return name
    return "other"


def read_stacks(path: Path) -> Counter[str]:
    """Samples per stage, whatever the thread (Ray serves requests on a thread of its own), but
    the inference log's writer thread is a stage of its own."""
    counts: Counter[str] = Counter()
    if not path.exists():
        return counts
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        thread, name = frames[0], stage(frames[1:])
        if name != WAITING and WRITER_THREAD in thread:
            name = "log writer thread (COPY into PostgreSQL)"
        counts[name] += int(n)
    return counts


# The processes worth profiling: Python workers on the request path.
PROFILED = {"entry", "model", "ray:replicas", "ray:ingress", "ray:model", "floor"}


def workers(server: ServerProcess, group: Any) -> dict[str, list[int]]:
    """Worker pids by role, as the bench's CPU table groups them."""
    roles: dict[str, list[int]] = {}
    for p in server.processes():
        try:
            seen = Seen(ppid=p.ppid(), name=p.name(), cmdline=tuple(p.cmdline()), own=0, children=0)
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        role = group(seen)
        if role in PROFILED:
            roles.setdefault(role, []).append(p.pid)
    return roles


def render(
    role: str, counts: Counter[str], ms_per_request: float | None, clients: int, scenario: str
) -> str:
    waiting = counts.pop(WAITING, 0)
    total = sum(counts.values()) or 1
    head = (
        f"{scenario}, {clients} clients, {role}: {total} busy samples ({waiting} waiting left out)"
    )
    if ms_per_request is not None:
        head += f", {ms_per_request:.3f} ms CPU per request"
    lines = [head, "", "| stage | share | ms per request |", "| --- | ---: | ---: |"]
    for name, n in counts.most_common():
        ms = f"{n / total * ms_per_request:.3f}" if ms_per_request is not None else ""
        lines.append(f"| {name} | {100 * n / total:.1f} % | {ms} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.profile", description=__doc__)
    parser.add_argument("--scenario", default="full", help="a scenario of the bench")
    parser.add_argument("--concurrency", default="16,64")
    parser.add_argument("--duration", type=int, default=20, help="seconds per client count")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument(
        "--render", type=Path, help="only render an earlier reports/profile-* folder again"
    )
    args = parser.parse_args(argv)
    if args.render:
        print(report(args.render))
        return 0
    if not Path(PY_SPY).exists() or shutil.which("wrk") is None:
        print("needs py-spy (the bench extra) and wrk: run `make bench` once", file=sys.stderr)
        return 2
    out = REPORTS / f"profile-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    out.mkdir(parents=True)
    with temporary_database("attrition_profile") as url:
        record(args, url, out)
    text = report(out)
    (out / "profile.md").write_text(text + "\n")
    print(text)
    print(f"\nraw stacks: {out}", file=sys.stderr)
    return 0


def record(args: argparse.Namespace, url: str, out: Path) -> None:
    """Run the scenario's server; per client count, py-spy every worker during one wrk run."""
    import bentoml

    from settings import get_settings

    work = Path(tempfile.mkdtemp(prefix="attrition-profile-"))
    bodies = work / "bodies.jsonl"
    write_bodies(bodies)
    sample = bodies.read_bytes().split(b"\n", 1)[0]
    sc = SCENARIOS[args.scenario]
    model_tag = str(bentoml.models.get(get_settings().model_tag).tag)
    env = {
        "ATTRITION_JWT_SECRET": SECRET,
        "ATTRITION_DATA_DIR": str(work / "data"),
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        **sc.env,
    }
    token = mint_token(env) if sc.auth else ""
    runs = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        servers = start(args.scenario, sc, env, work, PROJECT_DIR, sample, model_tag, token, stack)
        server = servers[0]
        group = server_group(sc)
        classifier = classifier_for(servers, url.rsplit("/", 1)[-1], group)
        wrk(server.url, sc.path, bodies, token, 16, 3)
        for clients in (int(c) for c in args.concurrency.split(",")):
            spies = []
            for role, pids in workers(server, group).items():
                for i, pid in enumerate(pids):
                    raw = out / f"{args.scenario}-c{clients}-{role}-{i}.txt"
                    spies.append(subprocess.Popen(
                        [PY_SPY, "record", "--pid", str(pid), "--rate", str(args.rate),
                         "--duration", str(args.duration), "--format", "raw", "--threads",
                         "--nonblocking", "--output", str(raw)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    ))  # fmt: skip
            time.sleep(0.5)  # py-spy attaches before the load starts
            result = wrk(server.url, sc.path, bodies, token, clients, args.duration, classifier)
            for spy in spies:
                spy.wait(timeout=60)
            runs.append({"scenario": args.scenario, "clients": clients, **result})
            print(f"{args.scenario} c={clients}: {result}", file=sys.stderr, flush=True)
    (out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")


def report(folder: Path) -> str:
    """The tables of a profile folder: its runs.json and the raw stacks beside it."""
    tables = []
    for run in json.loads((folder / "runs.json").read_text()):
        scenario, clients = run["scenario"], run["clients"]
        done = run["requests"] or 1
        tables.append(
            f"{scenario}, {clients} clients: {run['rps']:.0f} requests/s, p50 {run['p50_ms']:.1f}"
            f" ms, p99 {run['p99_ms']:.1f} ms (py-spy attached, so slower than the bench)\n\n"
            + "\n".join(
                f"- CPU per request, {k[4:]}: {v * 1000 / done:.3f} ms"
                for k, v in sorted(run.items())
                if k.startswith("cpu:")
            )
        )
        per_role: dict[str, Counter[str]] = {}
        for raw in sorted(folder.glob(f"{scenario}-c{clients}-*.txt")):
            role = raw.stem[len(f"{scenario}-c{clients}-") :].rsplit("-", 1)[0]
            per_role.setdefault(role, Counter()).update(read_stacks(raw))
        for role, counts in sorted(per_role.items()):
            cpu = run.get(f"cpu:{role}")
            ms = cpu * 1000 / done if cpu is not None else None
            tables.append(render(role, counts, ms, clients, scenario))
    return "\n\n".join(tables)


if __name__ == "__main__":
    sys.exit(main())
