"""Retention and erasure of the inference log, with the outcomes and dead letters of the
predictions they delete.

Each prune or erasure is recorded in log_erasures (who, when, which filter, how many rows of
each kind), never the erased values: a subject or employee_ref filter is kept as the SHA-256 of
the value, so an auditor holding the value can check that it was erased, while the table itself
names nobody.

An erasure is also a tombstone. A record made before it can reach the database after it: a
stopped worker's write-ahead file replayed, a dead letter moved from an instance's folder, a
dead letter retried. Those paths check what they bring against the erasures (by the hashes)
and delete the records an erasure made after them covers, counting them on its record
(`late_copies`). Erasures take ERASURE_LOCK exclusively and those paths take it shared, so no
record can slip between an erasure's delete and its record.
"""

import hashlib
import logging
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

import sqlalchemy
from sqlalchemy import ColumnElement, Connection, Engine, Select, delete, func, insert, text, update
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from persistence import partitions
from persistence.inference_log import copytext
from persistence.models import DeadLetterRow, Inference, LogErasure, Outcome

log = logging.getLogger("attrition.inference_log")

ErasureKind = Literal["subject", "employee_ref"]
KINDS: tuple[ErasureKind, ...] = ("subject", "employee_ref")
# A partition drop locks the parent table; give up rather than stall the writers behind a
# long-running query (the prune can simply run again).
DROP_LOCK_TIMEOUT = "5s"
# PostgreSQL advisory lock (b"attreras" as a 64-bit integer), see the module docstring.
ERASURE_LOCK = 0x6174747265726173
# What an erased subject's name becomes on outcomes it recorded for other subjects' predictions.
ERASED_RECORDER = "[erased]"
# What PostgreSQL text cannot hold: NUL, and lone surrogates (bytes that were not UTF-8).
NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
# The late-copy check's own connection gives up rather than hold a writer thread.
CONNECT_TIMEOUT_SECONDS = 3


@dataclass
class Deleted:
    rows: int = 0
    dead_letters: int = 0
    outcomes: int = 0
    recorded_by_erased: int = 0
    dropped: list[str] = field(default_factory=list)


class Keys(NamedTuple):
    """What erasure and retention match in a record (None where it has no readable value)."""

    record_id: str | None
    created_at: datetime | None
    subject: str | None
    employee_ref: str | None


