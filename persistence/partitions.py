"""Monthly partitions of the inference log on PostgreSQL (UTC months of created_at).

Partitions are created ahead of the rows (this month and the next, by every writer when it
connects and hourly) and on demand for older rows (replays of old records). Retention drops
them whole (persistence/retention.py).
"""

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

PARENT = "inferences"
NAME = re.compile(r"^inferences_p(\d{4})_(\d{2})$")
# Serializes partition creation across workers (an arbitrary constant key).
ADVISORY_LOCK = 7_246_131
# Creating a partition locks the parent; never queue the writers behind a long query for it.
LOCK_TIMEOUT = "2s"

Month = tuple[int, int]


def month_of(moment: datetime) -> Month:
    utc = moment.astimezone(UTC)
    return utc.year, utc.month


def next_month(month: Month) -> Month:
    year, m = month
    return (year + 1, 1) if m == 12 else (year, m + 1)


def name(month: Month) -> str:
    return f"{PARENT}_p{month[0]:04d}_{month[1]:02d}"


def start(month: Month) -> datetime:
    return datetime(month[0], month[1], 1, tzinfo=UTC)


def create_sql(month: Month) -> str:
    lower, upper = start(month), start(next_month(month))
    return (
        f"CREATE TABLE IF NOT EXISTS {name(month)} PARTITION OF {PARENT}"
        f" FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
    )


def upcoming(now: datetime | None = None) -> list[Month]:
    """This month and the next, so rows never wait for a partition at a month's turn."""
    current = month_of(now or datetime.now(UTC))
    return [current, next_month(current)]


def months_in(data: bytes, columns: tuple[str, ...]) -> set[Month]:
    """UTC months of created_at in COPY text lines."""
    at = columns.index("created_at")
    return {
        month_of(datetime.fromisoformat(row.split(b"\t")[at].decode()))
        for row in data.splitlines()
        if row
    }


def is_partitioned(conn: Any) -> bool:
    """Whether `inferences` is partitioned (conn: a psycopg connection)."""
    row = conn.execute(
        "SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = to_regclass(%s)", (PARENT,)
    ).fetchone()
    return bool(row and row[0])


def ensure(conn: Any, months: Iterable[Month]) -> None:
    """Create the partitions of these months that do not exist yet (conn: psycopg)."""
    for month in sorted(set(months)):
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            conn.execute(create_sql(month))


def existing(names: Iterable[str]) -> list[tuple[Month, str]]:
    """(month, name) of the partitions among these table names, oldest first."""
    found = []
    for table in names:
        match = NAME.match(table)
        if match:
            found.append(((int(match.group(1)), int(match.group(2))), table))
    return sorted(found)


def droppable(partitions: list[tuple[Month, str]], cutoff: datetime) -> list[tuple[Month, str]]:
    """Partitions whose every row is older than cutoff."""
    return [(m, n) for m, n in partitions if start(next_month(m)) <= cutoff]


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """For Alembic: partitions are made at run time, not by migrations; leave them out."""
    return not (type_ == "table" and name is not None and NAME.match(name))
