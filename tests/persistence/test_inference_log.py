"""The writer, write-ahead files, replays and dead letters on each real database (no server):
nothing lost, nothing twice, and one bad record never holds back the others."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from sqlalchemy import text

from persistence.db import make_engine
from persistence.inference_log import copytext, wal
from persistence.inference_log.sinks import PostgresSink, RowsRefused, make_sink
from persistence.inference_log.writer import (
    COLUMNS,
    InferenceLog,
    LogUnavailable,
    Record,
    directory,
    encode,
)
from tests.harness import free_port
from tests.helpers import PROJECT_DIR


def record(i: int, **fields: Any) -> Record:
    base = Record(
        id=str(uuid.uuid4()),
        created_at=datetime.now(UTC).isoformat(),
        subject="tester",
        route="/predict/attrition",
        model_tag="attrition:test",
        batch_id=None,
        position=None,
        inputs=json.dumps({"Age": 20 + i % 40, "OverTime": "Yes"}),
        probability=i / 1000,
        label="No",
        threshold=0.35,
        latency_ms=1.5,
    )
    return base._replace(**fields)


def query(url: str, sql: str) -> list[Any]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(text(sql)).all())
    engine.dispose()
    return rows


def count(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM inferences")[0][0])


def ids(url: str) -> list[str]:
    return sorted(str(uuid.UUID(str(r[0]))) for r in query(url, "SELECT id FROM inferences"))


def dead_postgres() -> PostgresSink:
    return PostgresSink(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", connect_timeout=1
    )


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "wal").glob("*/*.log"))


def test_writer_writes_everything_and_removes_its_file_on_close(url: str, tmp_path: Path) -> None:
    log = InferenceLog(make_sink(url), tmp_path, flush_interval=0.05).start()
    records = [record(i) for i in range(2500)]
    for start in range(0, 2500, 100):
        log.append(records[start : start + 100])
    log.close()
    assert ids(url) == sorted(r.id for r in records)
    assert list((tmp_path / "wal").iterdir()) == []  # the database has it all: nothing kept


def test_records_are_in_the_file_when_append_returns(url: str, tmp_path: Path) -> None:
    log = InferenceLog(make_sink(url), tmp_path)  # writer not started
    records = [record(i) for i in range(3)]
    log.append(records)
    data = b"".join(p.read_bytes() for p in segments(tmp_path))
    assert data.count(b"\n") == 4  # header + 3 records
    assert all(r.id.encode() in data for r in records)
    assert log.state()["backlog_records"] == 3
    log.start().close()
    assert count(url) == 3


TEXTS = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash \\N \\t",
    "\\N",
    "unicode é 漢字 🙂",
    "",
    " lead and trail ",
]


def test_any_text_round_trips_exactly(url: str, tmp_path: Path) -> None:
    records = [record(i, subject=s, employee_ref=s or None) for i, s in enumerate(TEXTS)]
    records.append(record(99, inputs=json.dumps({"note": 'quote " and \\ and \t'})))
    log = InferenceLog(make_sink(url), tmp_path).start()
    log.append(records)
    log.close()
    got = {
        str(uuid.UUID(str(r[0]))): tuple(r[1:])
        for r in query(url, "SELECT id, subject, employee_ref FROM inferences")
    }
    for r in records[:-1]:
        assert got[r.id] == (r.subject, r.employee_ref)
    [stored] = [
        r[1]
        for r in query(url, "SELECT id, inputs FROM inferences")
        if str(uuid.UUID(str(r[0]))) == records[-1].id
    ]
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert stored == json.loads(records[-1].inputs)


def test_the_fast_encoding_equals_the_careful_one() -> None:
    tricky = [record(i, subject=t, employee_ref=t or None) for i, t in enumerate(TEXTS)]
    plain = [record(i, batch_id=str(uuid.uuid4()), position=i) for i in range(50)]
    for records in (plain, tricky, plain + tricky[3:4] + plain):
        data, n, refused = encode(records)
        assert data == "".join(copytext.line(r) for r in records).encode()
        assert (n, refused) == (len(records), [])


def test_unstorable_records_become_dead_letters_and_the_rest_is_written(
    url: str, tmp_path: Path
) -> None:
    good = [record(i) for i in range(50)]
    bad = [
        record(1000, subject="nul\x00inside"),
        record(1001, employee_ref="lone \ud800 surrogate"),
        record(1002, inputs='{"a": "x\x00y"}'),
    ]
    log = InferenceLog(make_sink(url), tmp_path).start()
    log.append(good[:25] + bad + good[25:])
    log.close()
    assert ids(url) == sorted(r.id for r in good)
    letters = log.dead_letters.load()
    assert sorted(e.values()["id"] for e in letters) == sorted(r.id for r in bad)
    reasons = {e.values()["id"]: e.error for e in letters}
    assert "subject contains NUL" in reasons[bad[0].id]
    assert "employee_ref contains a lone surrogate" in reasons[bad[1].id]
    assert log.state()["dead_letter_records"] == 3 and log.state()["state"] == "ok"


def refuse_subject(url: str, subject: str) -> None:
    """Make the database itself refuse rows of one subject (a rule it enforces, not the log)."""
    if url.startswith("postgresql"):
        sql = f"ALTER TABLE inferences ADD CONSTRAINT refuse CHECK (subject <> '{subject}')"
    else:  # SQLite cannot add a constraint to a table: a trigger refuses it the same way
        sql = (
            "CREATE TRIGGER refuse BEFORE INSERT ON inferences"
            f" WHEN NEW.subject = '{subject}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def allow_all(url: str) -> None:
    sql = (
        "ALTER TABLE inferences DROP CONSTRAINT refuse"
        if url.startswith("postgresql")
        else "DROP TRIGGER refuse"
    )
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(sql))
    engine.dispose()


def test_a_batch_the_database_refuses_one_row_of_loses_only_that_row(
    url: str, tmp_path: Path
) -> None:
    refuse_subject(url, "poison")
    good = [record(i, subject=f"user{i % 7}") for i in range(999)]
    poison = record(5000, subject="poison")
    log = InferenceLog(make_sink(url), tmp_path, flush_interval=0.05).start()
    log.append(good[:400] + [poison] + good[400:])  # one request: one COPY batch
    deadline = time.monotonic() + 30
    # The rows are in before the writer marks the batch written and keeps the dead letter.
    while (count(url) < 999 or log.state()["backlog_records"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    state = log.state()
    log.close()
    assert ids(url) == sorted(r.id for r in good)
    [letter] = log.dead_letters.load()
    assert letter.values()["id"] == poison.id and letter.values()["subject"] == "poison"
    assert state["state"] == "ok" and state["backlog_records"] == 0
    assert state["dead_letter_records"] == 1
    assert list((tmp_path / "wal").iterdir()) == []  # the poison row holds nothing back


def test_dead_letters_are_retried_by_the_command(url: str, tmp_path: Path) -> None:
    refuse_subject(url, "poison")
    data_dir = tmp_path / "data"
    log = InferenceLog(make_sink(url), directory(data_dir)).start()
    log.append([record(1), record(2, subject="poison")])
    log.close()
    env = {**os.environ, "ATTRITION_DATABASE_URL": url, "ATTRITION_DATA_DIR": str(data_dir)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "persistence", *args],
            env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    listed = cli("dead-letters", "list")
    assert listed.returncode == 0 and "subject='poison'" in listed.stdout
    still = cli("dead-letters", "retry")
    assert still.returncode == 1 and "0 dead letters written, 1 still refused" in still.stdout
    assert count(url) == 1
    allow_all(url)
    done = cli("dead-letters", "retry")
    assert done.returncode == 0 and "1 dead letters written, 0 still refused" in done.stdout
    assert count(url) == 2
    assert "0 dead letters" in cli("dead-letters", "list").stdout


def test_records_stay_in_the_file_while_the_database_is_away(url: str, tmp_path: Path) -> None:
    down = InferenceLog(dead_postgres(), tmp_path, flush_interval=0.05, retry_interval=60).start()
    down.append([record(i) for i in range(30)])
    time.sleep(0.5)
    state = down.state()
    down.close()  # cannot reach the database: the records stay in its directory
    assert state["state"] == "degraded" and state["backlog_records"] == 30
    assert sum(p.read_bytes().count(b"\n") - 1 for p in segments(tmp_path)) == 30

    up = InferenceLog(make_sink(url), tmp_path, flush_interval=0.05).start()
    up.close()  # its writer replays the stopped worker's directory first
    assert count(url) == 30
    assert list((tmp_path / "wal").iterdir()) == []


def test_a_writer_waiting_for_the_database_does_not_spin(tmp_path: Path) -> None:
    log = InferenceLog(dead_postgres(), tmp_path, batch_bytes=4096, retry_interval=0.5).start()
    for i in range(50):  # a backlog many batches deep keeps asking for a flush
        log.append([record(j) for j in range(i * 20, i * 20 + 20)])
    time.sleep(0.5)
    writer = next(t for t in psutil.Process().threads() if t.id == log.thread.native_id)
    time.sleep(2)
    later = next(t for t in psutil.Process().threads() if t.id == log.thread.native_id)
    log.close()
    busy = (later.user_time + later.system_time) - (writer.user_time + writer.system_time)
    assert busy < 0.2, f"the writer used {busy:.2f} s of CPU in 2 s while waiting"


class Flaky:
    """The real sink, unreachable until `up` is set (the writer must not care how it failed)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.up = threading.Event()

    def write(self, columns: tuple[str, ...], data: bytes, *, fresh: bool = False) -> None:
        if not self.up.is_set():
            raise psycopg.OperationalError("connection refused")
        self.sink.write(columns, data, fresh=fresh)

    def close(self) -> None:
        self.sink.close()


