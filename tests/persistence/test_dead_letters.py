"""Dead letters in the database on each backend: moved from a folder's file exactly (text the
database cannot hold included), once, leaving what is no dead letter in place; found by erasure
by any value, even one no text column can hold; and a downgrade never drops them."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from persistence.db import make_engine
from persistence.inference_log.dead_letters import DeadLetters, stored
from persistence.inference_log.writer import COLUMNS, encode
from persistence.retention import Tombstones, erase
from tests.persistence.test_inference_log import record

NOT_UTF8 = "E-\udcff"  # a byte that is not UTF-8, as Python reads it from a file or argv


@pytest.fixture
def letters(url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(url)
    yield DeadLetters(tmp_path / "dead-letters.jsonl", tombstones=Tombstones(engine=engine))
    engine.dispose()


def refused(*records):  # type: ignore[no-untyped-def]
    return [encode([r])[2][0] for r in records]


def test_lines_arrive_byte_for_byte_once_and_unreadable_lines_stay(letters: DeadLetters) -> None:
    nul = record(1, subject="nul\x00inside", employee_ref="E-1")
    lone = record(2, employee_ref="lone \ud800 surrogate")
    letters.add(COLUMNS, refused(nul, lone))
    local = letters.local()
    legacy = {"at": datetime.now(UTC).isoformat(), "columns": list(COLUMNS),
              "line": local[0].text(), "error": "from an earlier version"}  # fmt: skip
    with open(letters.path, "a") as f:  # an entry without an id, and a line torn by a crash
        f.write(json.dumps(legacy) + "\n" + '{"at": "2027-01-0')
    assert letters.move() == 3
    assert letters.path.read_text() == '{"at": "2027-01-0\n'  # kept for a person to look at
    assert letters.move() == 0  # nothing new: the torn line is not read again
    with open(letters.path, "a") as f:  # as if the file had not been emptied (a crash)
        f.write("".join(e.to_json() for e in local) + json.dumps(legacy) + "\n")
    assert letters.move() == 3
    engine = letters.tombstones.engine  # type: ignore[union-attr]
    assert engine is not None
    table = stored(engine=engine)
    assert len(table) == 3  # each once: ids are kept, and derived for entries without one
    by_id = {e.id: e for e in table}
    for entry in local:
        assert by_id[entry.id].line == entry.line and by_id[entry.id].error == entry.error
    assert by_id[local[0].id].values()["subject"] == "nul\x00inside"
    assert by_id[local[1].id].line.count(b"\xed\xa0\x80") == 1  # the surrogate, not UTF-8


def test_erasure_finds_a_value_no_text_column_holds(letters: DeadLetters) -> None:
    letters.add(COLUMNS, refused(record(1, subject="x\x00", employee_ref=NOT_UTF8),
                                 record(2, subject="y\x00", employee_ref="E-2")))  # fmt: skip
    letters.move()
    engine = letters.tombstones.engine  # type: ignore[union-attr]
    assert engine is not None
    out = erase(engine=engine, kind="employee_ref", value=NOT_UTF8, requested_by="dpo")
    assert (out.rows, out.dead_letters) == (0, 1)
    assert [e.values()["employee_ref"] for e in stored(engine=engine)] == ["E-2"]


def test_downgrade_refuses_to_drop_dead_letters(url: str, letters: DeadLetters) -> None:
    from alembic import command

    from persistence.db import alembic_config, current_revision

    letters.add(COLUMNS, refused(record(1, subject="z\x00")))
    letters.move()
    command.downgrade(alembic_config(url), "0006")  # the later ones do not look at them
    with pytest.raises(RuntimeError, match="1 dead letters are in the database"):
        command.downgrade(alembic_config(url), "0005")
    assert current_revision(url) == "0006"
    engine = letters.tombstones.engine  # type: ignore[union-attr]
    assert engine is not None
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM dead_letters")
    command.downgrade(alembic_config(url), "0005")
    command.upgrade(alembic_config(url), "head")
    assert stored(engine=engine) == []


def test_an_entry_appended_while_the_database_works_stays_for_the_next_move(
    letters: DeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    import persistence.inference_log.dead_letters as dl

    letters.add(COLUMNS, refused(record(1, subject="a\x00")))
    insert = dl.insert_ignoring

    def while_inserting(conn, rows):  # type: ignore[no-untyped-def]
        letters.add(COLUMNS, refused(record(2, subject="b\x00")))  # the file is not locked
        insert(conn, rows)

    monkeypatch.setattr(dl, "insert_ignoring", while_inserting)
    assert letters.move() == 1
    assert [e.values()["subject"] for e in letters.local()] == ["b\x00"]
    monkeypatch.setattr(dl, "insert_ignoring", insert)
    assert letters.move() == 1 and letters.local() == []
    engine = letters.tombstones.engine  # type: ignore[union-attr]
    assert engine is not None
    assert sorted(e.values()["subject"] or "" for e in stored(engine=engine)) == ["a\x00", "b\x00"]
