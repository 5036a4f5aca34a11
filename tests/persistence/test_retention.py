"""Retention prunes and erasures on each real database: they delete exactly what they say,
drop whole partitions on PostgreSQL, and record themselves without the erased values."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from persistence.db import make_engine
from persistence.dead_letters import DeadLetters
from persistence.inference_log import InferenceLog, directory
from persistence.retention import erase, prune, sha256
from persistence.sinks import make_sink
from tests.helpers import PROJECT_DIR
from tests.persistence.test_inference_log import query, record

MONTHS = [datetime(2025, m, d, 12, tzinfo=UTC) for m, d in ((1, 10), (2, 1), (2, 20), (3, 5))]


@pytest.fixture
def logged(url: str, tmp_path: Path) -> dict[str, Any]:
    """Predictions of two subjects and two employees over four dates, plus dead letters."""
    log_dir = directory(tmp_path / "data")
    log = InferenceLog(make_sink(url), log_dir)
    records = []
    for i, when in enumerate(MONTHS):
        for subject, ref in (("alice", "E-1"), ("bob", "E-2"), ("bob", None)):
            records.append(
                record(i, subject=subject, employee_ref=ref, created_at=when.isoformat())
            )
    recent = record(9, subject="alice", employee_ref="E-1")
    log.append([*records, recent])
    # refused before they are queued: one of alice's, one old one of bob's
    log.append([record(10, subject="alice\x00", employee_ref="E-1")])
    log.append([record(11, subject="bob\x00", created_at=MONTHS[0].isoformat())])
    log.start().close()
    return {
        "url": url,
        "letters": DeadLetters(log_dir / "dead-letters.jsonl"),
        "data": tmp_path / "data",
    }


def rows(url: str, where: str = "true") -> int:
    return int(query(url, f"SELECT count(*) FROM inferences WHERE {where}")[0][0])


def erasure_records(url: str) -> list[Any]:
    return query(
        url,
        "SELECT requested_by, reason, filter_kind, filter_sha256, created_before, rows,"
        " dead_letters FROM log_erasures ORDER BY at",
    )


def test_prune_deletes_what_is_older_and_records_it(logged: dict[str, Any]) -> None:
    url = logged["url"]
    engine = make_engine(url)
    before = datetime(2025, 2, 15, tzinfo=UTC)
    dry = prune(engine=engine, dead_letters=logged["letters"], before=before,
                requested_by="ops", dry_run=True)  # fmt: skip
    assert (dry.rows, dry.dead_letters) == (6, 1) and rows(url) == 13
    assert erasure_records(url) == []  # a dry run changes and records nothing
    out = prune(engine=engine, dead_letters=logged["letters"], before=before,
                requested_by="ops", reason="retention 400 days")  # fmt: skip
    engine.dispose()
    assert (out.rows, out.dead_letters) == (6, 1)
    assert rows(url) == 7
    assert rows(url, "created_at < '2025-02-15T00:00:00+00:00'") == 0
    assert logged["letters"].count() == 1  # alice's recent one stays
    records = erasure_records(url)
    assert sum(r[5] for r in records) == 6 and sum(r[6] for r in records) == 1
    assert {(r[0], r[1], r[2]) for r in records} == {
        ("ops", "retention 400 days", "created_before")
    }
    if url.startswith("postgresql"):  # January went whole, February was deleted from
        assert out.dropped == ["inferences_p2025_01"]
        tables = {r[0] for r in query(url, "SELECT tablename FROM pg_tables")}
        assert "inferences_p2025_01" not in tables and "inferences_p2025_02" in tables


@pytest.mark.parametrize(
    ("kind", "value", "left"), [("subject", "bob", 5), ("employee_ref", "E-1", 8)]
)
def test_erasure_deletes_one_persons_records_and_keeps_no_trace_of_them(
    logged: dict[str, Any], kind: str, value: str, left: int
) -> None:
    url = logged["url"]
    engine = make_engine(url)
    out = erase(engine=engine, dead_letters=logged["letters"], kind=kind,  # type: ignore[arg-type]
                value=value, requested_by="dpo", reason="request 42")  # fmt: skip
    engine.dispose()
    assert rows(url) == left
    assert rows(url, f"{kind} = '{value}'") == 0
    assert out.rows == 13 - left
    assert all(e.values().get(kind) != value for e in logged["letters"].load())
    [(by, reason, filter_kind, digest, cutoff, n, letters)] = erasure_records(url)
    assert (by, reason, filter_kind, digest, cutoff, n) == (
        "dpo",
        "request 42",
        kind,
        sha256(value),
        None,
        out.rows,
    )
    assert letters == out.dead_letters
    dump = " ".join(str(v) for r in query(url, "SELECT * FROM log_erasures") for v in r)
    assert value not in dump  # the record names nobody


def test_erase_and_prune_commands(logged: dict[str, Any]) -> None:
    env = {
        **os.environ,
        "ATTRITION_DATABASE_URL": logged["url"],
        "ATTRITION_DATA_DIR": str(logged["data"]),
    }
    env.pop("ATTRITION_LOG_RETENTION_DAYS", None)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "persistence", *args],
            env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "would delete 4 predictions" in cli("erase", "--employee-ref", "E-2", "--dry-run")
    out = cli("erase", "--employee-ref", "E-2", "--by", "auditor", "--reason", "T-7")
    assert "deleted 4 predictions and 0 dead letters" in out
    listed = cli("erasures")
    assert "by=auditor" in listed and f"employee_ref sha256={sha256('E-2')}" in listed
    assert "E-2" not in listed.replace(sha256("E-2"), "")
    assert "no retention" in cli("prune")
    env["ATTRITION_LOG_RETENTION_DAYS"] = "36500"  # a century: nothing is that old
    assert "deleted 0 predictions" in cli("prune")
    assert rows(logged["url"]) == 9