def test_a_live_writer_catches_up_after_an_outage(url: str, tmp_path: Path) -> None:
    sink = Flaky(make_sink(url))
    log = InferenceLog(sink, tmp_path, flush_interval=0.02, retry_interval=0.1).start()
    records = [record(i) for i in range(200)]
    for r in records:
        log.append([r])
    time.sleep(0.3)
    assert log.state()["state"] == "degraded"
    sink.up.set()
    deadline = time.monotonic() + 20
    while log.state()["backlog_records"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.state() | {"dead_letter_records": 0} == {
        "state": "ok", "backlog_records": 0, "orphaned_records": 0,
        "dead_letter_records": 0, "fsync": False,
    }  # fmt: skip
    log.close()
    assert ids(url) == sorted(r.id for r in records)


def test_segments_are_deleted_once_written(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "SEGMENT_MAX_AGE", 0.0)
    log = InferenceLog(make_sink(url), tmp_path, flush_interval=0.02).start()
    seen: set[Path] = set()
    for i in range(20):
        log.append([record(i)])
        seen.update(segments(tmp_path))
        time.sleep(0.05)
    live = set(segments(tmp_path))
    log.close()
    assert len(seen) > 3  # it rotated
    assert len(live) <= 2  # and deleted the written ones
    assert count(url) == 20


def test_a_full_disk_refuses_records_and_the_writer_carries_on(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = InferenceLog(make_sink(url), tmp_path, flush_interval=0.02).start()
    log.append([record(1)])
    real_open = wal.WriteAheadLog._open_segment

    def full(self: wal.WriteAheadLog, seq: int) -> wal.Segment:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal.WriteAheadLog, "_open_segment", full)
    monkeypatch.setattr(wal, "SEGMENT_MAX_AGE", 0.0)  # the writer tries to rotate at once
    time.sleep(0.3)
    monkeypatch.setattr(wal.WriteAheadLog, "_open_segment", real_open)
    log.append([record(2)])  # the writer survived and still has a segment to append to
    wait_for(lambda: log.state()["backlog_records"] == 0)
    assert log.thread.is_alive()
    log.close()
    with pytest.raises(LogUnavailable):  # closed: no record can be kept, so no answer
        log.append([record(3)])
    assert count(url) == 2


CRASHER = """
import json, sys, time, uuid
from datetime import UTC, datetime
from pathlib import Path
from persistence.inference_log.writer import InferenceLog, Record
from persistence.inference_log.sinks import make_sink

log = InferenceLog(make_sink(sys.argv[1]), Path(sys.argv[2]), flush_interval=3600)
for i in range(int(sys.argv[3])):
    rec = Record(str(uuid.uuid4()), datetime.now(UTC).isoformat(), "crash", "/predict/attrition",
                 "m", None, None, json.dumps({"i": i}), 0.5, "Yes", 0.35, 1.0)
    log.append([rec])
    print(rec.id, flush=True)  # "answered"
time.sleep(3600)
"""


def test_sigkill_loses_no_appended_record(url: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CRASHER), url, str(tmp_path), "500"],
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    answered = [proc.stdout.readline().strip() for _ in range(500)]
    proc.send_signal(signal.SIGKILL)  # no shutdown hook, no flush, the writer never ran
    proc.wait(10)
    assert count(url) == 0
    InferenceLog(make_sink(url), tmp_path).start().close()  # the next worker to start
    assert ids(url) == sorted(answered)


