"""Abuse of a real server, with the numbers printed: login bursts, a login flood, hostile headers.

python -m loadtests.abuse lockout --backend sqlite,postgresql --bursts 10,20
python -m loadtests.abuse flood --backend postgresql --duration 20 --flood-clients 24
python -m loadtests.abuse headers
python -m loadtests.abuse bodies --baseline main

`lockout` fires each burst of wrong passwords at one fresh user at once, then the right
password, and prints how many guesses were checked (400) before the lock (429). A wrong password
answered 400 was checked; before the atomic count, the 5xx of the duplicate-key race came after
the check too.
`flood` measures prediction latency and the entry workers' memory with and without a flood of
`/auth/token` calls for random usernames (no token needed; each is an Argon2 check).
`headers` sends a 16 MiB header, holds 8 unfinished 32 MiB headers (entry worker memory), and
opens 100 slowloris and 20 silent connections, then says what the server did with each.
`bodies` opens connections per route whose body comes 1 byte/s and says when the server
answered and closed each, with the defaults (configuration.yaml's traffic timeout included);
with --baseline, that revision's server first.
"""

import argparse
import asyncio
import os
import select
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.harness import PROJECT_DIR, Server, temporary_database

SECRET = "login-bench-secret-" + "l" * 40
PASSWORD = "login-bench-password"


@contextmanager
def serve(
    backend: str, extra_env: dict[str, str], cwd: Path = PROJECT_DIR
) -> Iterator[tuple[Server, str]]:
    """A real server (of the checkout in `cwd`) on a fresh database of the backend, with a user
    named bench who may predict and record outcomes."""
    from sqlmodel import Session

    from auth.users import create_user
    from persistence.db import make_engine, upgrade
    from persistence.models import UserCreate

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="login-bench-")))
        if backend == "postgresql":
            url = stack.enter_context(temporary_database("attrition_login_bench"))
        else:
            url = f"sqlite:///{tmp / 'attrition.db'}"
        upgrade(url)
        engine = make_engine(url)
        with Session(engine) as session:
            create_user(
                session=session,
                user_in=UserCreate(
                    username="bench", roles=["predict", "outcomes"], password=PASSWORD
                ),
            )
        engine.dispose()
        env = {
            "ATTRITION_JWT_SECRET": SECRET,
            "ATTRITION_DATABASE_URL": url,
            "ATTRITION_DATA_DIR": str(tmp / "data"),
            **extra_env,
        }
        server = Server("service:AttritionService", env, log=tmp / "serve.log", cwd=cwd)
        try:
            yield server, url
        finally:
            server.stop()


def new_user(url: str) -> str:
    from sqlmodel import Session

    from auth.users import create_user
    from persistence.db import make_engine
    from persistence.models import UserCreate

    name = f"burst{uuid.uuid4().hex[:8]}"
    engine = make_engine(url)
    with Session(engine) as session:
        create_user(
            session=session, user_in=UserCreate(username=name, roles=["predict"], password=PASSWORD)
        )
    engine.dispose()
    return name


async def login(client: httpx.AsyncClient, username: str, password: str) -> int:
    """The answer's status, or 0 when the connection failed without one."""
    try:
        r = await client.post("/auth/token", data={"username": username, "password": password})
    except httpx.TransportError:
        return 0
    return r.status_code


async def burst(base: str, username: str, size: int) -> tuple[Counter[int], int]:
    """`size` wrong passwords at once, then the right one: (their statuses, the right one's)."""
    limits = httpx.Limits(max_connections=size + 1)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        statuses = await asyncio.gather(
            *(login(client, username, f"wrong-{i}") for i in range(size))
        )
        right = await login(client, username, PASSWORD)
    return Counter(statuses), right


