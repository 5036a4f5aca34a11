"""Records the database refused (or would refuse), kept in the `dead_letters` table until
`python -m persistence dead-letters retry` writes them or an erasure or prune deletes them.

A dead letter can arise where the database cannot be asked: text PostgreSQL cannot hold is
refused on the request path, and the database may be away. So every dead letter is first
appended to a JSON-lines file in the instance's data folder (under an exclusive flock, by any
worker), and the writer thread moves the file's entries into the table as soon as it reaches
the database: idempotent, as each entry carries its id, and leaving out (and counting) the
ones an erasure made after them covers (persistence/retention.py).
"""

import fcntl
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, update
from sqlmodel import col, select

from persistence import partitions
from persistence.inference_log import copytext
from persistence.models import DeadLetterRow, Inference
from persistence.retention import (
    Keys,
    Tombstones,
    count_late,
    covering,
    keys,
    storable,
    storable_text,
    text_bytes,
    transaction,
)

log = logging.getLogger("attrition.inference_log")

# The table's count (for /health and the gauge) is refreshed this often by each writer.
RECOUNT_SECONDS = 10.0
# Entries of files written before dead letters had ids get one derived from their text.
LEGACY_IDS = uuid.UUID("6f3e0d1c-5b0a-4c57-9a43-d3e1c0a8b001")


