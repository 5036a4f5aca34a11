"""Predictions while PostgreSQL is blackholed: answers, latency and errors per phase, and what
/health said, on a real `bentoml serve` in production mode.

PostgreSQL is reached through a TCP proxy that, from `--before` seconds on, accepts connections
and never answers them and forwards nothing on the open ones (a network dropping packets), then
after `--during` seconds forwards again. `--clients` clients post single predictions as the
`--users` known users (each seen before the blackhole) the whole time; /health is read every
second. Answers are counted in the phase they arrived in.

python -m loadtests.db_blackhole                       # 32 clients, blackhole from 15 s to 50 s
python -m loadtests.db_blackhole --baseline f660434    # the same against that revision first

Run it from the project directory (it uses the tests' proxy).
"""

import argparse
import asyncio
import multiprocessing
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtests.bench import before_and_after
from tests.harness import PROJECT_DIR, Server, auth_cli, temporary_database

SECRET = "blackhole-secret-" + "b" * 40  # 57 bytes: production mode accepts it
PASSWORD = "blackhole-password-123"
# A request is given up on after this (BentoML's own traffic timeout is 30 s).
CLIENT_TIMEOUT = 60.0
HEALTH_EVERY = 1.0


def run_proxy(conn: Connection, target: tuple[str, int]) -> None:
    """The proxy, in a process of its own (its threads never compete with the clients for a
    GIL): answers its port, then obeys "blackhole", "restore" and "stop"."""
    from tests.proxy import TcpProxy

    proxy = TcpProxy(target)
    conn.send(proxy.port)
    while (command := conn.recv()) != "stop":
        getattr(proxy, command)()
        conn.send("ok")


class ProxyProcess:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=run_proxy, args=(child, target), daemon=True)
        self.process.start()
        self.port: int = self.conn.recv()

    def command(self, name: str) -> None:
        self.conn.send(name)
        self.conn.recv()

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join(10)


@dataclass
class Answer:
    sent: float  # seconds since the start of the load
    seconds: float
    status: int  # 0: no HTTP answer (timeout, connection error)


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    health: list[tuple[float, float, str]] = field(default_factory=list)  # sent, seconds, status


async def client(
    http: httpx.AsyncClient, n: int, tokens: list[str], rows: list[Any], run: Run, t0: float,
    stop: asyncio.Event,
) -> None:  # fmt: skip
    i = n
    headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
    while not stop.is_set():
        sent = time.monotonic()
        try:
            r = await http.post("/predict/attrition", json=rows[i % len(rows)], headers=headers)
            status = r.status_code
        except httpx.HTTPError:
            status = 0
        run.answers.append(Answer(sent - t0, time.monotonic() - sent, status))
        i += len(tokens)


