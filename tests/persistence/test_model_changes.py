"""Promotions and rollbacks: the CLI records them with their evidence, the choice follows them."""

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session

from persistence.db import make_engine
from persistence.model_changes import (
    ModelChoice,
    answering,
    latest_change,
    model_changes,
    record_change,
)
from persistence.reports import save_report
from tests.helpers import PROJECT_DIR

SERVED = "attrition:served1"
CHALLENGER = "attrition-challenger:chal1"


def run(url: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "ATTRITION_CHALLENGER_TAG"}
    environ.update(ATTRITION_DATABASE_URL=url, ATTRITION_DATA_DIR=str(tmp_path),
                   ATTRITION_MODEL_TAG=SERVED, **env)  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "persistence", *args],
        env=environ, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_promote_and_rollback_are_recorded_with_the_report_they_relied_on(
    url: str, tmp_path: Path
) -> None:
    engine = make_engine(url)
    refused = run(url, tmp_path, "promote")
    assert refused.returncode == 2 and "ATTRITION_CHALLENGER_TAG" in refused.stderr
    assert run(url, tmp_path, "rollback").returncode == 2  # nothing promoted yet
    comparison = {"agreement": 0.97, "outcomes": 120, "roc_auc_difference": 0.01}
    with Session(engine) as session:
        report = save_report(session=session, model_tag=SERVED, summary={"comparison": comparison})
    env = {"ATTRITION_CHALLENGER_TAG": CHALLENGER}
    done = run(url, tmp_path, "promote", "--by", "kim", "--reason", "CHG-1", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    with Session(engine) as session:
        latest = latest_change(session=session)
        assert latest is not None
        assert (latest.action, latest.from_tag, latest.to_tag) == ("promote", SERVED, CHALLENGER)
        assert (latest.changed_by, latest.reason) == ("kim", "CHG-1")
        assert latest.monitoring_report_id == report.id and latest.comparison == comparison
        assert answering(latest, served=SERVED, challenger=CHALLENGER) == CHALLENGER
    again = run(url, tmp_path, "promote", **env)
    assert again.returncode == 2 and "already answers" in again.stderr
    done = run(url, tmp_path, "rollback", "--reason", "drift", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert run(url, tmp_path, "rollback", **env).returncode == 2  # the last change was one
    with Session(engine) as session:
        history = model_changes(session=session)
        assert [(c.action, c.from_tag, c.to_tag) for c in history] == [
            ("rollback", CHALLENGER, SERVED),
            ("promote", SERVED, CHALLENGER),
        ]
        assert answering(history[0], served=SERVED, challenger=CHALLENGER) == SERVED
    listed = run(url, tmp_path, "model-changes")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert "rollback" in lines[0] and "reason=drift" in lines[0] and "reason=CHG-1" in lines[1]
    engine.dispose()


def test_an_unknown_report_is_refused_and_no_change_recorded(url: str, tmp_path: Path) -> None:
    done = run(url, tmp_path, "promote", "--to", CHALLENGER, "--report",
               "00000000-0000-0000-0000-000000000001")  # fmt: skip
    assert done.returncode == 2 and "no monitoring report" in done.stderr
    engine = make_engine(url)
    with Session(engine) as session:
        assert latest_change(session=session) is None
    engine.dispose()


def test_the_choice_ignores_a_change_to_a_model_not_loaded() -> None:
    from persistence.models import ModelChange

    to_other = ModelChange(action="promote", from_tag=SERVED, to_tag="other:1", changed_by="x")
    assert answering(to_other, served=SERVED, challenger=CHALLENGER) == SERVED
    assert answering(None, served=SERVED, challenger=CHALLENGER) == SERVED
    unresolved = ModelChange(
        action="promote", from_tag=SERVED, to_tag="attrition-challenger:latest", changed_by="x"
    )
    assert answering(unresolved, served=SERVED, challenger=CHALLENGER,
                     challenger_configured="attrition-challenger:latest") == CHALLENGER  # fmt: skip
    assert answering(unresolved, served=SERVED, challenger=None) == SERVED


def promote_and_wait(engine: Any, choice: ModelChoice) -> None:
    """Record a promotion to the challenger; wait (5 s at most) for `choice` to follow it."""
    with Session(engine) as session:
        record_change(session=session, action="promote", from_tag=SERVED, to_tag=CHALLENGER,
                      changed_by="kim", reason=None, monitoring_report_id=None, comparison=None)  # fmt: skip
    deadline = time.monotonic() + 5
    while choice.current != CHALLENGER and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_worker_follows_the_newest_change_and_keeps_it_while_the_database_is_away(
    url: str,
) -> None:
    engine = make_engine(url)
    choice = ModelChoice(engine=engine, served=SERVED, challenger=CHALLENGER,
                         challenger_configured="attrition-challenger:latest", every=0.05).start()  # fmt: skip
    assert choice.current == SERVED
    promote_and_wait(engine, choice)
    assert choice.current == CHALLENGER
    choice.engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    assert choice.refresh() == CHALLENGER  # the last known choice, no exception
    choice.close()
    choice.engine.dispose()
    engine.dispose()


def test_an_unexpected_error_does_not_stop_a_worker_following_the_changes(url: str) -> None:
    """One failed read of any kind (not only the database's) must not end the worker's thread:
    it would keep its last choice for good."""
    engine = make_engine(url)
    choice = ModelChoice(engine=engine, served=SERVED, challenger=CHALLENGER,
                         challenger_configured=None, every=0.05)  # fmt: skip
    real, calls = choice.refresh, []

    def failing_once() -> str:
        calls.append(1)
        if len(calls) == 2:  # the thread's first read
            raise RuntimeError("an error of no known kind")
        return real()

    choice.refresh = failing_once  # type: ignore[method-assign]
    choice.start()
    promote_and_wait(engine, choice)
    choice.close()
    engine.dispose()
    assert choice.current == CHALLENGER and len(calls) > 2
