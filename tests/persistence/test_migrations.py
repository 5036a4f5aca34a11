"""Migrations build the schema on SQLite and PostgreSQL and match the SQLModel tables."""

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlmodel import Session, SQLModel, col, select

from auth.users import LockedOut, authenticate, create_user, set_active
from persistence import partitions
from persistence.db import MIGRATION_LOCK, current_revision, make_engine, upgrade
from persistence.models import Inference, UserCreate
from tests.conftest import PostgresDatabases
from tests.helpers import PROJECT_DIR
from tests.persistence.conftest import partitions_for


def test_upgrade_is_idempotent_and_at_head(url: str) -> None:
    first = current_revision(url)
    upgrade(url)
    assert first is not None and current_revision(url) == first


def test_migrations_match_the_models(url: str) -> None:
    # Partitions are made at run time: not schema drift.
    partitions_for(url, *(partitions.start(month) for month in partitions.upcoming()))
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": partitions.include_name})
        diff = compare_metadata(context, SQLModel.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], diff
    assert {"users", "login_attempts", "inferences", "log_erasures"} <= tables


def test_lockout_and_disabled_users(url: str) -> None:
    engine = make_engine(url)
    kwargs = {"max_failures": 2, "lockout_seconds": 60}
    with Session(engine) as session:
        user = create_user(
            session=session,
            user_in=UserCreate(username="kim", roles=["predict"], password="pa55word!"),
        )
        assert user.created_at.tzinfo is not None
        assert authenticate(session=session, username="kim", password="pa55word!", **kwargs)
        assert authenticate(session=session, username="kim", password="nope", **kwargs) is None
        assert authenticate(session=session, username="kim", password="nope", **kwargs) is None
        with pytest.raises(LockedOut):
            authenticate(session=session, username="kim", password="pa55word!", **kwargs)
        create_user(
            session=session,
            user_in=UserCreate(username="lee", roles=["history"], password="pa55word!"),
        )
        set_active(session=session, username="lee", active=False)
        assert authenticate(session=session, username="lee", password="pa55word!", **kwargs) is None
    engine.dispose()


def test_concurrent_migrations_queue_on_the_lock_and_all_succeed(
    postgres: PostgresDatabases,
) -> None:
    # Replicas, a migration Job and on-deployment hooks may migrate at the same moment.
    url = postgres.create()
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "persistence", "migrate"],
                cwd=PROJECT_DIR,
                env={**os.environ, "ATTRITION_DATABASE_URL": url},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        deadline = time.monotonic() + 120
        while waiting_for_lock(holder) < 4 and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        assert waiting_for_lock(holder) == 4, "every migrator waits for the one holding the lock"
        assert [p.poll() for p in procs] == [None] * 4
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outputs)
    engine = make_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []
        versions = conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar()
    engine.dispose()
    assert versions == 1