PARTIAL = """
import json, os, resource, sys, uuid
from datetime import UTC, datetime
from pathlib import Path
from persistence.inference_log.writer import InferenceLog, LogUnavailable, Record
from persistence.inference_log.sinks import make_sink

def rec(i):
    return Record(str(uuid.uuid4()), datetime.now(UTC).isoformat(), "disk", "/predict/attrition",
                  "m", None, None, json.dumps({"i": i, "pad": "x" * 500}), 0.5, "Yes", 0.35, 1.0)

log = InferenceLog(make_sink(sys.argv[1]), Path(sys.argv[2]))
first, cut, last = rec(1), [rec(2), rec(3), rec(4)], rec(5)
log.append([first])
size = os.fstat(log.wal.active.fd).st_size
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 700, hard))  # room for one record and a bit
try:
    log.append(cut)
    print("ANSWERED", flush=True)
except LogUnavailable:
    pass
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
log.append([last])
log.start().close()
print(first.id, last.id)
"""


def test_a_partial_write_leaves_nothing_behind(url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PARTIAL), url, str(tmp_path)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ANSWERED" not in done.stdout  # the request whose records did not fit is refused
    assert ids(url) == sorted(done.stdout.split())  # the others, with no torn line between
    assert not (tmp_path / "dead-letters.jsonl").exists()


