"""The inference log: a request's records are appended to its worker's write-ahead file before
the answer is sent; a background writer thread copies them into the database and deletes what
the database has. The file is also the outage buffer: while the database is away the records
simply stay in it, and any worker replays the files of a dead one (idempotently: the record id
is the key). Rows the database refuses are isolated as dead letters (persistence/inference_log/dead_letters.py).
"""

import logging
import threading
import time
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import anyio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, Tracer

from persistence.inference_log import copytext, wal
from persistence.inference_log.dead_letters import DeadLetters
from persistence.inference_log.sinks import Sink, write_isolating
from persistence.inference_log.wal import LogUnavailable, WriteAheadLog
from persistence.retention import Tombstones

__all__ = ["COLUMNS", "InferenceLog", "LogUnavailable", "Record", "encode"]

log = logging.getLogger("attrition.inference_log")

# Dead workers' directories are looked for this often (a worker replays them at start too).
ORPHAN_SCAN_SECONDS = 10.0
# A pass replays at most this many batches of a dead worker's records, so that a long replay
# (a worker that died during an outage) never holds this worker's own records back.
REPLAY_BATCHES_PER_PASS = 4


class Abandoned(Exception):
    """close() gave up waiting: the writer stops after the batch it is in."""


class Record(NamedTuple):
    """One inference as it is written, fields in column order: ids as strings, time as an
    ISO 8601 string with offset, inputs as JSON text (made once by pydantic).

    A tuple, because one is made per prediction on the event loop. A new nullable column is one
    more field with a None default here (and in the table).
    """

    id: str
    created_at: str
    subject: str
    route: str
    model_tag: str
    batch_id: str | None
    position: int | None
    inputs: str
    probability: float
    label: str
    threshold: float
    latency_ms: float
    employee_ref: str | None = None
    drivers: str | None = None  # the explanation as JSON text, when the caller asked for one
    trace_id: str | None = None  # 32 hex digits (api/tracing.py)
    # The model that did not answer, on the same features (ATTRITION_CHALLENGER_TAG).
    challenger_tag: str | None = None
    challenger_probability: float | None = None
    challenger_label: str | None = None


COLUMNS: tuple[str, ...] = Record._fields


def unstorable(values: tuple[Any, ...], columns: tuple[str, ...] = COLUMNS) -> str | None:
    """Why PostgreSQL could not store this record's text, or None."""
    for name, value in zip(columns, values, strict=True):
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            return f"{name} contains NUL (U+0000), which PostgreSQL text cannot hold"
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"{name} contains a lone surrogate: not valid UTF-8"
    return None


def encode(records: list[Record]) -> tuple[bytes, int, list[tuple[str, str]]]:
    """COPY text lines of the storable records, their count, and the others with a reason.

    Fast path for the whole request at once: join, then check the text once (a NUL stands in
    for NULL until then: NUL is refused anyway, so a real one shows up in the count). Escaping
    and checking record by record is the fallback; both give the same lines.
    """
    nulls = 0
    lines = []
    for record in records:
        parts = []
        for v in record:
            if type(v) is str:
                parts.append(v)
            elif v is None:
                parts.append("\x00")
                nulls += 1
            else:
                parts.append(copytext.field(v) if isinstance(v, str) else repr(v))
        lines.append("\t".join(parts))
    text = "\n".join(lines) + "\n"
    n = len(records)
    if (
        "\\" not in text
        and "\r" not in text
        and text.count("\n") == n
        and text.count("\t") == n * (len(COLUMNS) - 1)
        and text.count("\x00") == nulls
    ):
        try:
            return text.replace("\x00", copytext.NULL).encode(), n, []
        except UnicodeEncodeError:
            pass
    good: list[str] = []
    refused: list[tuple[str, str]] = []
    for record in records:
        row = copytext.line(record)
        reason = unstorable(record)
        if reason:
            refused.append((row.rstrip("\n"), reason))
        else:
            good.append(row)
    return "".join(good).encode(), len(good), refused


