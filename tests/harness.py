"""Start and stop a real `bentoml serve` on a free port, and temporary databases (used by the
tests and the load tests)."""

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

PROJECT_DIR = Path(__file__).resolve().parent.parent
BENTOML = str(Path(sys.executable).with_name("bentoml"))


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux; the usual default elsewhere)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port that is free now and lies below the kernel's ephemeral range.

    A port from bind(0) lies inside that range, and the kernel also gives those ports to
    outgoing connections: between this probe and the server's own bind seconds later, any
    client socket on the machine could take it ("Address already in use"; it failed a CI
    run). Ports below the range are only ever taken by listeners.
    """
    candidates = range(20_000, ephemeral_ports().start)
    for _ in range(200 if len(candidates) > 1_000 else 0):
        port = random.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # an unusual port range: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PG_ADMIN = os.environ.get("ATTRITION_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def temporary_database(prefix: str = "attrition_tmp") -> Iterator[str]:
    """A fresh PostgreSQL database for one run (SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def auth_cli(
    env: Mapping[str, str], *args: str, stdin: str | None = None, cwd: Path = PROJECT_DIR
) -> subprocess.CompletedProcess[str]:
    """Run `python -m auth ARGS` (of the checkout in cwd) with the application settings in
    `env`; never raises."""
    return subprocess.run(
        [sys.executable, "-m", "auth", *args],
        env={**os.environ, **env},
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def inference_rows(url: str) -> int:
    """Rows in the inference log of a PostgreSQL database."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT count(*) FROM inferences").fetchone()
        return int(row[0]) if row else 0


def database_cpu(url: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to this database."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        pids = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(cpu_seconds(pid) for (pid,) in pids)


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def private_home(shared: str | None, parent: Path) -> str:
    """A BENTOML_HOME of this server's own that shares the model and Bento stores.

    Every `bentoml serve` wipes $BENTOML_HOME/prometheus_multiproc_dir when it starts, so
    servers sharing a home erase each other's metrics.
    """
    source = Path(shared or Path.home() / "bentoml").resolve()
    home = Path(tempfile.mkdtemp(prefix="bentoml-home-", dir=parent))
    for store in ("models", "bentos"):
        (source / store).mkdir(parents=True, exist_ok=True)
        (home / store).symlink_to(source / store)
    return str(home)


class PortTaken(RuntimeError):
    """The server could not bind its port: something else took it after the probe."""


class ServerProcess:
    """A server subprocess in a session of its own on a free port, stopped with SIGTERM.

    If another listener takes the port between the probe and the bind, it starts again on a
    new port (up to `attempts` times) instead of failing; a `port` given by the caller is used
    as it is. Subclasses say how to start it, when it is ready and how a taken port shows in its
    log. `env` is the whole environment of the process.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log: Path,
        timeout: float = 120,
        attempts: int = 3,
        port: int | None = None,
        cwd: Path = PROJECT_DIR,
    ):
        self.log_path = log
        for attempt in range(1, attempts + 1):
            self.port = port or free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._log = open(log, "ab" if attempt > 1 else "wb")  # noqa: SIM115 - closed in stop()
            self.proc = subprocess.Popen(
                self.command(self.port),
                cwd=cwd,
                env=dict(env),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                self.wait_ready(timeout)
                return
            except PortTaken:
                if attempt == attempts or port:
                    raise

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        """One readiness probe (connection errors count as not ready)."""
        raise NotImplementedError

    def port_taken(self, log: str) -> bool:
        return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                self.stop()  # whatever it started may still run
                failure = PortTaken if self.port_taken(log) else RuntimeError
                raise failure(f"server exited {self.proc.returncode}:\n{log}")
            try:
                if self.ready():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        log = self.log()
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{log}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def processes(self) -> list[psutil.Process]:
        """The server first, then its descendants and anything else left in its session (a
        process whose parent died is no longer a descendant, but keeps the session)."""
        try:
            root = psutil.Process(self.proc.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            found = []
        known = {p.pid for p in found}
        for p in psutil.process_iter():
            try:
                if p.pid not in known and os.getsid(p.pid) == self.proc.pid:
                    found.append(p)
            except (OSError, psutil.Error):
                continue
        return found

    def cpu_seconds(self) -> float:
        """CPU used so far by the server and its workers."""
        return sum(cpu_seconds(p.pid) for p in self.processes())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the server (SIGKILL: every process at once), then make sure none is left."""
        procs = self.processes()
        if self.proc.poll() is None:
            for p in procs if sig == signal.SIGKILL else procs[:1]:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        rest = [p for p in procs if p.pid != self.proc.pid]
        _, alive = psutil.wait_procs(rest, timeout=10)
        for p in alive:  # processes that outlived the server's own shutdown
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()
        return self.proc.returncode


class Server(ServerProcess):
    """A real `bentoml serve` of `target` (a service or a Bento tag).

    `command(port)` replaces the `bentoml serve` command line (e.g. `make serve`);
    `inherit_env=False` starts it with only PATH, HOME and `env`, as a new user's shell would.
    """

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        *,
        log: Path,
        timeout: float = 120,
        attempts: int = 3,
        port: int | None = None,
        command: Callable[[int], list[str]] | None = None,
        cwd: Path = PROJECT_DIR,
        inherit_env: bool = True,
    ):
        self.target = target
        self.custom_command = command
        base = os.environ if inherit_env else {k: os.environ[k] for k in ("PATH", "HOME")}
        full_env = {**base, "BENTOML_CONFIG": str(cwd / "configuration.yaml"), **env}
        full_env["BENTOML_HOME"] = private_home(
            full_env.get("BENTOML_HOME", os.environ.get("BENTOML_HOME")), log.parent
        )
        super().__init__(full_env, log=log, timeout=timeout, attempts=attempts, port=port, cwd=cwd)

    def command(self, port: int) -> list[str]:
        if self.custom_command is not None:
            return self.custom_command(port)
        return [BENTOML, "serve", self.target, "--port", str(port), "--host", "127.0.0.1"]

    def ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200

    def port_taken(self, log: str) -> bool:
        return f"Could not bind 127.0.0.1:{self.port}" in log

    def worker(self, service: str) -> psutil.Process:
        """The worker process of one service, e.g. "AttritionService"."""
        for p in self.processes()[1:]:
            cmd = p.cmdline()
            if "--service-name" in cmd and cmd[cmd.index("--service-name") + 1] == service:
                return p
        raise LookupError(f"no worker for {service}")


ENTRY = "service:AttritionService"
MODEL = "service:AttritionModel"


@contextmanager
def split_topology(
    env: Mapping[str, str], work: Path, *, entries: int = 1, timeout: float = 120
) -> Iterator[tuple[Server, list[Server]]]:
    """The model service on a server of its own and `entries` entry servers calling it by URL
    (ATTRITION_MODEL_URL), as separate pods would; stopped entries first, then the model."""
    work.mkdir(parents=True, exist_ok=True)
    model = Server(MODEL, env, log=work / "model.log", timeout=timeout)
    started: list[Server] = []
    try:
        for n in range(entries):
            entry_env = {**env, "ATTRITION_MODEL_URL": model.url}
            started.append(Server(ENTRY, entry_env, log=work / f"entry-{n}.log", timeout=timeout))
        yield model, started
    finally:
        for server in started:
            server.stop()
        model.stop()