def test_a_live_workers_directory_is_not_taken(url: str, tmp_path: Path) -> None:
    owner = InferenceLog(make_sink(url), tmp_path)
    owner.append([record(1)])
    other = InferenceLog(make_sink(url), tmp_path)
    replayed = wal.replay_orphans(tmp_path / "wal", other.wal.path, lambda c, d: None, 1 << 20)
    assert replayed.records == 0
    owner.start().close()
    other.start().close()
    assert count(url) == 1


def test_torn_last_line_is_skipped_and_the_rest_replayed(url: str, tmp_path: Path) -> None:
    dead = tmp_path / "wal" / "1-dead"
    dead.mkdir(parents=True)
    (dead / "lock").touch()
    good, _, _ = encode([record(1), record(2)])
    torn, _, _ = encode([record(3)])
    (dead / "00000001.log").write_bytes(wal.header(COLUMNS) + good + torn[:40])
    InferenceLog(make_sink(url), tmp_path).start().close()
    assert count(url) == 2
    assert not dead.exists()


def test_replay_resumes_after_the_committed_marker(url: str, tmp_path: Path) -> None:
    first = InferenceLog(make_sink(url), tmp_path)
    records = [record(i) for i in range(10)]
    first.append(records[:4])
    first.start().close()  # written, its directory removed
    second = InferenceLog(dead_postgres(), tmp_path)
    second.append(records[4:])
    segment, data = second.wal.next_chunk(1 << 20) or (None, b"")
    assert segment is not None
    first_two = b"".join(data.splitlines(keepends=True)[:2])
    make_sink(url).write(COLUMNS, first_two, fresh=True)  # what it wrote before dying
    second.wal.committed(segment, len(first_two), 2)
    second.close()
    replayed: list[int] = []
    wal.replay_orphans(
        tmp_path / "wal", None, lambda c, d: replayed.append(d.count(b"\n")), 1 << 20
    )
    assert replayed == [4]  # only what the marker says is not in


def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_fsync_mode_syncs_across_rotation(url: str, tmp_path: Path) -> None:
    log = InferenceLog(make_sink(url), tmp_path, fsync=True, flush_interval=0.02).start()
    position = log.append([record(1)])
    log.wal.sync(position)
    assert log.wal.synced >= position
    wait_for(lambda: log.wal.backlog_records() == 0)
    first = log.wal.active
    assert first is not None
    first.opened -= 10  # old enough: the writer seals (and fsyncs) it and starts another
    wait_for(lambda: log.wal.active is not first)
    later = log.append([record(2)])
    log.wal.sync(later)
    assert log.wal.synced >= later
    log.close()
    assert count(url) == 2


def test_an_old_records_month_gets_its_partition(pg_url: str, tmp_path: Path) -> None:
    url = pg_url
    old = record(1, created_at=datetime(2019, 12, 31, 23, 59, tzinfo=UTC).isoformat())
    log = InferenceLog(make_sink(url), tmp_path)
    log.append([old, record(2)])
    log.start().close()
    assert count(url) == 2
    where = query(url, f"SELECT tableoid::regclass::text FROM inferences WHERE id = '{old.id}'")
    assert where[0][0] == "inferences_p2019_12"


