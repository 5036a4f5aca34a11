"""Side-by-side benchmark with wrk: start each scenario's real server, load it, print a table.

python -m loadtests.bench --scenarios full,noauth --concurrency 1,16,64 --duration 15
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loadtests.harness import (
    PROJECT_DIR,
    Server,
    auth_cli,
    inference_rows,
    split_topology,
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
    split: bool = False


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("full", "full service: auth, adaptive batching"),
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
    started = time.monotonic()
    r = wrk(server.url, "/predict/attrition/batch", bodies, token, 4, seconds)
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
    }


def mint_token(env: dict[str, str]) -> str:
    """Create the bench user in the scenario's database (once) and mint a token for it."""
    out = auth_cli(env, "token", "bench", "--ttl", "2h")
    if out.returncode != 0:
        made = auth_cli(
            env, "create-user", "bench", "--role", "admin", "--password-stdin",
            stdin="bench-password-123\n",
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"cannot create the bench user: {made.stderr[-1500:]}")
        out = auth_cli(env, "token", "bench", "--ttl", "2h")
    if out.returncode != 0:
        raise RuntimeError(f"cannot mint a bench token: {out.stderr[-1500:]}")
    return out.stdout.strip().splitlines()[-1]


@contextmanager
def closing_server(target: str, env: dict[str, str], log: Path) -> Iterator[Server]:
    server = Server(target, env, log=log)
    try:
        yield server
    finally:
        server.stop()


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
    parser.add_argument("--database-url", help="default: a fresh PostgreSQL database for the run")
    parser.add_argument(
        "--batch-seconds", type=int, default=0, help="also load the batch route (full only)"
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed (Debian package 'wrk'; `make bench` installs it)", file=sys.stderr
        )
        return 2
    if args.database_url is None:
        with temporary_database("attrition_bench") as url:
            args.database_url = url
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> int:
    """Every scenario's server in turn, measured with the same wrk settings."""
    work = Path(tempfile.mkdtemp(prefix="attrition-bench-"))
    bodies = work / "bodies.jsonl"
    write_bodies(bodies)
    batch_bodies = work / "batches.jsonl"
    write_bodies(batch_bodies, batch=1000)
    batch_rows: list[tuple[str, dict[str, float]]] = []
    levels = [int(c) for c in args.concurrency.split(",")]
    rows: list[tuple[str, int, dict[str, float]]] = []
    for name in args.scenarios.split(","):
        sc = SCENARIOS[name]
        env = {"ATTRITION_JWT_SECRET": SECRET, "ATTRITION_DATA_DIR": str(work / "data"), **sc.env}
        if args.database_url:
            env["ATTRITION_DATABASE_URL"] = args.database_url
        token = mint_token(env) if sc.auth else ""
        with ExitStack() as stack:
            if sc.split:
                _, (server,) = stack.enter_context(split_topology(env, work / name))
            else:
                server = stack.enter_context(closing_server(sc.target, env, work / f"{name}.log"))
            wrk(server.url, sc.path, bodies, token, 16, args.warmup)
            for c in levels:
                result = wrk(server.url, sc.path, bodies, token, c, args.duration)
                rows.append((name, c, result))
                print(f"{name:>8} c={c:<3} {result}", file=sys.stderr, flush=True)
                time.sleep(1)
            if args.batch_seconds and name == "full":
                b = batch_throughput(
                    server, batch_bodies, token, args.database_url, args.batch_seconds
                )
                batch_rows.append((name, b))
                print(f"{name:>8} batch {b}", file=sys.stderr, flush=True)
    table = render(rows, args) + render_batch(batch_rows)
    print(table)
    REPORTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (REPORTS / f"bench-{stamp}.md").write_text(table + "\n")
    return 0


def render(rows: list[tuple[str, int, dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"wrk, {args.duration}s per cell, real employees from the dataset, {os.cpu_count()} cores",
        "",
        "| scenario | clients | requests/s | p50 ms | p99 ms | non-2xx | socket errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c, r in rows:
        lines.append(
            f"| {name} | {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['non2xx']:.0f} | {r['socket_errors']:.0f} |"
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
        "| scenario | requests/s | employees/s | p50 ms | p99 ms | non-2xx | log rows written | log rows/s (until caught up) | log lag after load s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['rps']:.1f} | {r['employees_per_s']:.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
            f"| {r['non2xx']:.0f} | {r['log_rows']:.0f} | {r['log_rows_per_s']:.0f} | {r['lag_s']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
