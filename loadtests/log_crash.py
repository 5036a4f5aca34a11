"""SIGKILL under load, then restart: every answered prediction must have exactly one row.

Each run starts a real server on a fresh PostgreSQL database, loads it with single and batch
predictions, kills the entry workers (BentoML starts new ones) or every process of the server
(then starts it again) with SIGKILL, and compares the rows with the predictions answered 200.
Rows for requests cut off by the kill (made and recorded, never answered) are counted apart.

python -m loadtests.log_crash --runs 10 --victims entry_workers,whole_server
"""

import argparse
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

from loadtests.bench import mint_token
from tests.harness import Server, temporary_database

SECRET = "crash-secret-" + "c" * 40
VICTIMS = ("entry_workers", "whole_server")


@dataclass
class Result:
    victim: str
    answered: int  # records the 200s stand for (one per employee)
    failed: int  # requests without an answer (cut off by the kill, or refused meanwhile)
    rows: int
    missing: int  # answered but not in the table: must be 0
    duplicates: int  # must be 0
    unanswered_rows: int  # rows of requests cut off after their record was written

    def ok(self) -> bool:
        return not self.missing and not self.duplicates

    def line(self) -> str:
        return (
            f"| {self.victim} | {self.answered} | {self.rows} | {self.missing} | {self.duplicates}"
            f" | {self.unanswered_rows} | {self.failed} |"
        )


HEADER = (
    "| victim | answered (records) | rows after restart | answered, no row | duplicates"
    " | rows of cut-off requests | requests without answer |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def record_ids(body: dict[str, Any]) -> list[str]:
    """Ids of the records a 200 stands for: its request id, or one per batch row."""
    if "predictions" not in body:
        return [body["request_id"]]
    batch = uuid.UUID(body["request_id"])
    return [str(uuid.uuid5(batch, str(p["index"]))) for p in body["predictions"]]


class Load:
    """Clients posting singles and batches of 10 until stopped, keeping the answered ids."""

    def __init__(self, url: str, token: str, rows: list[dict[str, Any]], clients: int) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rows = rows
        self.answered: set[str] = set()
        self.failed = 0
        self.statuses: Counter[int] = Counter()  # of every request; 0: no answer
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self, n: int) -> None:
        i = n
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=15) as client:
            while not self.stopping.is_set():
                i += 1
                row = self.rows[i % len(self.rows)]
                try:
                    if i % 5 == 0:
                        batch = [self.rows[(i + k) % len(self.rows)] for k in range(10)]
                        r = client.post("/predict/attrition/batch", json={"employees": batch})
                    else:
                        r = client.post("/predict/attrition", json=row)
                    status, ok = r.status_code, r.status_code == 200
                    ids = record_ids(r.json()) if ok else []
                except (httpx.HTTPError, ValueError):
                    status, ok, ids = 0, False, []
                with self.lock:
                    self.statuses[status] += 1
                    if ok:
                        self.answered.update(ids)
                    else:
                        self.failed += 1
                if not ok:
                    time.sleep(0.05)  # the server is restarting

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join()


def entry_workers(server: Server) -> list[psutil.Process]:
    found = []
    for p in server.processes()[1:]:
        cmd = p.cmdline()
        if "--service-name" in cmd and cmd[cmd.index("--service-name") + 1] == "AttritionService":
            found.append(p)
    return found


def table_ids(url: str) -> tuple[int, set[str]]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        ids = [r[0] for r in conn.execute("SELECT id::text FROM inferences").fetchall()]
    return len(ids), set(ids)


def crash_run(
    victim: str,
    url: str,
    env: dict[str, str],
    rows: list[dict[str, Any]],
    work: Path,
    *,
    clients: int = 16,
    seconds: float = 4.0,
) -> Result:
    """One run against a database that has the token's user; the server is stopped after."""
    token = mint_token(env)
    server = Server("service:AttritionService", env, log=work / f"{victim}-1.log")
    load = Load(server.url, token, rows, clients)
    try:
        time.sleep(seconds)
        if victim == "whole_server":
            server.stop(signal.SIGKILL)
            load.stop()
            server = Server("service:AttritionService", env, log=work / f"{victim}-2.log")
        else:
            killed = entry_workers(server)
            for p in killed:
                p.send_signal(signal.SIGKILL)
            psutil.wait_procs(killed, timeout=10)
            deadline = time.monotonic() + 60  # serving again through new workers
            while len(entry_workers(server)) < len(killed) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            load.stop()
        answered = load.answered
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            count, ids = table_ids(url)
            if answered <= ids:
                time.sleep(1)  # anything still on its way (cut-off requests' records)
                count, ids = table_ids(url)
                break
            time.sleep(0.5)
    finally:
        load.stop()
        server.stop()
    return Result(
        victim=victim,
        answered=len(answered),
        failed=load.failed,
        rows=count,
        missing=len(answered - ids),
        duplicates=count - len(ids),
        unanswered_rows=len(ids - answered),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.log_crash", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="runs per victim")
    parser.add_argument("--victims", default=",".join(VICTIMS))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="load before the kill")
    args = parser.parse_args(argv)
    from training.data import load_reference
    from training.schema import FEATURES

    rows = load_reference()[list(FEATURES)].to_dict("records")
    work = Path(tempfile.mkdtemp(prefix="attrition-crash-"))
    results = []
    print(HEADER, flush=True)
    for n in range(args.runs):
        for victim in args.victims.split(","):
            with temporary_database("attrition_crash") as url:
                env = {
                    "ATTRITION_JWT_SECRET": SECRET,
                    "ATTRITION_DATABASE_URL": url,
                    "ATTRITION_DATA_DIR": str(work / f"data-{n}-{victim}"),
                }
                result = crash_run(victim, url, env, rows, work,
                                   clients=args.clients, seconds=args.seconds)  # fmt: skip
            results.append(result)
            print(result.line(), flush=True)
    bad = [r for r in results if not r.ok()]
    print(f"\n{len(results)} runs, {len(bad)} with a missing or duplicated row (logs in {work})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
