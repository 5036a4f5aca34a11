"""The writer, spool and replays on the real PostgreSQL (no server): nothing lost, nothing twice."""

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from persistence.db import upgrade
from persistence.inference_log import InferenceLog, PostgresSink, Record, Spool, make_sink
from tests.conftest import PostgresDatabases, database_url
from tests.helpers import free_port


def record(i: int) -> Record:
    return Record(
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


def count(url: str) -> int:
    from sqlalchemy import text

    from persistence.db import make_engine

    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM inferences")).scalar_one()
    engine.dispose()
    return int(n)


def dead_postgres() -> PostgresSink:
    return PostgresSink(
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", connect_timeout=1
    )


def test_writer_flushes_everything_on_close(url: str, tmp_path: Path) -> None:
    log = InferenceLog(make_sink(url), Spool(tmp_path / "spool"), flush_interval=0.05).start()
    assert log.submit([record(i) for i in range(2500)]) == []
    log.close()
    assert count(url) == 2500
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # an empty spool is removed


@pytest.mark.parametrize("method", ["copy", "executemany"])
def test_postgres_write_methods_ignore_replayed_ids(
    postgres: PostgresDatabases, tmp_path: Path, method: str
) -> None:
    url = database_url("postgresql", postgres, tmp_path)
    upgrade(url)
    sink = PostgresSink(url, method=method)
    records = [record(i) for i in range(50)]
    sink.write(records)
    sink.write(records[:25])  # a replay of records already in: ignored, not duplicated
    sink.close()
    assert count(url) == 50
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        inputs, p = conn.execute(
            "SELECT inputs, probability FROM inferences WHERE id = %s", (records[7].id,)
        ).fetchone()
    assert inputs == json.loads(records[7].inputs) and p == records[7].probability


def test_failed_writes_are_spooled_and_replayed_by_the_next_owner(url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    down = InferenceLog(
        dead_postgres(), Spool(spool_dir), flush_interval=0.05, retry_interval=60
    ).start()
    down.submit([record(i) for i in range(30)])
    down.close()  # cannot reach the database: the records stay in its spool file
    files = list(spool_dir.glob("spool-*.jsonl"))
    assert len(files) == 1 and files[0].read_bytes().count(b"\n") == 30

    up = InferenceLog(make_sink(url), Spool(spool_dir), flush_interval=0.05).start()
    up.close()  # its writer replays orphaned spool files first
    assert count(url) == 30
    assert not list(spool_dir.glob("spool-*.jsonl"))


def test_a_live_workers_spool_is_not_taken(url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    owner = Spool(spool_dir)
    owner.append([record(1)])
    other = Spool(spool_dir)
    assert other.replay_orphans(make_sink(url), 100) == 0  # flock held by its owner
    assert owner.replay_own(make_sink(url), 100) == 1
    assert count(url) == 1


def test_full_queue_overflows_to_the_spool(url: str, tmp_path: Path) -> None:
    log = InferenceLog(make_sink(url), Spool(tmp_path / "spool"), queue_size=10)
    records = [record(i) for i in range(25)]
    overflow = log.submit(records)  # writer not started: the queue fills up
    assert len(overflow) == 15
    log.overflow(overflow)
    assert log.state()["spool_records"] == 15 and log.state()["state"] == "degraded"
    log.start().close()
    assert count(url) == 25


def test_torn_last_line_is_skipped(url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = record(1)
    (spool_dir / "spool-1-dead.jsonl").write_bytes(good.to_line() + b'{"id": "cut sh')
    assert Spool(spool_dir).replay_orphans(make_sink(url), 100) == 1
    assert count(url) == 1


def test_a_fresh_batch_holding_a_known_id_is_inserted_without_duplicates(
    postgres: PostgresDatabases, tmp_path: Path
) -> None:
    url = database_url("postgresql", postgres, tmp_path)
    upgrade(url)
    sink = PostgresSink(url)
    records = [record(i) for i in range(20)]
    sink.write(records[:5], fresh=True)  # straight COPY
    sink.write(
        records, fresh=True
    )  # a broken promise: COPY fails on the key, then insert-or-ignore
    sink.close()
    assert count(url) == 20


def test_spool_lines_of_the_previous_format_replay(url: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    old = {**record(1)._asdict(), "inputs": {"Age": 41, "OverTime": "Yes"}}  # inputs as an object
    (spool_dir / "spool-1-dead.jsonl").write_text(json.dumps(old) + "\n")
    assert Spool(spool_dir).replay_orphans(make_sink(url), 100) == 1
    from sqlalchemy import select

    from persistence.db import make_engine
    from persistence.models import Inference

    engine = make_engine(url)
    with engine.connect() as conn:
        inputs = conn.execute(select(Inference.inputs)).scalar_one()  # type: ignore[call-overload]
    engine.dispose()
    assert inputs == {"Age": 41, "OverTime": "Yes"}


@pytest.mark.parametrize("method", ["copy", "executemany"])
def test_drivers_are_stored_null_or_json_by_every_path(
    url: str, tmp_path: Path, method: str
) -> None:
    """Explained records carry their drivers through COPY, inserts and the spool; others null."""
    from sqlalchemy import text

    from persistence.db import make_engine

    drivers = json.dumps(
        {"method": "linear-exact", "base_value": -2.0, "drivers": [], "other": 0.5}
    )
    plain, explained = record(1), record(2)._replace(drivers=drivers)
    assert Record.from_line(explained.to_line()) == explained
    old_line = json.dumps({k: v for k, v in plain._asdict().items() if k != "drivers"}).encode()
    assert Record.from_line(old_line) == plain  # spooled before the column existed
    sink = make_sink(url, method) if url.startswith("postgresql") else make_sink(url)
    sink.write([plain, explained], fresh=True)
    replayed = record(3)._replace(drivers=drivers)
    sink.write([replayed, explained])  # the idempotent replay path
    sink.close()
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, drivers FROM inferences")).all())
        nulls = conn.execute(text("SELECT count(*) FROM inferences WHERE drivers IS NULL")).scalar()
    assert nulls == 1  # SQL NULL, not JSON null
    engine.dispose()
    stored = {
        str(uuid.UUID(str(k))): json.loads(v) if isinstance(v, str) else v for k, v in rows.items()
    }
    assert stored == {
        plain.id: None,
        explained.id: json.loads(drivers),
        replayed.id: json.loads(drivers),
    }
