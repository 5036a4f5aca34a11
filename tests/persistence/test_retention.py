"""Retention prunes and erasures on each real database: they delete exactly what they say, with
the outcomes and dead letters of what they delete, wherever the dead letters were refused;
drop whole partitions on PostgreSQL; record themselves without the erased values; and an
erasure holds against copies that arrive after it (replays, dead letters moved or retried).

The writers here are built by `from_settings`, as the service builds them, and the commands
run as subprocesses, as an operator runs them.
"""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import Session

from persistence.db import make_engine
from persistence.inference_log import wal
from persistence.inference_log.writer import COLUMNS, encode, from_settings
from persistence.models import Outcome
from persistence.retention import sha256
from tests.conftest import app_settings
from tests.helpers import PROJECT_DIR
from tests.persistence.test_inference_log import allow_all, query, record, refuse_subject

MONTHS = [datetime(2025, m, d, 12, tzinfo=UTC) for m, d in ((1, 10), (2, 1), (2, 20), (3, 5))]


def write(url: str, data_dir: Path, *batches: list[Any]) -> None:
    """Log these requests through a writer of `data_dir`, as a service worker does."""
    log = from_settings(app_settings(url, data_dir))
    for records in batches:
        log.append(records)
    log.close()


def add_outcomes(url: str, ids: list[str], recorded_by: str) -> None:
    engine = make_engine(url)
    with Session(engine) as session:
        for i in ids:
            session.add(Outcome(inference_id=uuid.UUID(i), outcome="left", recorded_by=recorded_by,
                                observed_at=datetime.now(UTC)))  # fmt: skip
        session.commit()
    engine.dispose()


@pytest.fixture
def logged(url: str, tmp_path: Path) -> dict[str, Any]:
    """Predictions of two subjects and two employees over four dates, outcomes of some of them
    (alice's recorded by hr, bob's with an employee_ref recorded by alice), and dead letters."""
    records = []
    for i, when in enumerate(MONTHS):
        for subject, ref in (("alice", "E-1"), ("bob", "E-2"), ("bob", None)):
            records.append(
                record(i, subject=subject, employee_ref=ref, created_at=when.isoformat())
            )
    recent = record(9, subject="alice", employee_ref="E-1")
    # refused before they are queued: one of alice's, one old one of bob's
    write(url, tmp_path / "pod-a", [*records, recent],
          [record(10, subject="alice\x00", employee_ref="E-1")],
          [record(11, subject="bob\x00", created_at=MONTHS[0].isoformat())])  # fmt: skip
    add_outcomes(url, [r.id for r in records if r.subject == "alice"], "hr")
    add_outcomes(url, [r.id for r in records if r.employee_ref == "E-2"], "alice")
    return {"url": url, "pod-a": tmp_path / "pod-a", "pod-b": tmp_path / "pod-b"}


def rows(url: str, where: str = "true") -> int:
    return int(query(url, f"SELECT count(*) FROM inferences WHERE {where}")[0][0])


def outcomes(url: str, where: str = "true") -> int:
    return int(query(url, f"SELECT count(*) FROM outcomes WHERE {where}")[0][0])


def erasure_records(url: str) -> list[dict[str, Any]]:
    return [
        r._asdict()
        for r in query(url, "SELECT * FROM log_erasures ORDER BY at")  # every column there is
    ]


def dead_letters(url: str, *folders: Path) -> list[dict[str, str | None]]:
    """Every dead letter there is: in the database (if it keeps them) and in these folders'
    files, as the values of their lines."""
    from persistence.inference_log import copytext

    found = []
    engine = make_engine(url)
    with engine.connect() as conn:
        if "dead_letters" in conn.dialect.get_table_names(conn):
            for columns, line in conn.execute(text("SELECT columns, line FROM dead_letters")):
                found.append((columns.split("\t"), bytes(line).decode(errors="surrogateescape")))
    engine.dispose()
    for folder in folders:
        path = folder / "inference-log" / "dead-letters.jsonl"
        if path.exists():
            for entry in map(json.loads, path.read_text().splitlines()):
                found.append((entry["columns"], entry["line"]))
    return [dict(zip(c, copytext.parse(line), strict=False)) for c, line in found]


