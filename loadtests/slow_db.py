"""The inference log under a slow database: a real `bentoml serve` on PostgreSQL behind a proxy
that delays every answer of the database, loaded by N clients (singles, and batches of 10) for
D seconds. Prints the write-ahead files' bytes on disk (peak, mean, the peak of each 10 s), the
records answered 200 against the rows in the table, and the 5xx.

With --baseline REV the server of that git revision runs first, under the same proxy and load.

python -m loadtests.slow_db --clients 32 --delay-ms 10 --seconds 90 --baseline f660434
"""

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench import before_and_after, mint_token
from loadtests.log_crash import SECRET, Load, table_ids
from tests.harness import Server, temporary_database

WINDOW = 10.0  # seconds per peak in the time series
SAMPLE = 0.25  # seconds between two looks at the files


def wal_bytes(wal: Path) -> int:
    """Bytes of the segment files in every worker's write-ahead directory."""
    total = 0
    for root, _, files in os.walk(wal):
        for name in files:
            if name.endswith(".log"):
                try:
                    total += os.stat(os.path.join(root, name)).st_size
                except FileNotFoundError:  # deleted by its writer meanwhile
                    pass
    return total


class Sampler:
    """The write-ahead bytes every SAMPLE seconds, in a thread, until stopped."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.samples: list[tuple[float, int]] = []
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(SAMPLE):
            self.samples.append((time.monotonic() - self.started, wal_bytes(self.wal)))

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


@dataclass
class Result:
    version: str
    seconds: float
    requests: int
    answered: int  # records the 200s stand for
    rows: int
    missing: int  # answered, no row: must be 0
    duplicates: int  # must be 0
    server_errors: int  # 5xx
    no_answer: int  # connection errors, timeouts
    peak: int  # write-ahead bytes during the load
    mean: float
    windows: list[int]  # peak of each WINDOW seconds
    catch_up: float  # seconds after the load until the table had every answered record

    def line(self) -> str:
        mb = 1 << 20
        return (
            f"| {self.version} | {self.requests / self.seconds:.0f} | {self.answered} | {self.rows}"
            f" | {self.missing} | {self.duplicates} | {self.server_errors} | {self.no_answer}"
            f" | {self.peak / mb:.2f} | {self.mean / mb:.2f} | {self.catch_up:.1f} |"
        )


HEADER = (
    "| version | requests/s | records answered | rows | answered, no row | duplicates | 5xx"
    " | no answer | write-ahead peak MB | mean MB | catch-up s |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def run(
    version: str, cwd: Path, args: argparse.Namespace, rows: list[dict[str, Any]], work: Path
) -> Result:
    """One server of the checkout in cwd on a fresh database behind a delaying proxy."""
    from tests.proxy import TcpProxy

    with temporary_database("attrition_slow") as url:
        data = work / f"data-{version}"
        direct = {
            "ATTRITION_JWT_SECRET": SECRET,
            "ATTRITION_DATABASE_URL": url,
            "ATTRITION_DATA_DIR": str(data),
            "ATTRITION_MODEL_TAG": args.model_tag,
        }
        token = mint_token(direct, cwd)  # migrates and makes the user, without the delay
        proxy = TcpProxy(delay=args.delay_ms / 1000)
        slow = {**direct, "ATTRITION_DATABASE_URL": url.replace("127.0.0.1:5432", proxy.url_host)}
        server = Server("service:AttritionService", slow, log=work / f"{version}.log", cwd=cwd)
        try:
            sampler = Sampler(data / "inference-log" / "wal")
            load = Load(server.url, token, rows, args.clients)
            time.sleep(args.seconds)
            load.stop()
            sampler.stop()
            elapsed = time.monotonic() - sampler.started
            during = [b for _, b in sampler.samples]
            windows: dict[int, int] = {}
            for t, b in sampler.samples:
                windows[int(t // WINDOW)] = max(windows.get(int(t // WINDOW), 0), b)
            stopped = time.monotonic()
            deadline = stopped + args.catch_up
            while True:
                count, ids = table_ids(url)
                if load.answered <= ids or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            catch_up = time.monotonic() - stopped
        finally:
            server.stop()
            proxy.cut()
        count, ids = table_ids(url)
    statuses = load.statuses
    return Result(
        version=version,
        seconds=elapsed,
        requests=sum(statuses.values()),
        answered=len(load.answered),
        rows=count,
        missing=len(load.answered - ids),
        duplicates=count - len(ids),
        server_errors=sum(n for status, n in statuses.items() if status >= 500),
        no_answer=statuses[0],
        peak=max(during, default=0),
        mean=sum(during) / len(during) if during else 0.0,
        windows=[windows[k] for k in sorted(windows)],
        catch_up=catch_up,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.slow_db", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=10.0, help="added to every answer")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--catch-up", type=float, default=120.0, help="longest wait for rows")
    parser.add_argument("--baseline", help="also run the server of this git revision, first")
    args = parser.parse_args(argv)
    setup = before_and_after(args.baseline, "attrition-slow-db-")
    args.model_tag, rows, work, versions = setup.model_tag, setup.rows, setup.work, setup.versions
    print(f"{args.clients} clients, {args.delay_ms:g} ms added to every database answer,"
          f" {args.seconds:g} s (logs in {work})\n", flush=True)  # fmt: skip
    results = []
    for version, cwd in versions:
        result = run(version, cwd, args, rows, work)
        results.append(result)
        peaks = ", ".join(f"{b / (1 << 20):.2f}" for b in result.windows)
        print(f"{version}: write-ahead MB, peak of each {WINDOW:g} s: {peaks}", flush=True)
    print("\n" + HEADER)
    for result in results:
        print(result.line())
    bad = [r for r in results if r.missing or r.duplicates or r.server_errors]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
