"""Retention and erasure of the inference log. Each prune or erasure is recorded in
log_erasures (who, when, which filter, how many rows), never the erased values: a subject or
employee_ref filter is kept as the SHA-256 of the value, so an auditor holding the value can
check that it was erased, while the table itself names nobody.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, Connection, Engine, delete, func, insert, text
from sqlmodel import Session, col, select

from persistence import partitions
from persistence.dead_letters import DeadLetters
from persistence.models import Inference, LogErasure

ErasureKind = Literal["subject", "employee_ref"]
# A partition drop locks the parent table; give up rather than stall the writers behind a
# long-running query (the prune can simply run again).
DROP_LOCK_TIMEOUT = "5s"


@dataclass
class Outcome:
    rows: int = 0
    dead_letters: int = 0
    dropped: list[str] = field(default_factory=list)


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def cutoff(days: int, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=days)


def _partitions(conn: Connection) -> list[tuple[partitions.Month, str]]:
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass('inferences')"
        )
    ).scalars()
    return partitions.existing(names)


def _record(conn: Connection, erasure: LogErasure) -> None:
    conn.execute(insert(LogErasure.__table__), [erasure.model_dump()])  # type: ignore[attr-defined]


def prune(
    *,
    engine: Engine,
    dead_letters: DeadLetters | None,
    before: datetime,
    requested_by: str,
    reason: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Delete every prediction created before `before`: whole monthly partitions are dropped
    (no row-by-row delete, no table bloat), then the older rows of the partition that
    straddles `before` are deleted. Each step commits with its own record."""
    outcome = Outcome()
    droppable: list[tuple[partitions.Month, str]] = []

    def record(conn: Connection, rows: int, removed: int = 0) -> None:
        erasure = LogErasure(requested_by=requested_by, reason=reason, filter_kind="created_before",
                             created_before=before, rows=rows, dead_letters=removed)  # fmt: skip
        _record(conn, erasure)

    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            droppable = partitions.droppable(_partitions(conn), before)
        for _, table in droppable:
            with engine.begin() as conn:
                rows = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                if not dry_run:
                    conn.execute(text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
                    conn.execute(text(f"DROP TABLE {table}"))
                    record(conn, rows)
            outcome.rows += rows
            outcome.dropped.append(table)
    older = col(Inference.created_at) < before
    if outcome.dropped:  # a dry run dropped nothing: do not count those rows twice
        older &= col(Inference.created_at) >= partitions.start(
            partitions.next_month(droppable[-1][0])
        )
    with engine.begin() as conn:
        rows = _delete(conn, older, dry_run)
        removed = 0
        if dead_letters is not None:
            removed = _drop_dead_letters(dead_letters, lambda v: _older(v, before), dry_run)
        if not dry_run and (rows or removed or not outcome.dropped):
            record(conn, rows, removed)
    outcome.rows += rows
    outcome.dead_letters = removed
    return outcome


def erase(
    *,
    engine: Engine,
    dead_letters: DeadLetters | None,
    kind: ErasureKind,
    value: str,
    requested_by: str,
    reason: str | None = None,
    dry_run: bool = False,
) -> Outcome:
    """Delete every prediction of one subject, or of one employee_ref, with its dead letters,
    and record that it was done (the record keeps only the value's hash), in one transaction."""
    column = Inference.subject if kind == "subject" else Inference.employee_ref
    with engine.begin() as conn:
        rows = _delete(conn, col(column) == value, dry_run)
        removed = 0
        if dead_letters is not None:
            removed = _drop_dead_letters(dead_letters, lambda v: v.get(kind) == value, dry_run)
        if not dry_run:
            _record(
                conn,
                LogErasure(requested_by=requested_by, reason=reason, filter_kind=kind,
                           filter_sha256=sha256(value), rows=rows, dead_letters=removed),
            )  # fmt: skip
    return Outcome(rows=rows, dead_letters=removed)


def _delete(conn: Connection, condition: ColumnElement[bool], dry_run: bool) -> int:
    if dry_run:
        count = select(func.count()).select_from(Inference).where(condition)
        return int(conn.execute(count).scalar_one())
    return int(conn.execute(delete(Inference).where(condition)).rowcount)


def _older(values: dict[str, str | None], before: datetime) -> bool:
    created = values.get("created_at")
    try:
        return created is not None and datetime.fromisoformat(created) < before
    except ValueError:
        return False


def _drop_dead_letters(
    dead_letters: DeadLetters, matches: Callable[[dict[str, str | None]], bool], dry_run: bool
) -> int:
    if dry_run:
        return sum(1 for e in dead_letters.load() if matches(e.values()))
    with dead_letters.editing() as entries:
        keep = [e for e in entries if not matches(e.values())]
        removed = len(entries) - len(keep)
        entries[:] = keep
    return removed


def erasures(*, engine: Engine, limit: int = 100) -> list[LogErasure]:
    """The newest records of prunes and erasures."""
    with Session(engine) as session:
        query = select(LogErasure).order_by(col(LogErasure.at).desc()).limit(limit)
        return list(session.exec(query))