def run(url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ATTRITION_DATABASE_URL": url, "ATTRITION_DATA_DIR": str(data_dir)}
    env.pop("ATTRITION_LOG_RETENTION_DAYS", None)
    return subprocess.run(
        [sys.executable, "-m", "persistence", *args],
        env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def cli(url: str, data_dir: Path, *args: str) -> str:
    done = run(url, data_dir, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def days_to(moment: datetime) -> str:
    """--days whose cutoff falls on the same day as `moment`."""
    return str((datetime.now(UTC) - moment).days)


def test_prune_deletes_what_is_older_with_its_outcomes_and_records_it(
    logged: dict[str, Any],
) -> None:
    url = logged["url"]
    cutoff = days_to(datetime(2025, 2, 15, 12, tzinfo=UTC))  # between 1 and 20 February
    dry = cli(url, logged["pod-b"], "prune", "--days", cutoff, "--dry-run")
    assert "would delete 6 predictions" in dry and rows(url) == 13
    assert erasure_records(url) == []  # a dry run changes and records nothing
    cli(url, logged["pod-b"], "prune", "--days", cutoff, "--by", "ops", "--reason", "retention")
    assert rows(url) == 7
    assert rows(url, "created_at < '2025-02-15T00:00:00+00:00'") == 0
    assert rows(url, "created_at > '2025-02-15T00:00:00+00:00'") == 7
    # alice's and bob's E-2 outcomes of January and 1 February went with their predictions
    assert outcomes(url) == 4
    assert outcomes(url, "inference_id NOT IN (SELECT id FROM inferences)") == 0
    assert len(dead_letters(url, logged["pod-a"])) == 1  # alice's recent one stays
    records = erasure_records(url)
    assert sum(r["rows"] for r in records) == 6 and sum(r["outcomes"] for r in records) == 4
    assert sum(r["dead_letters"] for r in records) == 1
    assert {(r["requested_by"], r["reason"], r["filter_kind"]) for r in records} == {
        ("ops", "retention", "created_before")
    }
    if url.startswith("postgresql"):  # January went whole, February was deleted from
        tables = {r[0] for r in query(url, "SELECT tablename FROM pg_tables")}
        assert "inferences_p2025_01" not in tables and "inferences_p2025_02" in tables


@pytest.mark.parametrize(
    ("kind", "value", "left", "outcomes_left", "letters_left", "recorded_by_alice"),
    [
        ("subject", "alice", 8, 4, 2, 0),  # alice's name goes from the 4 outcomes of bob's
        ("employee_ref", "E-1", 8, 4, 1, 4),
        ("subject", "bob", 5, 4, 2, 0),
    ],
)
def test_erasure_deletes_a_persons_predictions_outcomes_and_dead_letters(
    logged: dict[str, Any],
    kind: str,
    value: str,
    left: int,
    outcomes_left: int,
    letters_left: int,
    recorded_by_alice: int,
) -> None:
    url = logged["url"]
    flag = "--subject" if kind == "subject" else "--employee-ref"
    out = cli(url, logged["pod-b"], "erase", flag, value, "--by", "dpo", "--reason", "request 42")
    assert rows(url) == left and rows(url, f"{kind} = '{value}'") == 0
    assert outcomes(url) == outcomes_left
    assert outcomes(url, "inference_id NOT IN (SELECT id FROM inferences)") == 0
    assert outcomes(url, "recorded_by = 'alice'") == recorded_by_alice
    letters = dead_letters(url, logged["pod-a"], logged["pod-b"])
    assert all(v.get(kind) != value for v in letters) and len(letters) == letters_left
    [record] = erasure_records(url)
    assert (record["requested_by"], record["reason"], record["filter_kind"]) == (
        "dpo", "request 42", kind,
    )  # fmt: skip
    assert record["filter_sha256"] == sha256(value) and record["created_before"] is None
    assert record["rows"] == 13 - left and record["outcomes"] == 8 - outcomes_left
    assert record["dead_letters"] == 2 - letters_left
    assert record["recorded_by_erased"] == (4 if value == "alice" else 0)
    assert f"{13 - left} predictions, {8 - outcomes_left} outcomes" in out
    dump = " ".join(str(v) for r in query(url, "SELECT * FROM log_erasures") for v in r)
    assert value not in dump  # the record names nobody


def test_erase_and_prune_commands(logged: dict[str, Any]) -> None:
    url, pod = logged["url"], logged["pod-a"]
    assert "would delete 4 predictions" in cli(url, pod, "erase", "--employee-ref", "E-2",
                                               "--dry-run")  # fmt: skip
    out = cli(url, pod, "erase", "--employee-ref", "E-2", "--by", "auditor", "--reason", "T-7")
    assert "deleted 4 predictions, 4 outcomes and 0 dead letters" in out
    assert "reaches the database and this ATTRITION_DATA_DIR only" in out
    listed = cli(url, pod, "erasures")
    assert "by=auditor" in listed and f"employee_ref sha256={sha256('E-2')}" in listed
    assert "outcomes=4" in listed and "late_copies=0" in listed
    assert "E-2" not in listed.replace(sha256("E-2"), "")
    assert "no retention" in cli(url, pod, "prune")
    assert "deleted 0 predictions" in cli(url, pod, "prune", "--days", "36500")
    assert rows(url) == 9
    empty = run(url, pod, "erase", "--subject", "")
    assert empty.returncode == 2 and "an empty subject names nobody" in empty.stderr


def test_dead_letters_of_another_instance_are_erased_and_never_come_back(
    url: str, tmp_path: Path
) -> None:
    """Pod A's database refused one of carol's records; the erasure runs in pod B; a retry in
    pod A, once the database would take the record, must not bring it back."""
    refuse_subject(url, "carol")
    carol = record(1, subject="carol", employee_ref="E-3")
    write(url, tmp_path / "pod-a", [record(2, employee_ref="E-9"), carol])
    assert [v["employee_ref"] for v in dead_letters(url, tmp_path / "pod-a")] == ["E-3"]
    out = cli(url, tmp_path / "pod-b", "erase", "--employee-ref", "E-3")
    assert "0 predictions, 0 outcomes and 1 dead letters" in out
    assert dead_letters(url, tmp_path / "pod-a", tmp_path / "pod-b") == []
    [record_] = erasure_records(url)
    assert record_["dead_letters"] == 1
    allow_all(url)
    cli(url, tmp_path / "pod-a", "dead-letters", "retry")
    assert rows(url, "employee_ref = 'E-3'") == 0 and rows(url) == 1


def test_a_dead_letter_moved_after_the_erasure_is_dropped_and_counted(
    url: str, tmp_path: Path
) -> None:
    """Pod C kept dave's dead letter in its folder (its database was away); the erasure runs
    elsewhere; when pod C's writer moves its dead letters, dave's is dropped and counted."""
    from persistence.inference_log.dead_letters import DeadLetters

    letters = DeadLetters(tmp_path / "pod-c" / "inference-log" / "dead-letters.jsonl")
    dave = record(1, subject="dave\x00", employee_ref="E-4")
    other = record(2, subject="erin\x00", employee_ref="E-5")
    refused = [(encode([r])[2][0]) for r in (dave, other)]
    letters.add(COLUMNS, refused)
    cli(url, tmp_path / "pod-b", "erase", "--employee-ref", "E-4")
    write(url, tmp_path / "pod-c")  # a writer of pod C starts, reaches the database
    assert [v["employee_ref"] for v in dead_letters(url, tmp_path / "pod-c")] == ["E-5"]
    [erasure] = erasure_records(url)
    assert erasure["late_copies"] == 1
    listed = cli(url, tmp_path / "pod-c", "dead-letters", "list")
    assert "1 dead letters in the database" in listed and "dave" not in listed


def test_a_replayed_record_made_before_its_erasure_is_removed_on_arrival(
    url: str, tmp_path: Path
) -> None:
    """A stopped worker's write-ahead file holds frank's records (made before the erasure,
    replayed after it) and someone else's: only the other one stays."""
    made = datetime.now(UTC) - timedelta(minutes=5)
    franks = [record(i, employee_ref="E-6", created_at=made.isoformat()) for i in range(3)]
    others = [record(9, employee_ref="E-7", created_at=made.isoformat())]
    dead = tmp_path / "pod-c" / "inference-log" / "wal" / "1-dead"
    dead.mkdir(parents=True)
    (dead / "lock").touch()
    (dead / "00000001.log").write_bytes(wal.header(COLUMNS) + encode(franks + others)[0])
    cli(url, tmp_path / "pod-b", "erase", "--employee-ref", "E-6")
    later = record(5, employee_ref="E-6")  # made after the erasure: a new prediction, kept
    write(url, tmp_path / "pod-c", [later])  # the writer replays the dead worker's file
    assert rows(url, "employee_ref = 'E-6'") == 1 and rows(url, "employee_ref = 'E-7'") == 1
    [erasure] = erasure_records(url)
    assert erasure["late_copies"] == 3
    assert "late_copies=3" in cli(url, tmp_path / "pod-b", "erasures")


def test_a_backlog_written_after_its_erasure_is_removed_on_arrival(
    url: str, tmp_path: Path
) -> None:
    """A running worker's own backlog (its database away while the erasure ran elsewhere) is
    written when the database comes back: what the erasure covers is deleted on arrival."""
    from persistence.inference_log.sinks import make_sink
    from persistence.inference_log.writer import InferenceLog, directory

    made = datetime.now(UTC) - timedelta(minutes=5)
    log = InferenceLog(make_sink(url), directory(tmp_path / "pod-c"), database_url=url)
    log.append([record(i, employee_ref="E-9", created_at=made.isoformat()) for i in range(3)])
    log.append([record(7, employee_ref="E-10", created_at=made.isoformat())])
    cli(url, tmp_path / "pod-b", "erase", "--employee-ref", "E-9")  # the writer has not run yet
    log.start()
    assert log.close() is True
    assert rows(url, "employee_ref = 'E-9'") == 0 and rows(url, "employee_ref = 'E-10'") == 1
    [erasure] = erasure_records(url)
    assert erasure["late_copies"] == 3


def test_an_erasure_during_a_retry_is_not_undone(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure starts after the retry read the dead letters and before it wrote them: it
    waits for the retry, then deletes what the retry wrote."""
    import persistence.inference_log.dead_letters as dl

    refuse_subject(url, "grace")
    write(url, tmp_path / "pod-a", [record(1, subject="grace", employee_ref="E-8")])
    allow_all(url)
    erasure: list[str] = []
    eraser = threading.Thread(
        target=lambda: erasure.append(cli(url, tmp_path / "pod-b", "erase", "--subject", "grace"))
    )
    read = dl.covering

    def between_read_and_write(conn: Any, records: Any) -> Any:
        eraser.start()
        wait_until_erase_waits(url)
        return read(conn, records)

    monkeypatch.setattr(dl, "covering", between_read_and_write)
    engine = make_engine(url)
    retried = dl.retry(engine=engine)
    engine.dispose()
    eraser.join(timeout=120)
    assert retried.written == 1 and eraser.is_alive() is False
    assert "deleted 1 predictions" in erasure[0]
    assert rows(url, "subject = 'grace'") == 0


def wait_until_erase_waits(url: str) -> None:
    """Until the erasure command waits for the lock the retry holds (PostgreSQL shows it; on
    SQLite, give the command time to start and reach its BEGIN IMMEDIATE)."""
    if not url.startswith("postgresql"):
        time.sleep(3)
        return
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waiting = query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                             " AND NOT granted")[0][0]  # fmt: skip
        if waiting:
            return
        time.sleep(0.1)
    raise AssertionError("the erasure never waited for the retry")
