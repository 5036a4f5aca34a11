"""The write-ahead log under slow, stuck and half-failed databases and disks, on each real
database: a writer that is never idle still seals, trims and replays; shutdown never closes
files under a busy writer; a torn write that cannot be cut retires its segment; rows that no
partition can hold, or that name columns the table lacks, become dead letters."""

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from persistence.db import make_engine
from persistence.inference_log import copytext, wal, writer
from persistence.inference_log.dead_letters import DeadLetters, stored
from persistence.inference_log.sinks import make_sink
from persistence.inference_log.writer import (
    COLUMNS,
    InferenceLog,
    LogUnavailable,
    directory,
    encode,
)
from tests.helpers import PROJECT_DIR
from tests.persistence.test_inference_log import count, ids, record, wait_for


def wal_bytes(log_dir: Path) -> int:
    """Bytes of every write-ahead segment under a log directory."""
    total = 0
    try:
        workers = list((log_dir / "wal").iterdir())
    except FileNotFoundError:
        return 0
    for worker in workers:
        # A worker's directory is renamed when made and deleted once replayed: glob() over
        # one that vanishes mid-walk raises, which would fail the sink's write it runs in.
        try:
            segments = [entry for entry in os.scandir(worker) if entry.name.endswith(".log")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in segments:
            try:
                total += entry.stat().st_size
            except FileNotFoundError:  # deleted by the writer meanwhile
                pass
    return total


class Busy:
    """The real sink, with one new record arriving during each of its first `writes` writes:
    until they stop, the writer never finds its log empty."""

    def __init__(self, sink: Any, log_dir: Path, writes: int) -> None:
        self.sink = sink
        self.log_dir = log_dir
        self.log: InferenceLog | None = None
        self.left = writes
        self.appended: list[str] = []
        self.peak = 0  # write-ahead bytes, largest seen while busy
        self.replayed_after: int | None = None  # busy writes done before the first replay

    def write(self, columns: tuple[str, ...], data: bytes, *, fresh: bool = False) -> None:
        if not fresh and self.replayed_after is None:
            self.replayed_after = len(self.appended)
        if self.left > 0 and self.log is not None:
            r = record(len(self.appended))
            self.log.append([r])
            self.appended.append(r.id)
            self.peak = max(self.peak, wal_bytes(self.log_dir))
            self.left -= 1
        self.sink.write(columns, data, fresh=fresh)

    def close(self) -> None:
        self.sink.close()


def test_a_writer_that_is_never_idle_seals_and_trims_its_files(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "SEGMENT_MAX_AGE", 0.0)  # due at every pass: no clock in the test
    busy = Busy(make_sink(url), tmp_path, writes=200)
    log = InferenceLog(busy, tmp_path, flush_interval=0.01)
    busy.log = log
    first = record(-1)
    log.append([first])
    log.start()
    wait_for(lambda: busy.left == 0, 60)
    log.close()
    assert ids(url) == sorted([first.id, *busy.appended])
    one = len(encode([first])[0])
    # Sealed at every pass and deleted once written: a few records at a time, never the 200.
    assert busy.peak < 20 * one, f"the files held {busy.peak // one} records' bytes"
    assert list((tmp_path / "wal").iterdir()) == []


def test_a_stopped_workers_records_are_replayed_while_the_writer_is_busy(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "ORPHAN_SCAN_SECONDS", 0.0)  # look at every pass
    busy = Busy(make_sink(url), tmp_path, writes=150)
    log = InferenceLog(busy, tmp_path, flush_interval=0.01)
    busy.log = log
    log.append([record(-1)])
    log.start()
    wait_for(lambda: busy.left < 140)
    stopped = wal.WriteAheadLog(tmp_path / "wal", COLUMNS)  # another worker, which then dies
    orphans = [record(1000 + i) for i in range(5)]
    data, n, _ = encode(orphans)
    stopped.append(data, n)
    stopped.close()  # its lock is released with the records still in its directory
    wait_for(lambda: busy.left == 0, 60)
    log.close()
    assert busy.replayed_after is not None and busy.replayed_after < 150, (
        "the stopped worker's records waited until the writer found its own log empty"
    )
    assert count(url) == 1 + 150 + 5


class Stuck:
    """The real sink, its first write held until `release` is set: a database that stopped
    answering in the middle of a batch."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.writing = threading.Event()
        self.release = threading.Event()
        self.inside = False
        self.closed = False
        self.closed_under_a_write = False

    def write(self, columns: tuple[str, ...], data: bytes, *, fresh: bool = False) -> None:
        self.inside = True
        self.writing.set()
        try:
            self.release.wait(60)
            self.sink.write(columns, data, fresh=fresh)
        finally:
            self.inside = False

    def close(self) -> None:
        self.closed_under_a_write |= self.inside
        self.closed = True
        self.sink.close()


def test_close_leaves_a_busy_writer_its_files_and_connection(url: str, tmp_path: Path) -> None:
    stuck = Stuck(make_sink(url))
    log = InferenceLog(stuck, tmp_path, flush_interval=0.01)
    first = [record(i) for i in range(10)]
    log.append(first)
    log.start()
    assert stuck.writing.wait(20)
    later = [record(100 + i) for i in range(5)]
    log.append(later)  # waits behind the batch being written
    log.close(timeout=0.2)  # the writer is still inside its write
    with pytest.raises(LogUnavailable):  # closed for appends at once
        log.append([record(999)])
    assert log.thread.is_alive() and not stuck.closed
    assert (tmp_path / "wal").is_dir() and list((tmp_path / "wal").iterdir())
    stuck.release.set()  # the database answers again
    log.thread.join(30)
    assert not log.thread.is_alive()
    assert stuck.closed and not stuck.closed_under_a_write  # the writer closed it, after
    assert count(url) == 10  # it finished the batch it was in, then stopped
    InferenceLog(make_sink(url), tmp_path).start().close()  # the next start replays the rest
    assert ids(url) == sorted(r.id for r in first + later)
    assert list((tmp_path / "wal").iterdir()) == []


@contextmanager
def torn_write_that_cannot_be_cut(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The next append puts half its bytes on disk, then fails (the disk filled up), and
    cutting them off fails too (an I/O error)."""
    real_write = os.write
    calls = []

    def write(fd: int, data: Any) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        m.setattr(os, "ftruncate", ftruncate)
        yield


def torn_log(
    url: str, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[InferenceLog, list[str]]:
    """A log whose second request met a torn write that could not be cut; the ids of the two
    requests that were answered."""
    log = InferenceLog(make_sink(url), log_dir)
    first, cut, last = record(1), [record(i) for i in range(2, 5)], record(5)
    log.append([first])
    with torn_write_that_cannot_be_cut(monkeypatch), pytest.raises(LogUnavailable):
        log.append(cut)  # half of it is on disk: a whole line of it, and part of the next
    log.append([last])
    return log, sorted([first.id, last.id])


def test_a_torn_write_that_cannot_be_cut_retires_its_segment(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, answered = torn_log(url, tmp_path, monkeypatch)
    log.start().close(timeout=10)
    assert ids(url) == answered  # not the refused request's records, nor a line fused of both
    assert log.dead_letters.count() == 0
    assert list((tmp_path / "wal").iterdir()) == []


def test_a_retired_segment_is_replayed_only_up_to_its_end(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, answered = torn_log(url, tmp_path, monkeypatch)
    log.close()  # never started: the records wait for the next worker
    InferenceLog(make_sink(url), tmp_path).start().close()
    assert ids(url) == answered
    assert DeadLetters(tmp_path / "dead-letters.jsonl").count() == 0
    assert list((tmp_path / "wal").iterdir()) == []


def test_a_created_at_no_partition_can_hold_goes_to_the_dead_letters(
    pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL reads these times, but the writer cannot make a monthly partition for them."""
    old = record(1, created_at=datetime(2019, 12, 31, 23, 59, tzinfo=UTC).isoformat())
    odd = [
        record(2, created_at="infinity"),
        record(3, created_at="epoch"),
        record(4, created_at="9999-12-31T12:00:00+00:00"),  # its month has no upper bound
    ]
    fine = record(5)
    log = InferenceLog(make_sink(pg_url), tmp_path)
    log.append([old, *odd, fine])
    log.start().close(timeout=10)
    assert ids(pg_url) == sorted([old.id, fine.id])
    reasons = {e.values()["id"]: e.error for e in log.dead_letters.load()}
    assert sorted(reasons) == sorted(r.id for r in odd)
    assert all("created_at" in why for why in reasons.values()), reasons
    assert list((tmp_path / "wal").iterdir()) == []


def test_the_orphan_scan_leaves_a_directory_being_created_alone(tmp_path: Path) -> None:
    root = tmp_path / "wal"
    root.mkdir()
    making = root / ".new-123-0000000a"  # its creator is between mkdir and creating the lock
    making.mkdir()
    locking = root / ".new-124-0000000b"  # between creating the lock and taking it
    locking.mkdir()
    (locking / "lock").touch()
    abandoned = root / ".new-125-0000000c"  # its creator died there, long ago
    abandoned.mkdir()
    long_ago = time.time() - 3600
    os.utime(abandoned, (long_ago, long_ago))
    wal.replay_orphans(root, None, lambda c, d: None, 1 << 20)
    assert making.is_dir() and locking.is_dir() and (locking / "lock").exists()
    assert not abandoned.exists()


FOREIGN = {
    "injection": (*COLUMNS[:-1], "drivers) FROM STDIN; DROP TABLE inferences; --"),
    "unknown": (*COLUMNS[:-1], "no_such_column"),
    "twice": (*COLUMNS[:-1], "id"),
}


@pytest.mark.parametrize("columns", FOREIGN.values(), ids=FOREIGN.keys())
def test_a_segment_naming_columns_the_table_lacks_is_refused_not_run(
    url: str, tmp_path: Path, columns: tuple[str, ...]
) -> None:
    stopped = tmp_path / "wal" / "1-dead"
    stopped.mkdir(parents=True)
    (stopped / "lock").touch()
    refused = [record(1), record(2)]
    data, _, _ = encode(refused)
    (stopped / "00000001.log").write_bytes(wal.header(columns) + data)
    log = InferenceLog(make_sink(url), tmp_path).start()
    live = record(3)
    log.append([live])
    log.close()
    assert ids(url) == [live.id]  # the table is intact, and the writer kept going
    letters = log.dead_letters.load()
    assert sorted(e.text().split("\t")[0] for e in letters) == sorted(r.id for r in refused)
    assert all(e.columns == columns and "column" in e.error for e in letters), letters
    assert not stopped.exists()  # its records are kept in the dead letters, for an operator


def test_a_dead_letter_naming_columns_the_table_lacks_stays_refused(
    url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    letters = DeadLetters(directory(data_dir) / "dead-letters.jsonl")
    foreign, good = record(1), record(2)
    letters.add(FOREIGN["injection"], [(copytext.line(foreign).rstrip("\n"), "earlier")])
    letters.add(COLUMNS, [(copytext.line(good).rstrip("\n"), "earlier")])
    env = {**os.environ, "ATTRITION_DATABASE_URL": url, "ATTRITION_DATA_DIR": str(data_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "persistence", "dead-letters", "retry"],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "1 dead letters written, 1 still refused" in out.stdout
    assert "not a column" in out.stdout
    assert ids(url) == [good.id]
    engine = make_engine(url)
    [kept] = stored(engine=engine)  # moved into the table by the command, kept there
    engine.dispose()
    assert kept.columns == FOREIGN["injection"] and letters.load() == []


def test_a_long_replay_goes_in_parts_that_resume_where_the_last_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "SEGMENT_MAX_BYTES", 4000)
    root = tmp_path / "wal"
    stopped = wal.WriteAheadLog(root, COLUMNS)
    sent = [record(i) for i in range(300)]
    for start in range(0, 300, 30):
        data, n, _ = encode(sent[start : start + 30])
        stopped.append(data, n)
        stopped.rotate_if_due()  # one segment per 30 records
    stopped.close()
    got: list[bytes] = []
    parts = []
    while True:
        part = wal.replay_orphans(root, None, lambda c, d: got.append(d), 2048, budget=4096)
        parts.append(part)
        if part.done:
            break
        assert part.bytes >= 4096 and part.records
    assert len(parts) > 5
    lines = b"".join(got).splitlines()
    assert [line.split(b"\t")[0].decode() for line in lines] == [r.id for r in sent]
    assert list(root.iterdir()) == []


def test_a_writer_replays_a_long_backlog_in_parts_and_finishes_it_at_close(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "REPLAY_BATCHES_PER_PASS", 1)
    stopped = wal.WriteAheadLog(tmp_path / "wal", COLUMNS)
    sent = [record(i) for i in range(300)]
    data, n, _ = encode(sent)
    stopped.append(data, n)
    stopped.close()
    log = InferenceLog(make_sink(url), tmp_path, batch_bytes=4096).start()
    live = record(1000)
    log.append([live])
    assert log.close()
    assert ids(url) == sorted(r.id for r in [*sent, live])
    assert list((tmp_path / "wal").iterdir()) == []
