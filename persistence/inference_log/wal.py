"""Per-worker write-ahead files of the inference log.

Each worker owns a directory `wal/<pid>-<random>/` held under an exclusive flock on its `lock`
file, with numbered segment files. A segment starts with a header line naming its columns, then
one PostgreSQL COPY text line per record (the writer sends the bytes to COPY as they are). The
request handler appends a request's lines with one write() before the answer is sent; the
writer thread reads them back from the oldest segment, and a segment is deleted once all its
lines are in the database. `committed` holds the segment and offset written so far (not
fsync'd: after a power loss it may lag, and a replay of rows already in is ignored by id).

A segment whose tail holds a torn write that could not be cut off is retired: renamed to
`<seq>-<end>.log` and never read past `end`; appends go on in a new segment.

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
# A segment is sealed (and deleted once written) after this long or this size: short enough that
# the page cache usually drops written records before writeback (docs/adr/0013-write-ahead-files.md).
SEGMENT_MAX_AGE = 1.0
SEGMENT_MAX_BYTES = 64 << 20
# A worker's directory is made under this prefix, locked, then renamed. Making it takes well
# under a second, so one older than this belongs to a process that died making it.
STAGING = ".new-"
STAGING_GRACE = 60.0


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


def read_lines(fd: int, offset: int, end: int, max_bytes: int) -> bytes:
    """Whole lines of the file from offset, up to about max_bytes (more when one line is
    longer), never past end; empty when no newline lies before end."""
    size = min(end - offset, max_bytes)
    while True:
        data = complete_lines(os.pread(fd, size, offset))
        if data or offset + size >= end:
            return data
        size = min(size * 2, end - offset)


def segment_name(seq: int, end: int | None = None) -> str:
    return f"{seq:08d}.log" if end is None else f"{seq:08d}-{end}.log"


def segment_files(directory: Path) -> list[tuple[int, int | None, Path]]:
    """(seq, end of a retired segment or None, path) of a directory's segments, in order."""
    found = []
    for path in directory.glob("*.log"):
        seq, _, end = path.stem.partition("-")
        found.append((int(seq), int(end) if end else None, path))
    return sorted(found)


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
    retired: bool = False  # bytes past `end` are a torn write: no more appends


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
        staging = root / f"{STAGING}{owner}"
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
        path = self.path / segment_name(seq)
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
            if segment.retired:
                try:
                    segment = self._next_segment(segment)
                except OSError as exc:
                    raise LogUnavailable(f"cannot start a write-ahead segment: {exc}") from exc
            try:
                write_all(segment.fd, data)
            except OSError as exc:  # disk full, I/O error: no record, so no answer
                self._cut(segment)  # and no half-written line for the next append to follow
                raise LogUnavailable(f"cannot write the inference log: {exc}") from exc
            segment.end += len(data)
            self.position += len(data)
            self.appended_records += records
            return self.position

    def _next_segment(self, old: Segment) -> Segment:
        """Seal the active segment (on the disk first, in fsync mode) and open the next one;
        with self.lock held."""
        if self.fsync:
            os.fdatasync(old.fd)
            self.synced = self.position
        self.active = self._open_segment(old.seq + 1)
        return self.active

    def _cut(self, segment: Segment) -> None:
        """Remove a torn write from the segment's tail, or retire the segment at its end."""
        try:
            os.ftruncate(segment.fd, segment.end)
            return
        except OSError:
            log.exception("cannot cut a torn write from %s; retiring it", segment.path)
        segment.retired = True  # the next append opens a new segment
        retired = segment.path.with_name(segment_name(segment.seq, segment.end))
        try:  # so that a replay, after this process is gone, stops at the same byte
            os.rename(segment.path, retired)
            segment.path = retired
            if self.fsync:
                fsync_dir(self.path)
        except OSError:
            log.exception(
                "cannot mark %s as retired: this worker reads it up to byte %d, but a replay"
                " after it stops would read the torn write that follows",
                segment.path,
                segment.end,
            )

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
                data = read_lines(segment.fd, segment.committed, end, max_bytes)
                if not data:  # appends end on a newline: the file changed under us
                    raise OSError(f"{segment.path}: no whole line before byte {end}")
                return segment, data
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
        if not aged and active.end < SEGMENT_MAX_BYTES and not active.retired:
            return
        with self.lock:
            if self.active is not active:  # sealed by close(), or replaced by an append
                return
            try:
                self._next_segment(active)
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

    def seal(self) -> None:
        """Stop appending (appends raise LogUnavailable from now on)."""
        with self.lock:
            active, self.active = self.active, None
        if active is not None and self.fsync:
            os.fdatasync(active.fd)

    def close(self) -> bool:
        """Stop appending; delete the directory if the database has every record (True).
        Only once the writer thread is done with the files."""
        self.seal()
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