def waiting_for_lock(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return int(row[0]) if row else 0


def test_0004_keeps_the_logged_rows_both_ways(url: str) -> None:
    """0004 rebuilds the inference log (partitioned, json inputs): no row may be lost."""
    from alembic import command

    from persistence.db import alembic_config

    command.downgrade(alembic_config(url), "0002")
    rows = [
        (uuid.uuid4(), datetime(2025, m, 3, 9, tzinfo=UTC), f"user{m}", {"Age": 30 + m})
        for m in (1, 2, 12)
    ]
    engine = make_engine(url)
    with engine.begin() as conn:
        for rid, at, subject, inputs in rows:
            conn.execute(
                text(
                    "INSERT INTO inferences (id, created_at, subject, route, model_tag, inputs,"
                    " probability, label, threshold, latency_ms) VALUES (:id, :at, :subject,"
                    " '/predict/attrition', 'm', :inputs, 0.5, 'Yes', 0.35, 1.0)"
                ),
                {"id": rid if url.startswith("postgresql") else rid.hex, "at": at,
                 "subject": subject, "inputs": json.dumps(inputs)},
            )  # fmt: skip

    def logged() -> list[tuple[str, str, dict[str, int]]]:
        with Session(engine) as session:
            found = session.exec(select(Inference).order_by(col(Inference.created_at))).all()
            return [(str(i.id), i.subject, i.inputs) for i in found]

    upgrade(url)
    expected = [(str(rid), subject, inputs) for rid, _, subject, inputs in rows]
    assert logged() == expected
    command.downgrade(alembic_config(url), "0002")
    with engine.connect() as conn:
        back = conn.execute(text("SELECT subject FROM inferences ORDER BY created_at")).scalars()
        assert list(back) == ["user1", "user2", "user12"]
    upgrade(url)
    assert logged() == expected
    engine.dispose()


def test_0004_carries_over_a_column_added_before_it(url: str) -> None:
    """A column added before 0004 (by hand, or by another branch's revision) survives the rebuild."""
    from alembic import command

    from persistence.db import alembic_config

    command.downgrade(alembic_config(url), "0002")
    engine = make_engine(url)
    rid = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE inferences ADD COLUMN legacy_note TEXT"))
        conn.execute(
            text(
                "INSERT INTO inferences (id, created_at, subject, route, model_tag, inputs,"
                " probability, label, threshold, latency_ms, legacy_note) VALUES (:id,"
                " '2025-03-04 10:00:00+00:00', 's', '/r', 'm', '{}', 0.5, 'No', 0.35, 1.0, 'why')"
            ),
            {"id": rid if url.startswith("postgresql") else rid.hex},
        )
    upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT legacy_note FROM inferences")).scalar_one() == "why"
    engine.dispose()


def test_0006_takes_one_persons_values_out_of_stored_reports_and_orphaned_outcomes(
    url: str,
) -> None:
    """Summaries stored before small groups were suppressed held a quiet day's exact values;
    outcomes of predictions erased or pruned before were left behind."""
    from alembic import command

    from persistence.db import alembic_config
    from persistence.models import MonitoringReport, Outcome

    command.downgrade(alembic_config(url), "0005")
    quiet_day = {
        "rows": 1,
        "fairness": {"lowest_ratio": 0.5, "flagged": ["Gender=Male"], "groups": [
            {"attribute": "Gender", "group": "Female", "n": 1, "selection_rate": 1.0,
             "mean_risk": 0.987654, "ratio": 1.0, "flagged": False},
            {"attribute": "Gender", "group": "Male", "n": 40, "selection_rate": 0.5,
             "mean_risk": 0.4, "ratio": 0.5, "flagged": True},
            {"attribute": "MaritalStatus", "group": "Single", "n": 41, "selection_rate": 0.5,
             "mean_risk": 0.4, "ratio": 1.0, "flagged": False}]},
        "quality": {"rows": 1, "ranges": [{"feature": "MonthlyIncome", "training": "[1009, 19999]",
                                           "current": "[12345, 12345]", "share_outside": 0.0}]},
        "performance": {"groups": [{"attribute": "Gender", "group": "Female", "n": 3,
                                    "true_positive_rate": 1.0, "false_positive_rate": 0.0}]},
    }  # fmt: skip
    engine = make_engine(url)
    with Session(engine) as session:
        session.add(MonitoringReport(model_tag="m", summary=quiet_day))
        session.add(Outcome(inference_id=uuid.uuid4(), outcome="left", recorded_by="hr",
                            observed_at=datetime.now(UTC)))  # fmt: skip
        session.commit()
    upgrade(url)
    with Session(engine) as session:
        [report] = session.exec(select(MonitoringReport)).all()
        assert session.exec(select(Outcome)).all() == []
    engine.dispose()
    stored = json.dumps(report.summary)
    assert "12345" not in stored and "0.987654" not in stored
    female, male, single = report.summary["fairness"]["groups"]
    assert female["suppressed"] and female["n"] is None and female["selection_rate"] is None
    assert male["ratio"] is None and single["ratio"] == 1.0  # Male's ratio was against Female
    assert report.summary["fairness"]["lowest_ratio"] == 1.0
    assert report.summary["fairness"]["flagged"] == []
    assert report.summary["quality"]["ranges"][0]["share_outside"] is None
    assert report.summary["performance"]["groups"][0]["true_positive_rate"] is None