async def health_poller(http: httpx.AsyncClient, run: Run, t0: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        try:
            r = await http.get("/health", timeout=10)
            status = r.json().get("status", str(r.status_code))
        except (httpx.HTTPError, ValueError):
            status = "no answer"
        run.health.append((sent - t0, time.monotonic() - sent, status))
        await asyncio.sleep(max(0.0, HEALTH_EVERY - (time.monotonic() - sent)))


async def load(
    url: str, tokens: list[str], rows: list[Any], clients: int,
    blackhole: Callable[[], None], restore: Callable[[], None],
    before: float, during: float, after: float,
) -> Run:  # fmt: skip
    """Clients for before + during + after seconds, blackhole() and restore() called in
    between; requests still open at the end are waited for (up to CLIENT_TIMEOUT)."""
    run = Run()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT, limits=limits) as http:
        t0 = time.monotonic()
        tasks = [
            asyncio.create_task(client(http, n, tokens, rows, run, t0, stop))
            for n in range(clients)
        ]
        tasks.append(asyncio.create_task(health_poller(http, run, t0, stop)))
        await asyncio.sleep(before)
        await asyncio.to_thread(blackhole)
        await asyncio.sleep(during)
        await asyncio.to_thread(restore)
        await asyncio.sleep(after)
        stop.set()
        await asyncio.gather(*tasks)
    return run


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def longest_silence(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end) without an answer arriving."""
    edges = [start, *sorted(t for t in times if start <= t < end), end]
    return max(b - a for a, b in zip(edges, edges[1:], strict=False))


def report(label: str, run: Run, before: float, during: float, after: float) -> str:
    total = before + during + after
    # Answers to requests still open at the end (waited for) count as after.
    phases = [("before", 0.0, before, before), ("during", before, before + during, during),
              ("after", before + during, total + CLIENT_TIMEOUT, after)]  # fmt: skip
    lines = [
        f"### {label}",
        "",
        "| phase | answers | 200 | 5xx | other 4xx | no answer | p50 ms | p99 ms | max ms"
        " | longest silence s | /health (status x times, slowest s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, start, end, seconds in phases:
        got = [a for a in run.answers if start <= a.sent + a.seconds < end]
        statuses = Counter(a.status for a in got)
        ms = [a.seconds * 1000 for a in got]
        five = sum(n for s, n in statuses.items() if s >= 500)
        four = sum(n for s, n in statuses.items() if 400 <= s < 500)
        checks = [(s, seconds) for sent, seconds, s in run.health if start <= sent < end]
        health = ", ".join(f"{s} x{n}" for s, n in Counter(s for s, _ in checks).items())
        slowest = max((seconds for _, seconds in checks), default=0.0)
        silence = longest_silence([a.sent + a.seconds for a in run.answers], start, min(end, total))
        lines.append(
            f"| {name} ({seconds:.0f} s) | {len(got)}"
            f" | {statuses.get(200, 0)} | {five} | {four} | {statuses.get(0, 0)}"
            f" | {percentile(ms, 50):.0f} | {percentile(ms, 99):.0f} | {max(ms, default=0):.0f}"
            f" | {silence:.1f} | {health or '-'} ({slowest:.2f}) |"
        )
    return "\n".join(lines)


def scenario(
    cwd: Path, work: Path, model_tag: str, args: argparse.Namespace, rows: list[Any]
) -> Run:
    """One server of the checkout in `cwd` on a fresh database behind the proxy."""
    proxy = ProxyProcess()
    try:
        with temporary_database("attrition_blackhole") as direct:
            via_proxy = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
            data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
            env = {"ATTRITION_JWT_SECRET": SECRET, "ATTRITION_DATA_DIR": str(data),
                   "ATTRITION_MODEL_TAG": model_tag}  # fmt: skip
            tokens = []
            for n in range(args.users):
                name = f"known{n}"
                cli_env = {**env, "ATTRITION_DATABASE_URL": direct}
                made = auth_cli(cli_env, "create-user", name, "--role", "predict",
                                "--password-stdin", stdin=PASSWORD + "\n", cwd=cwd)  # fmt: skip
                minted = auth_cli(cli_env, "token", name, "--ttl", "2h", cwd=cwd)
                if made.returncode or minted.returncode:
                    raise RuntimeError(made.stderr + minted.stderr)
                tokens.append(minted.stdout.strip().splitlines()[-1])
            server = Server(
                "service:AttritionService",
                {**env, "ATTRITION_DATABASE_URL": via_proxy},
                log=work / f"serve-{cwd.name}.log",
                cwd=cwd,
                inherit_env=False,  # production mode: no ATTRITION_DEV_MODE from this shell
            )
            try:
                return asyncio.run(
                    load(server.url, tokens, rows, args.clients,
                         lambda: proxy.command("blackhole"), lambda: proxy.command("restore"),
                         args.before, args.during, args.after)
                )  # fmt: skip
            finally:
                proxy.command("restore")
                server.stop()
    finally:
        proxy.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.db_blackhole", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--users", type=int, default=4, help="known users the clients act as")
    parser.add_argument("--before", type=float, default=15.0, help="seconds before the blackhole")
    parser.add_argument("--during", type=float, default=35.0, help="seconds of blackhole")
    parser.add_argument("--after", type=float, default=25.0, help="seconds after the restore")
    parser.add_argument("--baseline", help="also run this git revision first (e.g. f660434)")
    args = parser.parse_args(argv)
    setup = before_and_after(args.baseline, "attrition-blackhole-")
    model_tag, rows, work, versions = setup.model_tag, setup.rows, setup.work, setup.versions
    print(f"{args.clients} clients as {args.users} known users; blackhole from {args.before:.0f}"
          f" s to {args.before + args.during:.0f} s, then {args.after:.0f} s; model {model_tag};"
          f" logs in {work}\n", flush=True)  # fmt: skip
    for label, cwd in versions:
        run = scenario(cwd, work, model_tag, args, rows)
        print(report(label, run, args.before, args.during, args.after) + "\n", flush=True)
        if cwd != PROJECT_DIR:
            shutil.rmtree(cwd)  # the temporary checkout
    return 0


if __name__ == "__main__":
    sys.exit(main())
