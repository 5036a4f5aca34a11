"""Per-worker write-ahead files of the inference log.

Each worker owns a directory `wal/<pid>-<random>/` held under an exclusive flock on its `lock`
file, with numbered segment files. A segment starts with a header line naming its columns, then
one PostgreSQL COPY text line per record (the writer sends the bytes to COPY as they are). The
request handler appends a request's lines with one write() before the answer is sent; the
writer thread reads them back from the oldest segment, and a segment is deleted once all its
lines are in the database. `committed` holds the segment and offset written so far (not
fsync'd: after a power loss it may lag, and a replay of rows already in is ignored by id).

A directory whose lock can be taken belongs to a process that is gone: any worker replays it.
"""

import fcntl
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("attrition.inference_log")

HEADER = b"#columns"
# A segment is sealed (and deleted once written) after this long or this size. One second
# keeps a record's bytes on disk for about a second after the database has them, and the page
# cache usually drops them before writeback; 64 MiB is ~1.5 s of the batch route at full speed.
SEGMENT_MAX_AGE = 1.0
SEGMENT_MAX_BYTES = 64 << 20


class LogUnavailable(RuntimeError):
    """The record could not be put on disk: the prediction must not be answered."""


def header(columns: tuple[str, ...]) -> bytes:
    return b"\t".join([HEADER, *(c.encode() for c in columns)]) + b"\n"


def parse_header(line: bytes) -> tuple[str, ...]:
    parts = line.rstrip(b"\n").split(b"\t")
    if parts[0] != HEADER or len(parts) < 2:
        raise ValueError(f"not a segment header: {line[:80]!r}")
    return tuple(p.decode() for p in parts[1:])


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def complete_lines(data: bytes) -> bytes:
    """The data up to and including its last newline."""
    return data[: data.rfind(b"\n") + 1]


@dataclass
class Segment:
    seq: int
    path: Path
    fd: int
    columns: tuple[str, ...]
    start: int  # first byte after the header
    end: int  # bytes appended so far (always at a line end)
    committed: int  # bytes the database has
    opened: float = field(default_factory=time.monotonic)


class WriteAheadLog:
    """This worker's write-ahead directory: appends from request handlers, reads and trims from
    the writer thread. `fsync=True` makes sync() wait for the disk (power-loss durability)."""

    def __init__(self, root: Path, columns: tuple[str, ...], *, fsync: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.columns = columns
        self.fsync = fsync
        owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked before it gets its final name, so no scanner ever sees it unlocked.
        staging = root / f".new-{owner}"
        staging.mkdir()
        self.lock_fd = os.open(staging / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.path = root / owner
        os.rename(staging, self.path)
        self.marker_fd = os.open(self.path / "committed", os.O_CREAT | os.O_RDWR, 0o600)
        self.lock = threading.Lock()  # appends and segment rotation
        self.sync_lock = threading.Lock()
        self.segments: list[Segment] = []
        self.position = 0  # bytes ever appended (all segments): what sync() waits for
        self.synced = 0
        self.appended_records = 0
        self.committed_records = 0
        self.active: Segment | None = self._open_segment(1)
        if fsync:
            fsync_dir(root)

    def _open_segment(self, seq: int) -> Segment:
        path = self.path / f"{seq:08d}.log"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_APPEND, 0o600)
        head = header(self.columns)
        try:
            write_all(fd, head)
            if self.fsync:
                os.fdatasync(fd)
                fsync_dir(self.path)
        except OSError:  # disk full: no half-made segment is left behind
            os.close(fd)
            path.unlink()
            raise
        segment = Segment(seq, path, fd, self.columns, len(head), len(head), len(head))
        self.segments.append(segment)
        return segment

    # -- request handlers ------------------------------------------------------------------

    def append(self, data: bytes, records: int) -> int:
        """Append complete lines with one write; return the position sync() must reach."""
        with self.lock:
            segment = self.active
            if segment is None:
                raise LogUnavailable("the inference log is closed")
            try:
                write_all(segment.fd, data)
            except OSError as exc:  # disk full, I/O error: no record, so no answer
                try:  # and no half-written line for the next append to follow
                    os.ftruncate(segment.fd, segment.end)
                except OSError:
                    log.exception("cannot cut a partial write from %s", segment.path)
                raise LogUnavailable(f"cannot write the inference log: {exc}") from exc
            segment.end += len(data)
            self.position += len(data)
            self.appended_records += records
            return self.position

    def sync(self, position: int) -> None:
        """Return once everything up to `position` is on the disk (group fsync: one fdatasync
        covers every append made before it started)."""
        with self.sync_lock:
            if self.synced >= position:
                return
            with self.lock:
                if self.active is None:
                    return  # closed: close() synced it
                fd = os.dup(self.active.fd)  # rotation may close the original meanwhile
                target = self.position
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            self.synced = target

    def backlog_bytes(self) -> int:
        return sum(s.end - s.committed for s in self.segments)

    def backlog_records(self) -> int:
        return self.appended_records - self.committed_records

    # -- the writer thread -----------------------------------------------------------------

    def next_chunk(self, max_bytes: int) -> tuple[Segment, bytes] | None:
        """The oldest lines not yet in the database, whole lines up to about max_bytes."""
        for segment in list(self.segments):
            end = segment.end
            if segment.committed < end:
                size = min(end - segment.committed, max_bytes)
                while True:
                    data = complete_lines(os.pread(segment.fd, size, segment.committed))
                    if data or segment.committed + size >= end:
                        return segment, data
                    size *= 2  # one line longer than max_bytes
            if segment is not self.active:
                self._drop(segment)
        return None

    def committed(self, segment: Segment, nbytes: int, records: int) -> None:
        """The database has the next nbytes of this segment."""
        segment.committed += nbytes
        self.committed_records += records
        try:
            os.pwrite(self.marker_fd, marker(segment.seq, segment.committed), 0)
        except OSError:  # only a shortcut for replays, which ignore rows already in
            pass
        if segment is not self.active and segment.committed >= segment.end:
            self._drop(segment)

    def rotate_if_due(self) -> None:
        """Seal the active segment when it is old or large enough, so it can be deleted."""
        active = self.active
        if active is None:
            return
        # While the database is away nothing is committed: keep one growing segment.
        aged = (
            active.committed > active.start and time.monotonic() - active.opened >= SEGMENT_MAX_AGE
        )
        if not aged and active.end < SEGMENT_MAX_BYTES:
            return
        with self.lock:
            try:
                if self.fsync:
                    os.fdatasync(active.fd)
                    self.synced = self.position
                self.active = self._open_segment(active.seq + 1)
            except OSError as exc:  # disk full: keep appending to this one, try again later
                log.warning("cannot start a new write-ahead segment: %s", exc)
                return
        if active.committed >= active.end:
            self._drop(active)

    def _drop(self, segment: Segment) -> None:
        with self.lock:
            self.segments.remove(segment)
        os.close(segment.fd)
        segment.path.unlink()

    def close(self) -> bool:
        """Stop appending; delete the directory if the database has every record (True)."""
        with self.lock:
            active, self.active = self.active, None
        if active is not None and self.fsync:
            os.fdatasync(active.fd)
        done = self.backlog_bytes() == 0
        for segment in list(self.segments):
            os.close(segment.fd)
        self.segments.clear()
        os.close(self.marker_fd)
        if done:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.lock_fd)  # releases the flock: a leftover directory is now an orphan
        return done


