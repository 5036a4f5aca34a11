"""Rows/s of the inference-log writer into PostgreSQL: straight COPY (live records), COPY via
a staging table with insert-or-ignore (replays), and pipelined executemany.

python -m loadtests.log_write_bench --rows 50000 --batch 1000
"""

import argparse
import json
import time
import uuid
from datetime import UTC, datetime

from loadtests.harness import temporary_database
from persistence.db import upgrade
from persistence.inference_log import PostgresSink, Record
from training.data import load_reference
from training.schema import FEATURES

PATHS = [  # (name, method, fresh)
    ("copy (live records)", "copy", True),
    ("copy+ignore (replays)", "copy", False),
    ("executemany+ignore", "executemany", False),
]


def records(rows: list[dict[str, object]], n: int) -> list[Record]:
    now = datetime.now(UTC).isoformat()
    batch = str(uuid.uuid4())
    return [
        Record(str(uuid.uuid4()), now, "bench", "/predict/attrition/batch", "attrition:bench", batch,
               i, json.dumps(rows[i % len(rows)]), 0.25, "No", 0.35, 12.5)
        for i in range(n)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = load_reference()[list(FEATURES)].to_dict("records")
    with temporary_database("attrition_logbench") as url:
        upgrade(url)
        print(f"{args.rows} rows in batches of {args.batch}, one connection, fresh table")
        for round_ in range(args.rounds):
            for path_name, method, fresh in PATHS:
                data = records(rows, args.rows)
                sink = PostgresSink(url, method=method)
                sink.write(data[:10], fresh=fresh)  # connect and warm up outside the timing
                started = time.perf_counter()
                for i in range(10, len(data), args.batch):
                    sink.write(data[i : i + args.batch], fresh=fresh)
                seconds = time.perf_counter() - started
                sink.close()
                print(
                    f"round {round_ + 1} {path_name:<24} {(len(data) - 10) / seconds:>9.0f} rows/s"
                )


if __name__ == "__main__":
    main()
