"""Where the inference log's rows go: PostgreSQL through COPY, or SQLite through SQLAlchemy.

A sink takes whole COPY text lines (persistence/inference_log/copytext.py) with their column names. It raises
RowsRefused when the database refuses the rows themselves (a data error: retrying cannot help,
so the writer isolates the refused rows), and anything else when it cannot write now.
"""

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import Any, Protocol

from persistence import partitions
from persistence.inference_log import copytext

log = logging.getLogger("attrition.inference_log")

# How often a writer makes sure this month's and next month's partitions exist.
PARTITION_CHECK_SECONDS = 3600.0
# Longest statement of the writer (a COPY of one batch, a partition's DDL waiting for a lock);
# a write that fails is retried, its records stay in the write-ahead file.
WRITE_STATEMENT_SECONDS = 60.0


class RowsRefused(Exception):
    """The database refused these rows for what they contain."""


class ColumnsRefused(RowsRefused):
    """The lines name columns the table does not have: all are refused, nothing is sent."""


@cache
def table_columns() -> frozenset[str]:
    from persistence.models import Inference

    return frozenset(c.name for c in Inference.__table__.columns)  # type: ignore[attr-defined]


def check_columns(columns: tuple[str, ...]) -> None:
    """Refuse column names (read from files) that are not the table's, before any goes into
    SQL: a write-ahead header or a dead letter could name anything."""
    unknown = [c for c in columns if c not in table_columns()]
    if unknown:
        raise ColumnsRefused(f"not a column of inferences: {', '.join(map(repr, unknown))}")
    if not columns or len(set(columns)) < len(columns):
        raise ColumnsRefused(f"no columns, or a column named twice: {columns!r}")


def _refused(data: bytes, reason: str) -> list[tuple[str, str]]:
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()
    return [(line.decode(errors="surrogateescape"), reason) for line in lines]


class Sink(Protocol):
    def write(self, columns: tuple[str, ...], data: bytes, *, fresh: bool = False) -> None:
        """Insert the lines; ids already in the table are ignored. `fresh` promises that none
        of them was handed to the database before (live records, not replays)."""
        ...

    def close(self) -> None: ...


def write_isolating(
    sink: Sink, columns: tuple[str, ...], data: bytes, *, fresh: bool = False
) -> list[tuple[str, str]]:
    """Write the lines; when the database refuses some, write the others and return the
    refused ones with the database's reason. Halving finds k bad rows among n in about
    2k log2(n) writes; a failed write changes nothing, so every half is still fresh."""
    try:
        sink.write(columns, data, fresh=fresh)
        return []
    except ColumnsRefused as exc:  # every line alike
        return _refused(data, str(exc))
    except RowsRefused as exc:
        lines = data.splitlines(keepends=True)
        if len(lines) == 1:
            return _refused(data, str(exc))
        half = len(lines) // 2
        return write_isolating(
            sink, columns, b"".join(lines[:half]), fresh=fresh
        ) + write_isolating(sink, columns, b"".join(lines[half:]), fresh=fresh)