def marker(seq: int, offset: int) -> bytes:
    """Fixed width, so each update rewrites it in place with one pwrite."""
    return f"{seq:>12} {offset:>16}\n".encode()


def read_marker(path: Path) -> tuple[int, int]:
    try:
        seq, offset = path.read_bytes().split()
        return int(seq), int(offset)
    except (OSError, ValueError):
        return 0, 0


def lines_chunks(data: bytes, max_bytes: int) -> list[bytes]:
    """Whole lines of data in chunks of about max_bytes."""
    chunks = []
    start = 0
    while start < len(data):
        cut = data.rfind(b"\n", start, start + max_bytes) + 1
        if cut <= start:  # a line longer than max_bytes
            cut = data.index(b"\n", start) + 1
        chunks.append(data[start:cut])
        start = cut
    return chunks


Deliver = Callable[[tuple[str, ...], bytes], None]


def replay_orphans(root: Path, own: Path | None, deliver: Deliver, max_bytes: int) -> int:
    """Deliver the records left in dead workers' directories, then delete them; return how
    many. Raises what `deliver` raises (the database is away): the rest waits for the next try.
    """
    done = 0
    if not root.is_dir():
        return 0
    for path in sorted(root.iterdir()):
        if path == own or not path.is_dir():
            continue
        try:
            fd = os.open(path / "lock", os.O_RDWR)
        except FileNotFoundError:
            if path.name.startswith(".new-"):  # died while creating it: it holds no record
                shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker owns it, or another one is replaying it
            n = replay_directory(path, deliver, max_bytes)
            shutil.rmtree(path, ignore_errors=True)
            if n:
                log.warning("replayed %d records left by a stopped worker (%s)", n, path.name)
            done += n
        finally:
            os.close(fd)
    return done


def replay_directory(path: Path, deliver: Deliver, max_bytes: int) -> int:
    """Deliver every line after the committed marker, recording progress as it goes."""
    seq0, offset0 = read_marker(path / "committed")
    marker_fd = os.open(path / "committed", os.O_CREAT | os.O_RDWR, 0o600)
    total = 0
    try:
        for segment in sorted(path.glob("*.log")):
            seq = int(segment.stem)
            if seq < seq0:
                continue
            with open(segment, "rb") as f:
                try:
                    columns = parse_header(f.readline())
                except ValueError:  # died while creating it, before any record
                    continue
                start = max(f.tell(), offset0) if seq == seq0 else f.tell()
                f.seek(start)
                data = f.read()
            body = complete_lines(data)
            if len(body) < len(data):  # cut short by the crash: its request was not answered
                log.warning("%s/%s ends with %d bytes of a torn line; skipped",
                            path.name, segment.name, len(data) - len(body))  # fmt: skip
            for chunk in lines_chunks(body, max_bytes):
                deliver(columns, chunk)
                start += len(chunk)
                os.pwrite(marker_fd, marker(seq, start), 0)
                total += chunk.count(b"\n")
    finally:
        os.close(marker_fd)
    return total


def orphaned_records(root: Path, own: Path | None) -> int:
    """Records waiting in dead workers' directories."""
    return waiting_records(root, exclude=own, only_unowned=True)


def waiting_records(root: Path, *, exclude: Path | None = None, only_unowned: bool = False) -> int:
    """Records in write-ahead directories that the database does not have yet."""
    total = 0
    if not root.is_dir():
        return 0
    for path in root.iterdir():
        if path == exclude or not path.is_dir() or (only_unowned and not unowned(path)):
            continue
        seq0, offset0 = read_marker(path / "committed")
        for segment in path.glob("*.log"):
            seq = int(segment.stem)
            if seq < seq0:
                continue
            with open(segment, "rb") as f:
                f.readline()
                if seq == seq0:
                    f.seek(max(f.tell(), offset0))
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return total


def unowned(path: Path) -> bool:
    """Whether no live process holds the directory's lock (checked by taking it briefly)."""
    try:
        fd = os.open(path / "lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