Deliver = Callable[[tuple[str, ...], bytes], None]


@dataclass
class Replayed:
    """What a replay delivered; `done` is False when it stopped at its byte budget."""

    records: int = 0
    bytes: int = 0
    done: bool = True


def replay_orphans(
    root: Path, own: Path | None, deliver: Deliver, max_bytes: int, budget: int | None = None
) -> Replayed:
    """Deliver the records left in dead workers' directories, deleting each once delivered.
    Stops after about `budget` bytes: the rest waits for the next call, which resumes at the
    directory's marker. Raises what `deliver` raises (the database is away): the rest waits.
    """
    replayed = Replayed()
    if not root.is_dir():
        return replayed
    for path in sorted(root.iterdir()):
        if path == own or not path.is_dir():
            continue
        if path.name.startswith(STAGING):
            remove_if_abandoned(path)
            continue
        try:
            fd = os.open(path / "lock", os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker owns it, or another one is replaying it
            left = None if budget is None else budget - replayed.bytes
            part = replay_directory(path, deliver, max_bytes, left)
            replayed.records += part.records
            replayed.bytes += part.bytes
            if not part.done:
                log.info("replayed %d records left by a stopped worker (%s); more to come",
                         part.records, path.name)  # fmt: skip
                replayed.done = False
                return replayed
            shutil.rmtree(path, ignore_errors=True)
            if part.records:
                log.warning("replayed %d records left by a stopped worker (%s)",
                            part.records, path.name)  # fmt: skip
        finally:
            os.close(fd)
    return replayed


def remove_if_abandoned(staging: Path) -> None:
    """Delete a directory whose worker died while making it (it never holds a record); one
    being made right now has no lock file yet, or an unlocked one: leave it alone."""
    try:
        if time.time() - staging.stat().st_mtime < STAGING_GRACE:
            return
        fd = os.open(staging / "lock", os.O_RDWR)
    except FileNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(staging, ignore_errors=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def replay_directory(
    path: Path, deliver: Deliver, max_bytes: int, budget: int | None = None
) -> Replayed:
    """Deliver the lines after the committed marker, recording progress as it goes; stop
    after about `budget` bytes."""
    seq0, offset0 = read_marker(path / "committed")
    marker_fd = os.open(path / "committed", os.O_CREAT | os.O_RDWR, 0o600)
    replayed = Replayed()
    try:
        for seq, limit, segment in segment_files(path):
            if seq < seq0:
                continue
            with open(segment, "rb") as f:
                try:
                    columns = parse_header(f.readline())
                except ValueError:  # died while creating it, before any record
                    continue
                start = max(f.tell(), offset0) if seq == seq0 else f.tell()
                end = os.fstat(f.fileno()).st_size if limit is None else limit
                while start < end:
                    if budget is not None and replayed.bytes >= budget:
                        replayed.done = False
                        return replayed
                    chunk = read_lines(f.fileno(), start, end, max_bytes)
                    if not chunk:  # cut short by the crash: its request was not answered
                        log.warning("%s/%s ends with %d bytes of a torn line; skipped",
                                    path.name, segment.name, end - start)  # fmt: skip
                        break
                    deliver(columns, chunk)
                    start += len(chunk)
                    os.pwrite(marker_fd, marker(seq, start), 0)
                    replayed.records += chunk.count(b"\n")
                    replayed.bytes += len(chunk)
    finally:
        os.close(marker_fd)
    return replayed


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
        for seq, limit, segment in segment_files(path):
            if seq < seq0:
                continue
            try:
                f = open(segment, "rb")  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:  # written and deleted meanwhile
                continue
            with f:
                f.readline()
                if seq == seq0:
                    f.seek(max(f.tell(), offset0))
                left = (os.fstat(f.fileno()).st_size if limit is None else limit) - f.tell()
                while left > 0 and (data := f.read(min(left, 1 << 20))):
                    total += data.count(b"\n")
                    left -= len(data)
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