def text_bytes(value: str) -> bytes:
    """UTF-8 of `value`, giving back as they were the bytes that were not UTF-8 (decoded with
    surrogateescape) and keeping lone surrogates (which no database column can hold)."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def sha256(value: str) -> str:
    return hashlib.sha256(text_bytes(value)).hexdigest()


def storable(value: str | None) -> str | None:
    """`value` if a text column can hold it exactly, else None."""
    return None if value is None or NOT_TEXT.search(value) else value


def storable_text(message: str) -> str:
    """A message (the database's may quote the refused row) as a text column can hold it."""
    return NOT_TEXT.sub("\ufffd", message)


def keys(columns: Sequence[str], line: str) -> Keys:
    """The keys of one COPY text line (without its newline)."""
    values = dict(zip(columns, copytext.parse(line), strict=False))
    created: datetime | None = None
    try:
        parsed = datetime.fromisoformat(values.get("created_at") or "")
        created = parsed if parsed.tzinfo is not None else None
    except ValueError:
        pass
    return Keys(values.get("id"), created, values.get("subject"), values.get("employee_ref"))


def cutoff(days: int, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - timedelta(days=days)


@contextmanager
def transaction(engine: Engine, *, exclusive: bool) -> Iterator[Connection]:
    """A transaction ordered against erasures: exclusive for an erasure, shared for what may
    bring an erased record back. On SQLite, BEGIN IMMEDIATE: the one writer lock orders them."""
    with engine.begin() as conn:
        hold_erasures(conn, exclusive=exclusive)
        yield conn


def hold_erasures(conn: Connection, *, exclusive: bool = False) -> None:
    """As the first statement of a transaction: wait for a running erasure, and make the next
    one wait until this transaction ends."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        how = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(text(f"SELECT {how}(:key)"), {"key": ERASURE_LOCK})


def covering(conn: Connection, records: Sequence[Keys]) -> list[uuid.UUID | None]:
    """For each record, the newest erasure of its subject or employee_ref made at or after its
    created_at (any, when it has no readable created_at), or None."""
    hashes = {sha256(v) for k in records for v in (k.subject, k.employee_ref) if v is not None}
    if not hashes:
        return [None] * len(records)
    found = conn.execute(
        select(LogErasure.id, LogErasure.filter_kind, LogErasure.filter_sha256, LogErasure.at)
        .where(col(LogErasure.filter_kind).in_(KINDS))
        .where(col(LogErasure.filter_sha256).in_(sorted(hashes)))
    ).all()
    erasures: dict[tuple[str, str], list[tuple[datetime, uuid.UUID]]] = defaultdict(list)
    for erasure_id, kind, digest, at in found:
        erasures[(kind, digest)].append((at, erasure_id))
    result: list[uuid.UUID | None] = []
    for k in records:
        newest: tuple[datetime, uuid.UUID] | None = None
        for kind, value in (("subject", k.subject), ("employee_ref", k.employee_ref)):
            if value is None:
                continue
            for at, erasure_id in erasures.get((kind, sha256(value)), []):
                if (k.created_at is None or k.created_at <= at) and (
                    newest is None or at > newest[0]
                ):
                    newest = (at, erasure_id)
        result.append(newest[1] if newest else None)
    return result


def count_late(conn: Connection, erasures: Counter[uuid.UUID]) -> None:
    """Add late copies removed on arrival to the records of the erasures that covered them."""
    for erasure_id, n in erasures.items():
        conn.execute(
            update(LogErasure)
            .where(col(LogErasure.id) == erasure_id)
            .values(late_copies=col(LogErasure.late_copies) + n)
        )


class Tombstones:
    """The erasures, applied to records that reach the database after them. One per writer,
    with a small engine of its own (opened on first use)."""

    def __init__(self, url: str | None = None, *, engine: Engine | None = None) -> None:
        self.url = url
        self._engine = engine
        self._owned = False

    @property
    def engine(self) -> Engine | None:
        if self._engine is None and self.url is not None:
            from persistence.db import make_engine

            url = make_url(self.url)
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_SECONDS)})
            self._engine = make_engine(url.render_as_string(hide_password=False), pool_size=1)
            self._owned = True
        return self._engine

    def remove_late_copies(self, columns: Sequence[str], data: bytes) -> int:
        """After `data` (COPY text lines) was written: delete its rows that an erasure made
        after them covers, and count them on that erasure. Returns how many went.

        The writer calls it after each committed batch of its own file (its database may have
        been away while an erasure ran elsewhere) and after replays of stopped workers' files:
        one short transaction per batch, and a parse of each line's keys only when an erasure
        is newer than one of the batch's records.
        """
        engine = self.engine
        if engine is None:
            return 0
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        removed = 0
        with transaction(engine, exclusive=False) as conn:
            newest = conn.execute(
                select(func.max(LogErasure.at)).where(col(LogErasure.filter_kind).in_(KINDS))
            ).scalar_one()
            if newest is None or _all_after(columns, lines, newest):
                return 0
            records = [keys(columns, line) for line in lines]
            by_erasure: dict[uuid.UUID, list[str]] = defaultdict(list)
            for record, erasure in zip(records, covering(conn, records), strict=True):
                if erasure is not None and record.record_id is not None:
                    by_erasure[erasure].append(record.record_id)
            late: Counter[uuid.UUID] = Counter()
            for erasure, ids in by_erasure.items():
                gone = conn.execute(
                    delete(Inference).where(col(Inference.id).in_([uuid.UUID(i) for i in ids]))
                ).rowcount
                late[erasure] += gone
                removed += gone
            count_late(conn, +late)
        if removed:
            log.warning("removed %d records that arrived after their erasure", removed)
        return removed

    def close(self) -> None:
        if self._owned and self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _all_after(columns: Sequence[str], lines: list[str], moment: datetime) -> bool:
    """Whether every line was made after `moment` (read from created_at alone)."""
    try:
        at = list(columns).index("created_at")
        return all(datetime.fromisoformat(line.split("\t")[at]) > moment for line in lines)
    except (ValueError, IndexError, TypeError):  # unreadable: look at it closely
        return False


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


def _count(conn: Connection, query: SelectOfScalar[int]) -> int:
    return int(conn.execute(query).scalar_one())


def _delete_outcomes(conn: Connection, of: Select[Any] | SelectOfScalar[Any], dry_run: bool) -> int:
    """The outcomes of the predictions `of` selects (their ids)."""
    matched = col(Outcome.inference_id).in_(of)
    if dry_run:
        return _count(conn, select(func.count()).select_from(Outcome).where(matched))
    return int(conn.execute(delete(Outcome).where(matched)).rowcount)


def _delete_rows(conn: Connection, condition: ColumnElement[bool], dry_run: bool) -> int:
    if dry_run:
        return _count(conn, select(func.count()).select_from(Inference).where(condition))
    return int(conn.execute(delete(Inference).where(condition)).rowcount)


def _delete_letters(conn: Connection, condition: ColumnElement[bool], dry_run: bool) -> int:
    if dry_run:
        return _count(conn, select(func.count()).select_from(DeadLetterRow).where(condition))
    return int(conn.execute(delete(DeadLetterRow).where(condition)).rowcount)


def _orphaned_outcomes(conn: Connection, dry_run: bool) -> int:
    """Outcomes whose prediction is gone (recorded while it was being deleted)."""
    orphaned = ~select(Inference.id).where(col(Inference.id) == col(Outcome.inference_id)).exists()
    if dry_run:
        return _count(conn, select(func.count()).select_from(Outcome).where(orphaned))
    return int(conn.execute(delete(Outcome).where(orphaned)).rowcount)


def prune(
    *,
    engine: Engine,
    before: datetime,
    requested_by: str,
    reason: str | None = None,
    dry_run: bool = False,
) -> Deleted:
    """Delete every prediction created before `before`, with its outcomes, and the dead letters
    of records created (or, unreadable, refused) before it: whole monthly partitions are
    dropped (no row-by-row delete, no table bloat), then the older rows of the partition that
    straddles `before` are deleted. Each step commits with its own record."""
    out = Deleted()
    droppable: list[tuple[partitions.Month, str]] = []

    def record(conn: Connection, rows: int, outcomes: int, letters: int = 0) -> None:
        erasure = LogErasure(requested_by=requested_by, reason=reason, filter_kind="created_before",
                             created_before=before, rows=rows, dead_letters=letters,
                             outcomes=outcomes)  # fmt: skip
        _record(conn, erasure)

    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            droppable = partitions.droppable(_partitions(conn), before)
        for _, table in droppable:
            with engine.begin() as conn:
                rows = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                ids = sqlalchemy.select(text("id")).select_from(text(table))
                outcomes = _delete_outcomes(conn, ids, dry_run)
                if not dry_run:
                    conn.execute(text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
                    conn.execute(text(f"DROP TABLE {table}"))
                    record(conn, rows, outcomes)
            out.rows += rows
            out.outcomes += outcomes
            out.dropped.append(table)
    older = col(Inference.created_at) < before
    if out.dropped:  # a dry run dropped nothing: do not count those rows twice
        older &= col(Inference.created_at) >= partitions.start(
            partitions.next_month(droppable[-1][0])
        )
    old_letter = func.coalesce(col(DeadLetterRow.created_at), col(DeadLetterRow.at)) < before
    with transaction(engine, exclusive=True) as conn:
        outcomes = _delete_outcomes(conn, select(Inference.id).where(older), dry_run)
        rows = _delete_rows(conn, older, dry_run)
        outcomes += _orphaned_outcomes(conn, dry_run)
        letters = _delete_letters(conn, old_letter, dry_run)
        if not dry_run and (rows or outcomes or letters or not out.dropped):
            record(conn, rows, outcomes, letters)
    out.rows += rows
    out.outcomes += outcomes
    out.dead_letters = letters
    return out


def erase(
    *,
    engine: Engine,
    kind: ErasureKind,
    value: str,
    requested_by: str,
    reason: str | None = None,
    dry_run: bool = False,
) -> Deleted:
    """Delete every prediction of one subject, or of one employee_ref, with their outcomes and
    dead letters (by subject also the subject's name on outcomes it recorded for others), and
    record that it was done (the record keeps only the value's hash), in one transaction."""
    matched = col(getattr(Inference, kind)) == value
    # A value no text column can hold (NUL, bytes that are not UTF-8) can only be in dead letters.
    in_tables = storable(value) is not None
    with transaction(engine, exclusive=True) as conn:
        letters = _erase_letters(conn, kind, value, dry_run)
        outcomes = rows = recorded = 0
        if in_tables:
            outcomes = _delete_outcomes(conn, select(Inference.id).where(matched), dry_run)
            rows = _delete_rows(conn, matched, dry_run)
        if kind == "subject" and in_tables:  # their name on others' predictions' outcomes
            by_them = col(Outcome.recorded_by) == value
            if dry_run:
                recorded = _count(conn, select(func.count()).select_from(Outcome).where(by_them))
            else:
                recorded = int(
                    conn.execute(
                        update(Outcome).where(by_them).values(recorded_by=ERASED_RECORDER)
                    ).rowcount
                )
        if not dry_run:
            _record(
                conn,
                LogErasure(requested_by=requested_by, reason=reason, filter_kind=kind,
                           filter_sha256=sha256(value), rows=rows, dead_letters=letters,
                           outcomes=outcomes, recorded_by_erased=recorded),
            )  # fmt: skip
    return Deleted(rows=rows, dead_letters=letters, outcomes=outcomes, recorded_by_erased=recorded)


def _erase_letters(conn: Connection, kind: ErasureKind, value: str, dry_run: bool) -> int:
    column = col(getattr(DeadLetterRow, kind))
    if storable(value) is not None:
        return _delete_letters(conn, column == value, dry_run)
    # Such a value can only be in the lines of dead letters whose key column is NULL.
    ids = [
        letter_id
        for letter_id, columns, line in conn.execute(
            select(DeadLetterRow.id, DeadLetterRow.columns, DeadLetterRow.line).where(
                column.is_(None)
            )
        )
        if getattr(keys(columns.split("\t"), line.decode("utf-8", "surrogateescape")), kind)
        == value
    ]
    return _delete_letters(conn, col(DeadLetterRow.id).in_(ids), dry_run) if ids else 0


def erasures(*, engine: Engine, limit: int = 100) -> list[LogErasure]:
    """The newest records of prunes and erasures."""
    with Session(engine) as session:
        query = select(LogErasure).order_by(col(LogErasure.at).desc()).limit(limit)
        return list(session.exec(query))  # type: ignore[call-overload]