class PostgresSink:
    """psycopg 3 on its own connection. Fresh lines are COPYed straight into the table;
    replays (which may hold rows already in) go through a staging table and insert-or-ignore.
    The lines are sent as they are: the writer thread does no per-row work.
    """

    def __init__(self, url: str, *, connect_timeout: int | None = None) -> None:
        self.conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.connect_timeout = connect_timeout
        self.conn: Any = None
        self.partitioned = False
        self.partitions_checked = 0.0

    def _connection(self) -> Any:
        import psycopg

        from persistence.db import connect_args

        if self.conn is None or self.conn.closed:
            params = connect_args(
                self.conninfo,
                statement_timeout=WRITE_STATEMENT_SECONDS,
                application_name="attrition-log",
            )
            if self.connect_timeout is not None:
                params["connect_timeout"] = self.connect_timeout
            self.conn = psycopg.connect(self.conninfo, **params)
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS inference_stage"
                " (LIKE inferences INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self.partitioned = partitions.is_partitioned(self.conn)
            self.conn.commit()
            self.partitions_checked = 0.0
        if (
            self.partitioned
            and time.monotonic() - self.partitions_checked > PARTITION_CHECK_SECONDS
        ):
            partitions.ensure(self.conn, partitions.upcoming())
            self.partitions_checked = time.monotonic()
        return self.conn

    def write(self, columns: tuple[str, ...], data: bytes, *, fresh: bool = False) -> None:
        import psycopg

        check_columns(columns)
        try:
            conn = self._connection()
            try:
                self._insert(conn, columns, data, fresh)
            except psycopg.errors.CheckViolation as exc:
                if not self.partitioned or "no partition" not in str(exc):
                    raise
                conn.rollback()  # an old record (a replay): make its month's partition
                self._make_partitions(conn, columns, data)
                self._insert(conn, columns, data, fresh)
            conn.commit()
        except RowsRefused:
            raise
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if self.conn is not None:
                self.conn.rollback()
            raise RowsRefused(f"{exc.sqlstate}: {exc}"[:1000]) from exc
        except Exception:
            self.close()
            raise

    @staticmethod
    def _make_partitions(conn: Any, columns: tuple[str, ...], data: bytes) -> None:
        """The partitions of the lines' months. PostgreSQL reads times that Python does not
        (`infinity`, `epoch`) and some have no month a partition can bound: refused rows, not
        an outage, or the batch would wait for ever."""
        try:
            partitions.ensure(conn, partitions.months_in(data, columns))
        except ValueError as exc:
            raise RowsRefused(f"created_at: no monthly partition can hold it ({exc})") from exc

    def _insert(self, conn: Any, columns: tuple[str, ...], data: bytes, fresh: bool) -> None:
        import psycopg

        if fresh:
            try:
                self._copy(conn, "inferences", columns, data)
                return
            except psycopg.errors.UniqueViolation:
                # Only a write whose commit was lost with its connection, then retried:
                # insert-or-ignore instead.
                conn.rollback()
        cols = ", ".join(columns)
        self._copy(conn, "inference_stage", columns, data)
        conn.execute(
            f"INSERT INTO inferences ({cols}) SELECT {cols} FROM inference_stage"
            " ON CONFLICT (id, created_at) DO NOTHING"
        )

    @staticmethod
    def _copy(conn: Any, table: str, columns: tuple[str, ...], data: bytes) -> None:
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp,
        ):
            cp.write(data)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self.conn = None


def _converters() -> dict[str, Callable[[str], Any]]:
    """Text to the Python value SQLAlchemy binds, for each column of the table."""
    from sqlalchemy import JSON

    from persistence.models import Inference

    by_type: dict[type, Callable[[str], Any]] = {
        uuid.UUID: uuid.UUID,
        datetime: datetime.fromisoformat,
        int: int,
        float: float,
        str: str,
    }
    converters: dict[str, Callable[[str], Any]] = {}
    for column in Inference.__table__.columns:  # type: ignore[attr-defined]
        sqltype = getattr(column.type, "impl_instance", column.type)  # a TypeDecorator's base
        converters[column.name] = (
            json.loads if isinstance(sqltype, JSON) else by_type[sqltype.python_type]
        )
    return converters


class SqlAlchemySink:
    """For the embedded SQLite default: parse the lines, SQLAlchemy Core insert-or-ignore."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Any = None
        self.convert = _converters()

    def rows(self, columns: tuple[str, ...], data: bytes) -> list[dict[str, Any]]:
        try:
            rows = []
            for text in data.decode().splitlines():
                values = copytext.parse(text)
                rows.append(
                    {
                        c: None if v is None else self.convert[c](v)
                        for c, v in zip(columns, values, strict=True)
                    }
                )
            return rows
        except (ValueError, KeyError) as exc:  # includes UnicodeDecodeError
            raise RowsRefused(f"not a valid row: {exc}") from exc

    def write(self, columns: tuple[str, ...], data: bytes, *, fresh: bool = False) -> None:
        from sqlalchemy import insert
        from sqlalchemy.exc import DataError, IntegrityError, StatementError

        from persistence.db import make_engine
        from persistence.models import Inference

        check_columns(columns)
        values = self.rows(columns, data)
        if self.engine is None:
            self.engine = make_engine(self.url, pool_size=1)
        stmt = insert(Inference).prefix_with("OR IGNORE")  # type: ignore[arg-type]
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, values)
        except (IntegrityError, DataError) as exc:
            raise RowsRefused(str(exc.orig)[:1000]) from exc
        except StatementError as exc:  # a value the column type cannot bind
            if isinstance(exc.orig, (ValueError, TypeError)):
                raise RowsRefused(str(exc.orig)[:1000]) from exc
            raise

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None


def make_sink(url: str) -> Sink:
    if url.startswith("postgresql"):
        return PostgresSink(url)
    return SqlAlchemySink(url)