def test_postgres_refusal_is_a_data_error_not_an_outage(pg_url: str, tmp_path: Path) -> None:
    url = pg_url
    sink = PostgresSink(url)
    with pytest.raises(RowsRefused, match="22P02"):  # invalid input syntax
        sink.write(COLUMNS, b"not-a-uuid\t" + b"\t".join([b"x"] * 12) + b"\n", fresh=True)
    with pytest.raises(psycopg.OperationalError):
        dead_postgres().write(COLUMNS, encode([record(1)])[0])
    sink.write(COLUMNS, encode([record(2)])[0], fresh=True)  # the connection still works
    sink.close()
    assert count(url) == 1


def test_a_fresh_batch_holding_a_known_id_is_inserted_without_duplicates(
    pg_url: str, tmp_path: Path
) -> None:
    url = pg_url
    sink = PostgresSink(url)
    data, _, _ = encode([record(i) for i in range(20)])
    first_five = b"".join(data.splitlines(keepends=True)[:5])
    sink.write(COLUMNS, first_five, fresh=True)  # straight COPY
    sink.write(COLUMNS, data, fresh=True)  # a commit lost with its connection, then retried
    sink.write(COLUMNS, data)  # a replay
    sink.close()
    assert count(url) == 20


def test_drivers_are_stored_null_or_json_by_every_path(url: str, tmp_path: Path) -> None:
    """Explained records carry their drivers through the write-ahead file and replays; a plain
    prediction has SQL NULL there, not JSON null."""
    drivers = json.dumps(
        {"method": "linear-exact", "base_value": -2.0, "drivers": [], "other": 0.5}
    )
    plain, explained = record(1), record(2, drivers=drivers)
    log = InferenceLog(make_sink(url), tmp_path).start()
    log.append([plain, explained])
    log.close()
    replayed = record(3, drivers=drivers)
    data, _, _ = encode([replayed, explained])
    sink = make_sink(url)
    sink.write(COLUMNS, data)  # the idempotent replay path
    sink.close()
    rows = dict(query(url, "SELECT id, drivers FROM inferences"))
    assert query(url, "SELECT count(*) FROM inferences WHERE drivers IS NULL")[0][0] == 1
    stored = {
        str(uuid.UUID(str(k))): json.loads(v) if isinstance(v, str) else v for k, v in rows.items()
    }
    assert stored == {
        plain.id: None,
        explained.id: json.loads(drivers),
        replayed.id: json.loads(drivers),
    }


def test_with_a_tracer_the_database_write_links_every_request_it_wrote(
    url: str, tmp_path: Path
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    log = InferenceLog(make_sink(url), tmp_path, flush_interval=0.05)
    log.tracer = tracer
    requests = []
    for i, n in enumerate((1, 3, 2)):  # one request, a batch of 3, a batch of 2
        with tracer.start_as_current_span(f"request {i}") as span:
            log.append([record(10 * i + j) for j in range(n)])
            requests.append(span.get_span_context())
    log.start().close()
    assert count(url) == 6 and not log.span_contexts
    spans = exporter.get_finished_spans()
    appends = [s for s in spans if s.name == "attrition.log.append"]
    assert [(s.parent.span_id if s.parent else None) for s in appends] == [
        r.span_id for r in requests
    ]
    assert [s.attributes["attrition.log.records"] for s in appends if s.attributes] == [1, 3, 2]
    copies = [s for s in spans if s.name == "attrition.log.copy"]
    assert copies and all(s.parent is None for s in copies)  # a trace of its own
    linked = [link.context.span_id for s in copies for link in s.links]
    assert sorted(linked) == sorted(r.span_id for r in requests)  # each request once


def test_a_refused_append_leaves_no_span_context_behind(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    log = InferenceLog(dead_postgres(), tmp_path)  # writer not started
    log.tracer = TracerProvider().get_tracer("test")
    log.append([record(1)])

    def full(data: bytes, n: int) -> int:
        raise LogUnavailable("disk full")

    log.wal.append = full  # type: ignore[method-assign]
    with pytest.raises(LogUnavailable):
        log.append([record(2), record(3)])
    assert len(log.span_contexts) == 1
    log.close()
