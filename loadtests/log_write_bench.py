"""Rows/s of the inference-log writer into PostgreSQL, and what each design choice costs.

Each variant gets a fresh database and writes the same batch-route records (1 KB of JSON inputs
each) in transactions of --batch rows, from --writers connections at once. Besides rows/s it
prints the CPU the PostgreSQL backends and this process spent per row, which is steadier than
rows/s on a shared machine.

python -m loadtests.log_write_bench --rows 100000 --batch 1000 --writers 1,2
"""

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psutil
import psycopg

from persistence import partitions
from persistence.db import upgrade
from persistence.inference_log import copytext
from persistence.inference_log.sinks import PostgresSink
from persistence.inference_log.writer import COLUMNS, Record, encode
from tests.harness import database_cpu, temporary_database
from training.data import load_reference
from training.schema import FEATURES


@dataclass
class Variant:
    description: str
    revision: str  # the migration that builds the schema
    writer: str  # "lines": COPY text lines sent as they are (shipped); "rows": psycopg
    # formats each record (the 0002 writer); "binary": COPY BINARY with typed values
    sql: tuple[str, ...] = ()  # run after the migration


VARIANTS = {
    "before": Variant("before: 0002 schema (jsonb, 4 indexes), psycopg formats rows", "0002", "rows"),
    "lines-0002": Variant("0002 schema, COPY text lines as they are", "0002", "lines"),
    "jsonb": Variant("head + inputs as jsonb", "head", "lines",
                     ("ALTER TABLE inferences ALTER COLUMN inputs TYPE jsonb USING inputs::jsonb",)),
    "batch-index": Variant("head + the batch_id index", "head", "lines",
                           ("CREATE INDEX ix_bench_batch ON inferences (batch_id)",)),
    "unpartitioned": Variant("head, not partitioned", "head", "lines", (
        "ALTER TABLE inferences RENAME TO inferences_partitioned",
        "CREATE TABLE inferences (LIKE inferences_partitioned INCLUDING ALL)",
    )),
    "binary": Variant("head, COPY BINARY (psycopg encodes typed values)", "head", "binary"),
    "after": Variant("after: head (json, 3 indexes, monthly partitions), lines", "head", "lines"),
}  # fmt: skip


def records(rows: list[dict[str, Any]], n: int) -> list[Record]:
    now = datetime.now(UTC).isoformat()
    batch = str(uuid.uuid4())
    return [
        Record(str(uuid.uuid4()), now, "bench", "/predict/attrition/batch", "attrition:bench",
               batch, i, json.dumps(rows[i % len(rows)]), 0.25, "No", 0.35, 12.5)
        for i in range(n)
    ]  # fmt: skip


def lines_writer(url: str, columns: tuple[str, ...] = COLUMNS) -> Callable[[list[Record]], None]:
    sink = PostgresSink(url)

    def write(chunk: list[Record]) -> None:
        if columns == COLUMNS:
            data, _, _ = encode(chunk)
        else:
            data = "".join(copytext.line(r[: len(columns)]) for r in chunk).encode()
        sink.write(columns, data, fresh=True)

    return write


def rows_writer(url: str, binary: bool = False) -> Callable[[list[Record]], None]:
    """psycopg formats each value: text (the 0002 writer's way) or binary."""
    from psycopg.types.json import Json

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    partitioned = partitions.is_partitioned(conn)
    conn.commit()
    if partitioned:
        partitions.ensure(conn, partitions.upcoming())
    columns = COLUMNS[:12] if not binary else COLUMNS  # 0002 has no employee_ref
    fmt = " (FORMAT BINARY)" if binary else ""
    types = ["uuid", "timestamptz", "text", "text", "text", "uuid", "int4", "json",
             "float8", "text", "float8", "float8", "text"]  # fmt: skip

    def typed(r: Record) -> tuple[Any, ...]:
        return (uuid.UUID(r.id), datetime.fromisoformat(r.created_at), r.subject, r.route,
                r.model_tag, uuid.UUID(r.batch_id) if r.batch_id else None, r.position,
                Json(json.loads(r.inputs)), r.probability, r.label, r.threshold,
                r.latency_ms, r.employee_ref)  # fmt: skip

    def write(chunk: list[Record]) -> None:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY inferences ({', '.join(columns)}) FROM STDIN{fmt}") as copy,
        ):
            if binary:
                copy.set_types(types)
                for r in chunk:
                    copy.write_row(typed(r))
            else:
                for r in chunk:
                    copy.write_row(r[:12])
        conn.commit()

    return write


def run(variant: Variant, rows: list[dict[str, Any]], n: int, batch: int, writers: int) -> str:
    with temporary_database("attrition_logbench") as url:
        upgrade(url, variant.revision)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            for statement in variant.sql:
                conn.execute(statement)
        columns = COLUMNS if variant.revision == "head" else COLUMNS[:12]  # 0002: no employee_ref
        make = {"lines": lambda u: lines_writer(u, columns), "rows": rows_writer,
                "binary": lambda u: rows_writer(u, binary=True)}[variant.writer]  # fmt: skip
        shares = [records(rows, n // writers) for _ in range(writers)]
        funcs = [make(url) for _ in range(writers)]
        for f in funcs:  # connect and warm up outside the timing
            f(records(rows, 10))
        me = psutil.Process(os.getpid())
        cpu0, pg0 = sum(me.cpu_times()[:2]), database_cpu(url)
        started = time.perf_counter()

        def work(write: Callable[[list[Record]], None], data: list[Record]) -> None:
            for i in range(0, len(data), batch):
                write(data[i : i + batch])

        threads = [threading.Thread(target=work, args=fw) for fw in zip(funcs, shares, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        cpu, pg = sum(me.cpu_times()[:2]) - cpu0, database_cpu(url) - pg0
        total = sum(len(s) for s in shares)
        return (
            f"| {variant.description} | {writers} | {total / seconds:,.0f} | {1e6 * pg / total:.1f}"
            f" | {1e6 * cpu / total:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--writers", default="1,2", help="connections writing at once")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}"
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows = load_reference()[list(FEATURES)].to_dict("records")
    print(f"{args.rows} rows in transactions of {args.batch}, {os.cpu_count()} cores\n")
    print("| variant | writers | rows/s | PostgreSQL CPU us/row | writer CPU us/row |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for _ in range(args.rounds):
        for name in args.variants.split(","):
            for writers in (int(w) for w in args.writers.split(",")):
                print(run(VARIANTS[name], rows, args.rows, args.batch, writers), flush=True)


if __name__ == "__main__":
    main()