def lockout(args: argparse.Namespace) -> int:
    rows = []
    for backend in args.backend.split(","):
        env = {
            "ATTRITION_LOGIN_MAX_FAILURES": str(args.max_failures),
            "ATTRITION_LOGIN_WAIT_SECONDS": str(args.wait_seconds),
        }
        with serve(backend, env) as (server, url):
            for size in [int(b) for b in args.bursts.split(",")]:
                statuses, right = asyncio.run(burst(server.url, new_user(url), size))
                rows.append((backend, size, statuses, right))
    print(
        f"\nmax failures {args.max_failures}, login wait {args.wait_seconds}s; "
        "each burst hits one fresh user\n"
    )
    print(
        "| backend | burst | wrong (400) | locked (429) | busy (503) | other 5xx | no answer | "
        "right password after |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for backend, size, statuses, right in rows:
        errors = sum(n for s, n in statuses.items() if s >= 500 and s != 503)
        print(
            f"| {backend} | {size} | {statuses[400]} | {statuses[429]} | {statuses[503]} | "
            f"{errors} | {statuses[0]} | {right} |"
        )
    return 0


def employee() -> dict[str, Any]:
    from training.data import load_reference
    from training.schema import FEATURES

    return dict(load_reference()[list(FEATURES)].iloc[0].to_dict())


def entry_workers(server: Server) -> list[Any]:
    return [
        p
        for p in server.processes()[1:]
        if "AttritionService" in p.cmdline() and "--service-name" in p.cmdline()
    ]


async def phase(
    server: Server, token: str, body: dict[str, Any], args: argparse.Namespace, flood: bool
) -> dict[str, float]:
    """Predictions from `args.clients` closed-loop clients (and a login flood) for a while."""
    latencies: list[float] = []
    logins: Counter[int] = Counter()
    rss_peak = 0
    workers = entry_workers(server)
    stop = time.monotonic() + args.duration
    headers = {"Authorization": f"Bearer {token}"}

    async def predictor(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            r = await client.post("/predict/attrition", json=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"prediction failed: {r.status_code} {r.text}")

    async def flooder(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            name = f"ghost{uuid.uuid4().hex[:10]}"
            logins[await login(client, name, "guess")] += 1

    async def sample_rss() -> None:
        nonlocal rss_peak
        while time.monotonic() < stop:
            rss_peak = max(rss_peak, *(p.memory_info().rss for p in workers))
            await asyncio.sleep(0.1)

    runner = server.worker("AttritionModel")
    cpu_before = [cpu_seconds(workers), cpu_seconds([runner]), time.process_time()]
    limits = httpx.Limits(max_connections=args.clients + args.flood_clients)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        tasks = [predictor(client) for _ in range(args.clients)] + [sample_rss()]
        if flood:
            tasks += [flooder(client) for _ in range(args.flood_clients)]
        await asyncio.gather(*tasks)
    cpu_after = [cpu_seconds(workers), cpu_seconds([runner]), time.process_time()]
    entry_cpu, runner_cpu, client_cpu = (
        100 * (after - before) / args.duration
        for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "CPU % entry/runner/client": f"{entry_cpu:.0f} / {runner_cpu:.0f} / {client_cpu:.0f}",
        "predictions/s": len(latencies) / args.duration,
        "p50 ms": cuts[49],
        "p99 ms": cuts[98],
        "peak entry worker RSS MB": rss_peak / 2**20,
        "logins/s": sum(logins.values()) / args.duration,
        "login statuses": dict(sorted(logins.items())),  # type: ignore[dict-item]
    }


def cpu_seconds(processes: list[Any]) -> float:
    """CPU time of the processes so far (every thread, ended ones included)."""
    return sum(p.cpu_times().user + p.cpu_times().system for p in processes)


def flood(args: argparse.Namespace) -> int:
    body = employee()
    results = []
    with serve(args.backend, {}) as (server, _):
        token = httpx.post(
            f"{server.url}/auth/token",
            data={"username": "bench", "password": PASSWORD},
            timeout=60,
        ).json()["access_token"]
        asyncio.run(
            phase(server, token, body, argparse.Namespace(**{**vars(args), "duration": 3}), False)
        )
        for name, with_flood in (
            ("no flood", False),
            (f"{args.flood_clients}-client login flood", True),
        ):
            results.append((name, asyncio.run(phase(server, token, body, args, with_flood))))
    print(f"\n{args.clients} prediction clients, {args.duration}s per phase, {args.backend}\n")
    print(
        "| phase | predictions/s | p50 ms | p99 ms | peak entry worker RSS MB | "
        "CPU % entry/runner/client | logins/s | login statuses |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, r in results:
        print(
            f"| {name} | {r['predictions/s']:.0f} | {r['p50 ms']:.1f} | {r['p99 ms']:.1f} | "
            f"{r['peak entry worker RSS MB']:.0f} | {r['CPU % entry/runner/client']} | "
            f"{r['logins/s']:.1f} | {r['login statuses']} |"
        )
    return 0


HEAD = b"GET /livez HTTP/1.1\r\nHost: bench\r\n"
MIB = 2**20


def raw_connection(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=120)


def send_quietly(sock: socket.socket, data: bytes) -> int:
    """Bytes the server took before it closed the connection."""
    try:
        sock.sendall(data)
        return len(data)
    except OSError:
        return 0


def reply_status(sock: socket.socket, timeout: float) -> str:
    """The status line the server sent before closing, or what happened instead."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return f"no answer in {timeout:.0f}s, still open"
    except OSError as exc:
        return f"{type(exc).__name__}"
    return data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed without an answer"


def huge_header(server: Server) -> str:
    started = time.monotonic()
    with raw_connection(server) as sock:
        taken = send_quietly(sock, HEAD + b"X-Big: ")
        for _ in range(256):  # 16 MiB
            if not (sent := send_quietly(sock, b"a" * 65536)):
                break
            taken += sent
        taken += send_quietly(sock, b"\r\n\r\n")
        status = reply_status(sock, 60)
    return f"{status}; server took {taken / MIB:.2f} MiB; {time.monotonic() - started:.1f}s"


def unfinished_headers(server: Server, count: int = 8, size: int = 32 * MIB) -> str:
    workers = entry_workers(server)
    before = sum(p.memory_info().rss for p in workers)
    socks = [raw_connection(server) for _ in range(count)]
    taken = 0
    for sock in socks:
        sock.settimeout(5)
        taken += send_quietly(sock, HEAD + b"X-Big: ")
        for _ in range(size // 65536):
            if not (sent := send_quietly(sock, b"a" * 65536)):
                break
            taken += sent
    time.sleep(1)
    after = sum(p.memory_info().rss for p in workers)
    statuses = {reply_status(sock, 5) for sock in socks}
    for sock in socks:
        sock.close()
    return (
        f"entry workers {before / MIB:.0f} -> {after / MIB:.0f} MiB "
        f"(+{(after - before) / MIB:.0f}); server took {taken / MIB:.1f} MiB; {sorted(statuses)}"
    )


def slow_connections(server: Server, hold: float, slow: int = 100, silent: int = 20) -> str:
    """Slowloris (a header line per second) and connections that never send anything."""
    started = time.monotonic()
    dribbling = [raw_connection(server) for _ in range(slow)]
    quiet = [raw_connection(server) for _ in range(silent)]
    for sock in dribbling:
        send_quietly(sock, HEAD)
    closed: list[float] = []
    statuses: Counter[str] = Counter()
    while dribbling and time.monotonic() - started < hold:
        for sock in dribbling:
            send_quietly(sock, b"X-Slow: v\r\n")
        readable, _, _ = select.select(dribbling, [], [], 1.0)
        for sock in readable:
            statuses[reply_status(sock, 5)] += 1
            closed.append(time.monotonic() - started)
            dribbling.remove(sock)
    quiet_statuses = Counter(reply_status(sock, 1) for sock in quiet)
    for sock in dribbling + quiet:
        sock.close()
    span = f"closed after {min(closed):.1f}-{max(closed):.1f}s" if closed else "none closed"
    return (
        f"slowloris: {len(dribbling)} of {slow} still open after {hold:.0f}s, {span}, "
        f"{dict(statuses)}; silent: {dict(quiet_statuses)}"
    )


def headers(args: argparse.Namespace) -> int:
    with serve(args.backend, {}) as (server, _):
        rows = [
            ("one 16 MiB header", huge_header(server)),
            ("8 unfinished 32 MiB headers", unfinished_headers(server)),
            ("100 slowloris + 20 silent connections", slow_connections(server, args.hold)),
        ]
        alive = httpx.get(f"{server.url}/livez", timeout=30).status_code
    print(f"\n{args.backend}; /livez afterwards: {alive}\n")
    print("| attack | what the server did |")
    print("| --- | --- |")
    for name, result in rows:
        print(f"| {name} | {result} |")
    return 0


TRICKLED_ROUTES = ("/predict/attrition", "/predict/attrition/batch", "/auth/token", "/outcomes")


def trickled(server: Server, token: str, per_route: int, hold: float) -> dict[str, list[str]]:
    """Per route, what happened to each connection whose 1,000-byte body came 1 byte/s:
    "<status> at <s>, closed at <s>" from the end of its headers (or "open after <hold> s")."""
    socks: dict[socket.socket, str] = {}
    for path in TRICKLED_ROUTES:
        kind = "application/x-www-form-urlencoded" if path == "/auth/token" else "application/json"
        auth = "" if path == "/auth/token" else f"Authorization: Bearer {token}\r\n"
        head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {kind}\r\n"
                f"Content-Length: 1000\r\n{auth}\r\n").encode()  # fmt: skip
        for _ in range(per_route):
            sock = raw_connection(server)
            send_quietly(sock, head)
            socks[sock] = path
    started = time.monotonic()
    answers: dict[socket.socket, str] = {}
    closed: dict[socket.socket, float] = {}
    while len(closed) < len(socks) and time.monotonic() - started < hold:
        open_ = [sock for sock in socks if sock not in closed]
        for sock in open_:
            send_quietly(sock, b" ")
        readable, _, _ = select.select(open_, [], [], 1.0)
        for sock in readable:
            at = time.monotonic() - started
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data and sock not in answers:
                answers[sock] = f"{data.split(b' ', 2)[1].decode()} at {at:.1f}s"
            if not data:
                closed[sock] = at
    outcome: dict[str, list[str]] = {path: [] for path in TRICKLED_ROUTES}
    for sock, path in socks.items():
        answer = answers.get(sock, "no answer")
        end = f"closed at {closed[sock]:.1f}s" if sock in closed else f"open after {hold:.0f}s"
        outcome[path].append(f"{answer}, {end}")
        sock.close()
    return outcome


def bodies(args: argparse.Namespace) -> int:
    """Trickled bodies on every route, for the baseline (if any) and this checkout."""
    from loadtests.bench import checkout

    builds = [("this checkout", PROJECT_DIR)]
    if args.baseline:
        work = Path(tempfile.mkdtemp(prefix="attrition-abuse-"))
        builds.insert(0, (args.baseline, checkout(args.baseline, work)))
    rows = []
    for name, cwd in builds:
        with serve(args.backend, {}, cwd) as (server, _):
            token = httpx.post(
                f"{server.url}/auth/token",
                data={"username": "bench", "password": PASSWORD},
                timeout=60,
            ).json()["access_token"]
            for path, seen in trickled(server, token, args.per_route, args.hold).items():
                rows.append((name, path, seen))
            alive = httpx.get(f"{server.url}/livez", timeout=30).status_code
        print(f"{name}: /livez afterwards {alive}")
    print(f"\n{args.per_route} connections per route, a 1,000-byte body sent 1 byte/s, watched "
          f"for {args.hold:.0f}s; times from the end of the headers\n")  # fmt: skip
    print("| build | route | what the server did |")
    print("| --- | --- | --- |")
    for name, path, seen in rows:
        print(f"| {name} | `{path}` | {'; '.join(sorted(set(seen)))} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.abuse", description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("lockout", help="concurrent wrong-password bursts against one user")
    p.add_argument("--backend", default="sqlite,postgresql", help="comma-separated")
    p.add_argument("--bursts", default="10,20", help="burst sizes, comma-separated")
    p.add_argument("--max-failures", type=int, default=5)
    p.add_argument(
        "--wait-seconds",
        type=float,
        default=60,
        help="server's ATTRITION_LOGIN_WAIT_SECONDS: long, so no guess is refused as busy",
    )
    p = sub.add_parser("headers", help="huge, unfinished and slow request headers")
    p.add_argument("--backend", default="sqlite", choices=["sqlite", "postgresql"])
    p.add_argument("--hold", type=float, default=30, help="seconds to watch slow connections")
    p = sub.add_parser("flood", help="prediction latency and memory during a login flood")
    p.add_argument("--backend", default="postgresql", choices=["sqlite", "postgresql"])
    p.add_argument("--duration", type=int, default=20, help="seconds per phase")
    p.add_argument("--clients", type=int, default=8, help="concurrent prediction clients")
    p.add_argument("--flood-clients", type=int, default=24)
    p = sub.add_parser("bodies", help="request bodies sent 1 byte/s, on every route")
    p.add_argument("--backend", default="postgresql", choices=["sqlite", "postgresql"])
    p.add_argument("--per-route", type=int, default=3, help="connections per route")
    p.add_argument("--hold", type=float, default=60, help="seconds to watch them")
    p.add_argument("--baseline", help="a git revision to measure first (e.g. main)")
    args = parser.parse_args(argv)
    os.environ.setdefault("BENTOML_HOME", str(Path.home() / "bentoml"))
    modes = {"lockout": lockout, "flood": flood, "headers": headers, "bodies": bodies}
    return modes[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
