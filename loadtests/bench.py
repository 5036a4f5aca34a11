"""Side-by-side benchmark with wrk: start each scenario's real server, load it, print a table.

python -m loadtests.bench --scenarios full,noauth --concurrency 1,16,64 --duration 15
python -m loadtests.bench --scenarios full --baseline main --batch-seconds 60   # before/after
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loadtests.harness import (
    PROJECT_DIR,
    Server,
    auth_cli,
    database_cpu,
    inference_rows,
    temporary_database,
)

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


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("full", "full service: auth, adaptive batching"),
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
            "noauth",
            "same, auth middleware off (dev mode)",
            {"ATTRITION_DEV_MODE": "true", "ATTRITION_AUTH_ENABLED": "false"},
            auth=False,
        ),
        Scenario(
            "fsync",
            "full service, each answer waits for its record's fdatasync (group fsync)",
            {"ATTRITION_LOG_FSYNC": "true"},
        ),
        Scenario(
            "nolog",
            "same, inference log off (dev mode)",
            {"ATTRITION_DEV_MODE": "true", "ATTRITION_LOG_ENABLED": "false"},
        ),
    ]
}


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


def measured_wrk(server: Server, url: str, *args: Any) -> dict[str, float]:
    """wrk, plus the CPU the service and PostgreSQL spent per answered request: steadier than
    requests/s on a shared machine, and what a change to the request path costs."""
    cpu, pg = server.cpu_seconds(), database_cpu(url)
    r = wrk(server.url, *args)
    answered = max(r["requests"] - r["non2xx"], 1)
    r["service_cpu_ms"] = 1e3 * (server.cpu_seconds() - cpu) / answered
    r["pg_cpu_ms"] = 1e3 * (database_cpu(url) - pg) / answered
    return r


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


RESULT = re.compile(r"RESULT (.*)")


def wrk(
    url: str, path: str, bodies: Path, token: str, connections: int, seconds: int
) -> dict[str, float]:
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
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    match = RESULT.search(out)
    if not match:
        raise RuntimeError(f"no RESULT line from wrk:\n{out}")
    return {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__)
    parser.add_argument(
        "--scenarios", default="full,nobatch,noop", help=f"from {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--database-url", help="default: a fresh PostgreSQL database for each scenario"
    )
    parser.add_argument(
        "--batch-seconds", type=int, default=0, help="also load the batch route (full only)"
    )
    parser.add_argument(
        "--baseline",
        help="also run each scenario from this git revision (e.g. main), just before this one",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed (Debian package 'wrk'; `make bench` installs it)", file=sys.stderr
        )
        return 2
    return run(args)


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


def run(args: argparse.Namespace) -> int:
    """Every scenario's server in turn, measured with the same wrk settings."""
    work = Path(tempfile.mkdtemp(prefix="attrition-bench-"))
    bodies = work / "bodies.jsonl"
    write_bodies(bodies)
    batch_bodies = work / "batches.jsonl"
    write_bodies(batch_bodies, batch=1000)
    batch_rows: list[tuple[str, dict[str, float]]] = []
    rows: list[tuple[str, int, dict[str, float]]] = []
    versions = [("", PROJECT_DIR)]
    if args.baseline:  # the baseline first, then this checkout, scenario by scenario
        versions.insert(0, (f"@{args.baseline}", checkout(args.baseline, work)))
    for scenario in args.scenarios.split(","):
        for suffix, cwd in versions:
            name = scenario + suffix
            with scenario_database(args) as url:
                measure(name, SCENARIOS[scenario], url, cwd, work, args, rows, batch_rows)
    table = render(rows, args) + render_batch(batch_rows)
    print(table)
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (REPORTS / f"bench-{stamp}.md").write_text(table + "\n")
    return 0


def measure(
    name: str,
    sc: Scenario,
    url: str,
    cwd: Path,
    work: Path,
    args: argparse.Namespace,
    rows: list[tuple[str, int, dict[str, float]]],
    batch_rows: list[tuple[str, dict[str, float]]],
) -> None:
    """Serve one scenario (from the checkout in cwd) and add its measurements to the rows."""
    bodies, batch_bodies = work / "bodies.jsonl", work / "batches.jsonl"
    env = {
        "ATTRITION_JWT_SECRET": SECRET,
        "ATTRITION_DATA_DIR": str(work / f"data-{name}"),
        "ATTRITION_DATABASE_URL": url,
        **sc.env,
    }
    token = mint_token(env, cwd) if sc.auth else ""
    server = Server(sc.target, env, log=work / f"{name}.log", cwd=cwd)
    try:
        wrk(server.url, sc.path, bodies, token, 16, args.warmup)
        for c in levels(args):
            result = measured_wrk(server, url, sc.path, bodies, token, c, args.duration)
            rows.append((name, c, result))
            print(f"{name:>8} c={c:<3} {result}", file=sys.stderr, flush=True)
            time.sleep(1)
        if args.batch_seconds and sc.name == "full":
            b = batch_throughput(server, batch_bodies, token, url, args.batch_seconds)
            batch_rows.append((name, b))
            print(f"{name:>8} batch {b}", file=sys.stderr, flush=True)
    finally:
        server.stop()


def levels(args: argparse.Namespace) -> list[int]:
    return [int(c) for c in args.concurrency.split(",")]


def render(rows: list[tuple[str, int, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"wrk, {args.duration}s per cell, real employees from the dataset, {os.cpu_count()} cores",
        "",
        "| scenario | clients | requests/s | p50 ms | p99 ms | non-2xx | socket errors | service CPU ms/request | PostgreSQL CPU ms/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c, r in rows:
        lines.append(
            f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['non2xx']:.0f} | {r['socket_errors']:.0f} | {r['service_cpu_ms']:.3f} | {r['pg_cpu_ms']:.3f} |"
        )
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