class Metrics(Protocol):
    def observe(self, *, backlog: int, dead_letters: int) -> None: ...
    def written(self, n: int) -> None: ...
    def failed(self, n: int) -> None: ...
    def replayed(self, n: int) -> None: ...
    def dead_lettered(self, n: int) -> None: ...


class NoMetrics:
    def observe(self, *, backlog: int, dead_letters: int) -> None: ...
    def written(self, n: int) -> None: ...
    def failed(self, n: int) -> None: ...
    def replayed(self, n: int) -> None: ...
    def dead_lettered(self, n: int) -> None: ...


class InferenceLog:
    """Write-ahead file -> background writer thread -> database.

    Handlers never wake the writer for a few records: it sleeps for the flush interval, or
    until a full batch is waiting. Waking it per record (a queue.Queue) cost 1.3 more context
    switches and ~0.07 ms more CPU per prediction as the two threads traded the GIL.
    """

    def __init__(
        self,
        sink: Sink,
        directory: Path,
        *,
        batch_bytes: int = 1 << 20,
        flush_interval: float = 0.2,
        retry_interval: float = 2.0,
        fsync: bool = False,
        metrics: Metrics | None = None,
        database_url: str | None = None,
    ) -> None:
        self.sink = sink
        self.wal = WriteAheadLog(directory / "wal", COLUMNS, fsync=fsync)
        # With a database_url, dead letters move from the file into the database's table, and
        # replays drop what an erasure made after their records covers.
        self.tombstones = Tombstones(database_url)
        self.dead_letters = DeadLetters(
            directory / "dead-letters.jsonl", fsync=fsync, tombstones=self.tombstones
        )
        self.fsync = fsync
        self.batch_bytes = batch_bytes
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self.metrics = metrics or NoMetrics()
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.abandoned = threading.Event()
        self.healthy = True
        self.orphaned = 0  # records of dead workers not replayed yet (the database is away)
        self.replaying = False  # a dead worker's directory is part-way through its replay
        # Whoever of close() and the exiting writer comes second closes the files and the
        # connection, so that they are never closed under a writer still using them.
        self.handover = threading.Lock()
        self.closed = False
        self.writer_done = False
        self.released: bool | None = None  # what _release() returned
        self.thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        # With tracing on (set by the service, docs/operations/tracing.md): spans for the
        # write-ahead append and the database write, linked to the requests' span contexts,
        # kept here one per line in the order the lines are appended.
        self.tracer: Tracer | None = None
        self.span_contexts: deque[SpanContext] = deque()

    def start(self) -> "InferenceLog":
        self.thread.start()
        return self

    # -- request handlers ------------------------------------------------------------------

    def append(self, records: list[Record]) -> int:
        """Put the records on this machine's storage (one write); return the position that
        sync() must reach. Records PostgreSQL could not store go to the dead letters instead.
        Raises LogUnavailable when they cannot be kept: the prediction must not be answered."""
        data, n, refused = encode(records)
        if refused:
            try:
                self.dead_letters.add(COLUMNS, refused)
            except OSError as exc:
                raise LogUnavailable(f"cannot keep a dead letter: {exc}") from exc
            self.metrics.dead_lettered(len(refused))
            log.error(
                "%d records cannot be stored (%s); kept as dead letters",
                len(refused),
                refused[0][1],
            )
        if self.tracer is None or not n:
            position = self.wal.append(data, n) if n else self.wal.position
        else:
            # Queued before the lines exist, so the writer never sees a line without its context
            # (appends come from the event loop alone: the queue's order is the file's).
            self.span_contexts.extend([trace.get_current_span().get_span_context()] * n)
            try:
                with self.tracer.start_as_current_span(
                    "attrition.log.append",
                    attributes={"attrition.log.records": n, "attrition.log.bytes": len(data)},
                ):
                    position = self.wal.append(data, n)
            except BaseException:
                for _ in range(n):
                    self.span_contexts.pop()
                raise
        if not self.wakeup.is_set() and self.wal.backlog_bytes() >= self.batch_bytes:
            self.wakeup.set()
        return position

    async def record(self, records: list[Record]) -> None:
        """append(), and with fsync on, wait (off the event loop) until the disk has them."""
        position = self.append(records)
        if self.fsync:
            await anyio.to_thread.run_sync(self.wal.sync, position)

    def state(self) -> dict[str, Any]:
        ok = self.healthy and self.orphaned == 0
        return {
            "state": "ok" if ok else "degraded",
            "backlog_records": self.wal.backlog_records(),
            "orphaned_records": self.orphaned,
            "dead_letter_records": self.dead_letters.count(),
            "fsync": self.fsync,
        }

    # -- the writer thread -----------------------------------------------------------------

    def _deliver(self, columns: tuple[str, ...], data: bytes, *, fresh: bool) -> int:
        """Write the lines, isolating the ones the database refuses; return how many went in.
        Raises when the database cannot be reached."""
        refused = write_isolating(self.sink, columns, data, fresh=fresh)
        if refused:
            self.dead_letters.add(columns, refused)
            self.metrics.dead_lettered(len(refused))
            log.error("the database refused %d records (%s); kept as dead letters",
                      len(refused), refused[0][1])  # fmt: skip
        return data.count(b"\n") - len(refused)

    def _traced_deliver(self, columns: tuple[str, ...], data: bytes, n: int) -> int:
        """_deliver of fresh lines, in a span linked to the requests they came from (their
        contexts leave the queue once written: a retried chunk keeps its links)."""
        if self.tracer is None:
            return self._deliver(columns, data, fresh=True)
        queued = min(n, len(self.span_contexts))
        requests = list(islice(self.span_contexts, queued))
        unique = {(c.trace_id, c.span_id): c for c in requests if c.is_valid}  # a batch: one
        links = [Link(c) for c in unique.values()]
        with self.tracer.start_as_current_span(
            "attrition.log.copy",
            context=Context(),  # its own trace: it serves many requests
            links=links,
            attributes={"attrition.log.records": n, "attrition.log.bytes": len(data)},
        ):
            written = self._deliver(columns, data, fresh=True)
        for _ in range(queued):
            self.span_contexts.popleft()
        return written

    def _drain(self) -> None:
        """Write the records that were waiting when it began (never more than about one more
        batch): under a load that never pauses, the writer still gets back to sealing, trimming
        and replaying after every pass."""
        budget = self.wal.backlog_bytes()
        while budget > 0 and (chunk := self.wal.next_chunk(self.batch_bytes)):
            if self.abandoned.is_set():
                return
            segment, data = chunk
            n = data.count(b"\n")
            try:
                written = self._traced_deliver(segment.columns, data, n)
            except Exception as exc:  # noqa: BLE001 - the records stay in the file
                if self.healthy:
                    log.warning("database write of %d records failed (%s); will retry", n, exc)
                self.healthy = False
                self.metrics.failed(n)
                return
            self.wal.committed(segment, len(data), n)
            budget -= len(data)
            try:  # a record of someone erased while this one waited here (an outage)
                self.tombstones.remove_late_copies(segment.columns, data)
            except Exception as exc:  # noqa: BLE001 - written; the erasure's caveat covers it
                log.warning("cannot check %d written records against erasures: %s", n, exc)
            self.metrics.written(written)
            # After every batch, not once drained: a writer falling behind never is.
            self.metrics.observe(
                backlog=self.wal.backlog_records(), dead_letters=self.dead_letters.count()
            )
        self.healthy = True
        self.dead_letters.sync()

    def _replay(self) -> None:
        """Records of dead workers."""

        def deliver(columns: tuple[str, ...], data: bytes) -> None:
            if self.abandoned.is_set():
                raise Abandoned
            self.metrics.replayed(self._deliver(columns, data, fresh=False))
            self.tombstones.remove_late_copies(columns, data)

        try:
            budget = REPLAY_BATCHES_PER_PASS * self.batch_bytes
            done = wal.replay_orphans(
                self.wal.root, self.wal.path, deliver, self.batch_bytes, budget
            ).done
            self.replaying = not done
            self.orphaned = 0
        except Abandoned:
            pass
        except Exception as exc:  # noqa: BLE001 - still down; try again later
            self.healthy = False
            self.orphaned = wal.orphaned_records(self.wal.root, self.wal.path)
            log.info("replay of a stopped worker's records deferred: %s", exc)

    def _run(self) -> None:
        try:
            self._replay()
            self._loop()
        finally:
            with self.handover:
                self.writer_done = True
                closed = self.closed
            if closed:  # close() gave up waiting for this thread: it is done with them now
                self._release()

    def _loop(self) -> None:
        last_try = last_scan = time.monotonic()
        while not self.abandoned.is_set():
            stopping = self.stopping.is_set()
            if stopping:
                pass
            elif not self.healthy:  # the next retry; a backlog must not make it spin
                self.stopping.wait(max(last_try + self.retry_interval - time.monotonic(), 0))
            elif self.wal.backlog_bytes() < self.batch_bytes and not self.replaying:
                self.wakeup.wait(self.flush_interval)
                self.wakeup.clear()
            now = time.monotonic()
            try:
                if self.healthy or stopping or now - last_try >= self.retry_interval:
                    last_try = now
                    self._drain()
                    due = now - last_scan >= ORPHAN_SCAN_SECONDS
                    if self.healthy and (self.orphaned or self.replaying or due):
                        last_scan = now
                        self._replay()
                self.wal.rotate_if_due()
                self.metrics.observe(
                    backlog=self.wal.backlog_records(), dead_letters=self.dead_letters.count()
                )
            except Exception:  # noqa: BLE001 - the writer must outlive anything (a full disk)
                log.exception("inference log writer failed; retrying")
                self.healthy = False
                last_try = now
            # Stopping: write everything that waits, unless the database is away.
            if stopping and not (self.healthy and (self.wal.backlog_bytes() or self.replaying)):
                return

    def close(self, timeout: float = 20.0) -> bool:
        """Stop taking records and write what is waiting, for at most `timeout` seconds.

        True when the database has every record and the files are deleted. Otherwise they stay
        for the next start (or another worker) to replay, ignoring rows already in; a writer
        still busy after the timeout (a slow or stuck database) stops after the batch it is in
        and closes the files and its connection itself, never under its own feet.
        """
        self.wal.seal()
        self.stopping.set()
        self.wakeup.set()
        started = self.thread.ident is not None
        if started:
            self.thread.join(timeout)
        with self.handover:
            self.closed = True
            busy = started and not self.writer_done
            if busy:
                self.abandoned.set()
        if busy:
            log.warning(
                "the inference log writer is still writing after %.0f s (the database is slow"
                " or stuck); it stops after its current batch; %d records wait in %s for the"
                " next start",
                timeout,
                self.wal.backlog_records(),
                self.wal.path,
            )
            return False
        return self._release()

    def _release(self) -> bool:
        """Close the files (deleting them if the database has it all) and the connection."""
        with self.handover:
            if self.released is not None:  # closed twice
                return self.released
            self.released = False
        done = self.released = self.wal.close()
        if not done:
            log.warning(
                "%d records wait in %s for the next start",
                self.wal.backlog_records(),
                self.wal.path,
            )
        self.sink.close()
        self.tombstones.close()
        return done


def directory(data_dir: Path) -> Path:
    """Where a data folder keeps the inference log's files."""
    return data_dir / "inference-log"


def from_settings(settings: Any, metrics: Metrics | None = None) -> InferenceLog:
    """This worker's log as the settings describe it, started."""
    from persistence.inference_log.sinks import make_sink

    return InferenceLog(
        make_sink(settings.sqlalchemy_url),
        directory(settings.data_dir),
        batch_bytes=settings.log_batch_bytes,
        flush_interval=settings.log_flush_interval_ms / 1000,
        retry_interval=settings.log_retry_seconds,
        fsync=settings.log_fsync,
        metrics=metrics,
        database_url=settings.sqlalchemy_url,
    ).start()