@dataclass(frozen=True)
class DeadLetter:
    at: datetime
    columns: tuple[str, ...]
    line: bytes  # one COPY text line exactly as refused, without its newline
    error: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def text(self) -> str:
        return self.line.decode("utf-8", "surrogateescape")

    def values(self) -> dict[str, str | None]:
        return dict(zip(self.columns, copytext.parse(self.text()), strict=False))

    def keys(self) -> Keys:
        return keys(self.columns, self.text())

    def data(self) -> bytes:
        """The line as the database gets it."""
        return self.line + b"\n"

    def to_json(self) -> str:
        # ensure_ascii: bytes that are not UTF-8 survive as escaped surrogates.
        fields = {"id": str(self.id), "at": self.at.isoformat(), "columns": list(self.columns)}
        return json.dumps({**fields, "line": self.text(), "error": self.error}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "DeadLetter":
        d = json.loads(text)
        letter_id = uuid.UUID(d["id"]) if "id" in d else uuid.uuid5(LEGACY_IDS, text.strip())
        return cls(datetime.fromisoformat(d["at"]), tuple(d["columns"]), text_bytes(d["line"]),
                   d["error"], letter_id)  # fmt: skip

    def row(self) -> dict[str, Any]:
        k = self.keys()
        return {
            "id": self.id,
            "at": self.at,
            "columns": "\t".join(self.columns),
            "line": self.line,
            "error": storable_text(self.error),
            "record_id": storable(k.record_id),
            "subject": storable(k.subject),
            "employee_ref": storable(k.employee_ref),
            "created_at": k.created_at,
        }

    @classmethod
    def from_row(cls, row: Any) -> "DeadLetter":
        return cls(row.at, tuple(row.columns.split("\t")), bytes(row.line), row.error, row.id)


class DeadLetters:
    """The dead letters of one data folder: its file, and the table once `tombstones` has a
    database to reach."""

    def __init__(
        self, path: Path, *, fsync: bool = True, tombstones: Tombstones | None = None
    ) -> None:
        self.path = path
        self.fsync = fsync
        self.tombstones = tombstones
        self._counted: tuple[tuple[int, int], int] | None = None
        self._moved: tuple[tuple[int, int], int] | None = None  # the file as the last move left it
        self._stored = 0
        self._stored_at = float("-inf")
        self._failing = False

    @contextmanager
    def _locked(self, flags: int) -> Iterator[int]:
        """The file open and exclusively locked (the current file, not one renamed away by an
        earlier version's commands)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, flags | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def add(self, columns: tuple[str, ...], refused: list[tuple[str, str]]) -> None:
        """Keep these (line, reason) pairs in the file."""
        if not refused:
            return
        at = datetime.now(UTC)
        data = "".join(
            DeadLetter(at, columns, text_bytes(line), why).to_json() for line, why in refused
        )
        with self._locked(os.O_WRONLY | os.O_APPEND) as fd:
            os.write(fd, data.encode())
            if self.fsync:
                os.fsync(fd)

    def local(self) -> list[DeadLetter]:
        """The entries of the file (not moved into the table yet)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return readable(text.splitlines())

    def load(self) -> list[DeadLetter]:
        """Every dead letter this folder knows of: the file's, then the table's."""
        engine = self.tombstones.engine if self.tombstones else None
        return self.local() + (stored(engine=engine) if engine is not None else [])

    def local_count(self) -> int:
        """Entries in the file (recounted only when it changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0
        key = (st.st_size, st.st_mtime_ns)
        if self._counted is None or self._counted[0] != key:
            with open(self.path, "rb") as f:
                n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
            self._counted = (key, n)
        return self._counted[1]

    def count(self) -> int:
        """The file's entries and the table's rows as last counted (no database work here:
        request handlers call it)."""
        return self.local_count() + self._stored

    def move(self) -> int:
        """Move the file's entries into the table (ids already there are left as they are);
        return how many were handed over. Entries an erasure covers are dropped and counted on
        it. Raises when the database cannot be written."""
        engine = self.tombstones.engine if self.tombstones else None
        if engine is None or self.local_count() == 0 or self._moved == self._counted:
            return 0  # nothing, or only lines that are no dead letters, unchanged since
        # The file is not locked while the database works (an erasure may hold it off): a
        # request appending a dead letter must not wait for that. Two movers may hand the same
        # entries over: ids make that harmless, and tombstones an erasure in between.
        with self._locked(os.O_RDONLY) as fd, open(os.dup(fd), closefd=True) as f:
            entries = readable(f.read().splitlines())
        moved = 0
        if entries:
            with transaction(engine, exclusive=False) as conn:
                erased = covering(conn, [e.keys() for e in entries])
                keep = [e.row() for e, by in zip(entries, erased, strict=True) if by is None]
                count_late(conn, Counter(by for by in erased if by is not None))
                insert_ignoring(conn, keep)
            moved = len(keep)
        done = {e.id for e in entries}
        with self._locked(os.O_RDWR) as fd:
            with open(os.dup(fd), closefd=True) as f:
                lines = f.read().splitlines()
            left = [line for line in lines if line.strip() and _id(line) not in done]
            unreadable = sum(_id(line) is None for line in left)
            if unreadable:  # kept for a person to look at
                log.error("%s holds lines that are no dead letters; left there", self.path)
            os.ftruncate(fd, 0)
            os.pwrite(fd, "".join(line + "\n" for line in left).encode(), 0)
            if self.fsync:
                os.fsync(fd)
        self.local_count()
        # Only lines that are no dead letters left: not worth reading again until it changes.
        self._moved = self._counted if len(left) == unreadable else None
        self._stored_at = float("-inf")  # recount at the next sync
        return moved

    def sync(self) -> None:
        """Move the file's entries into the table and recount it when due. For the writer
        thread, after it wrote a batch: never raises (the entries stay in the file)."""
        if self.tombstones is None or self.tombstones.engine is None:
            return
        try:
            self.move()
            if time.monotonic() - self._stored_at >= RECOUNT_SECONDS:
                with self.tombstones.engine.connect() as conn:
                    self._stored = count_stored(conn)
                self._stored_at = time.monotonic()
            self._failing = False
        except Exception as exc:  # noqa: BLE001 - the next batch tries again
            if not self._failing:
                log.warning("dead letters stay in %s for now: %s", self.path, exc)
            self._failing = True


def _id(line: str) -> uuid.UUID | None:
    """The id of a file's line, or None for a line that is no dead letter (torn by a crash)."""
    try:
        return DeadLetter.from_json(line).id
    except (ValueError, KeyError, TypeError):
        return None


def readable(lines: list[str]) -> list[DeadLetter]:
    """The dead letters among a file's lines."""
    return [DeadLetter.from_json(line) for line in lines if line.strip() and _id(line)]


def insert_ignoring(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert dead letters; ids already in the table are left as they are."""
    if not rows:
        return
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(DeadLetterRow).on_conflict_do_nothing(), rows)


def count_stored(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(DeadLetterRow)).scalar_one())


def stored(*, engine: Engine) -> list[DeadLetter]:
    """The table's dead letters, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(DeadLetterRow).order_by(col(DeadLetterRow.at))).all()
    return [DeadLetter.from_row(r) for r in rows]


@dataclass
class Retried:
    written: int = 0
    erased: int = 0  # covered by an erasure made after them: deleted, not written
    refused: list[tuple[DeadLetter, str]] = field(default_factory=list)


def retry(*, engine: Engine) -> Retried:
    """Write the table's dead letters into the log (insert-or-ignore) and delete them; keep the
    ones still refused with the database's new reason.

    One transaction from reading them to deleting them, with the erasure lock held shared and
    the rows locked: an erasure waits for it, or it for the erasure, so none is undone.
    """
    out = Retried()
    if engine.dialect.name == "postgresql":
        _partitions_for(engine)
    with transaction(engine, exclusive=False) as conn:
        rows = conn.execute(
            select(DeadLetterRow).order_by(col(DeadLetterRow.at)).with_for_update()
        ).all()
        letters = [DeadLetter.from_row(r) for r in rows]
        erased = covering(conn, [e.keys() for e in letters])
        count_late(conn, Counter(by for by in erased if by is not None))
        write = _writer(conn, engine)
        done: list[uuid.UUID] = []
        for letter, by in zip(letters, erased, strict=True):
            if by is not None:
                out.erased += 1
                done.append(letter.id)
                continue
            error = write(letter)
            if error is None:
                out.written += 1
                done.append(letter.id)
            else:
                out.refused.append((letter, error))
                conn.execute(
                    update(DeadLetterRow)
                    .where(col(DeadLetterRow.id) == letter.id)
                    .values(error=storable_text(error))
                )
        if done:
            conn.execute(delete(DeadLetterRow).where(col(DeadLetterRow.id).in_(done)))
    return out


def _partitions_for(engine: Engine) -> None:
    """The monthly partitions the dead letters' rows need (before the retry's transaction:
    creating one takes its own locks)."""
    with engine.connect() as conn:
        created = conn.execute(
            select(DeadLetterRow.created_at).where(col(DeadLetterRow.created_at).is_not(None))
        ).scalars()
        months = {partitions.month_of(c) for c in created}
    if not months:
        return
    raw = engine.raw_connection()
    try:
        pg = raw.driver_connection
        assert pg is not None
        if partitions.is_partitioned(pg):
            partitions.ensure(pg, months)
        pg.commit()
    finally:
        raw.close()


def _writer(conn: Connection, engine: Engine) -> Any:
    """A function writing one dead letter's row in this transaction (in a savepoint, so a
    refused row changes nothing): None when written or already there, else the reason."""
    if conn.dialect.name == "postgresql":
        import psycopg

        pg = conn.connection.driver_connection
        assert pg is not None
        pg.execute(
            "CREATE TEMP TABLE dead_letter_stage (LIKE inferences INCLUDING DEFAULTS) ON COMMIT DROP"
        )

        def insert(names: tuple[str, ...], data: bytes) -> None:
            columns = ", ".join(names)
            with pg.cursor() as cur:
                with cur.copy(f"COPY dead_letter_stage ({columns}) FROM STDIN") as copy:
                    copy.write(data)
                cur.execute(
                    f"INSERT INTO inferences ({columns}) SELECT {columns} FROM dead_letter_stage"
                    " ON CONFLICT (id, created_at) DO NOTHING"
                )
                cur.execute("DELETE FROM dead_letter_stage")

        refused: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError)
    else:
        from sqlalchemy import insert as sql_insert
        from sqlalchemy.exc import DataError, IntegrityError, StatementError

        from persistence.inference_log.sinks import RowsRefused, SqlAlchemySink

        parse = SqlAlchemySink(str(engine.url)).rows
        statement = sql_insert(Inference).prefix_with("OR IGNORE")  # type: ignore[arg-type]

        def insert(names: tuple[str, ...], data: bytes) -> None:
            conn.execute(statement, parse(names, data))

        refused = (RowsRefused, IntegrityError, DataError, StatementError)

    def write(letter: DeadLetter) -> str | None:
        problem = unknown_columns(letter.columns)
        if problem:
            return problem
        try:
            with conn.begin_nested():
                insert(letter.columns, letter.data())
        except refused as exc:
            return str(getattr(exc, "orig", None) or exc)[:1000]
        return None

    return write


def unknown_columns(columns: Sequence[str]) -> str | None:
    """Why these cannot be the log's columns (they are put into SQL), or None."""
    from persistence.inference_log.sinks import ColumnsRefused, check_columns

    try:
        check_columns(tuple(columns))
    except ColumnsRefused as exc:
        return str(exc)
    if not {"id", "created_at"} <= set(columns):
        return "the line has no id or created_at"
    return None
