"""Records the database refused (or would refuse), kept in one JSON-lines file per data folder
until `python -m persistence dead-letters retry` writes them or an erasure removes them.

Every worker appends under an exclusive flock; the commands rewrite the file into a new one and
rename it over the old, so an appender that waited for the lock reopens the file first.
"""

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from persistence import copytext


@dataclass(frozen=True)
class DeadLetter:
    at: str
    columns: tuple[str, ...]
    line: str  # one COPY text line, without its newline
    error: str

    def values(self) -> dict[str, str | None]:
        return dict(zip(self.columns, copytext.parse(self.line), strict=False))

    def to_json(self) -> str:
        # ensure_ascii: a lone surrogate (text that is not UTF-8) survives as an escape.
        fields = {"at": self.at, "columns": list(self.columns), "line": self.line}
        return json.dumps({**fields, "error": self.error}) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "DeadLetter":
        d = json.loads(text)
        return cls(d["at"], tuple(d["columns"]), d["line"], d["error"])

    def data(self) -> bytes:
        """The line as the database gets it (bytes that were not UTF-8 come back as they were)."""
        return (self.line + "\n").encode("utf-8", "surrogateescape")


class DeadLetters:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._counted: tuple[tuple[int, int], int] | None = None

    @contextmanager
    def _locked(self, flags: int) -> Iterator[int]:
        """The file open and exclusively locked (the current file, not one renamed away)."""
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
        """Keep these (line, reason) pairs."""
        if not refused:
            return
        at = datetime.now(UTC).isoformat()
        data = "".join(DeadLetter(at, columns, line, why).to_json() for line, why in refused)
        with self._locked(os.O_WRONLY | os.O_APPEND) as fd:
            os.write(fd, data.encode())
            if self.fsync:
                os.fsync(fd)

    def load(self) -> list[DeadLetter]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [DeadLetter.from_json(line) for line in text.splitlines() if line.strip()]

    def count(self) -> int:
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

    @contextmanager
    def editing(self) -> Iterator[list[DeadLetter]]:
        """The entries, locked; what is left in the list when the block ends is kept."""
        with self._locked(os.O_RDWR) as fd:
            with open(os.dup(fd), closefd=True) as f:
                entries = [DeadLetter.from_json(line) for line in f if line.strip()]
            yield entries
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                f.writelines(e.to_json() for e in entries)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
