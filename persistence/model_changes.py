"""Promotions and rollbacks: which of the two loaded models answers, and the record of changes."""

import logging
import threading
import uuid
from typing import Any, Literal

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from persistence.models import ModelChange

Action = Literal["promote", "rollback"]
log = logging.getLogger("attrition.model_changes")


def record_change(
    *,
    session: Session,
    action: Action,
    from_tag: str,
    to_tag: str,
    changed_by: str,
    reason: str | None,
    monitoring_report_id: uuid.UUID | None,
    comparison: dict[str, Any] | None,
) -> ModelChange:
    """Add one change; from the next refresh of each worker, `to_tag` answers."""
    change = ModelChange(
        action=action,
        from_tag=from_tag,
        to_tag=to_tag,
        changed_by=changed_by,
        reason=reason,
        monitoring_report_id=monitoring_report_id,
        comparison=comparison,
    )
    session.add(change)
    session.commit()
    session.refresh(change)
    return change


def latest_change(*, session: Session) -> ModelChange | None:
    """The newest change: the current choice (None: the pinned model answers)."""
    query = select(ModelChange).order_by(col(ModelChange.at).desc(), col(ModelChange.id)).limit(1)
    return session.exec(query).first()


def model_changes(*, session: Session, limit: int = 50) -> list[ModelChange]:
    """Changes, newest first."""
    query = select(ModelChange).order_by(col(ModelChange.at).desc()).limit(limit)
    return list(session.exec(query).all())


def same_model(recorded: str, tag: str, configured: str | None = None) -> bool:
    """Whether a recorded tag names this model: its resolved tag (name:version) or the tag it
    was configured as (name:latest, when the command could not resolve it)."""
    return recorded in (tag, configured)


def answering(
    latest: ModelChange | None,
    *,
    served: str,
    challenger: str | None,
    challenger_configured: str | None = None,
) -> str:
    """The tag that answers: the challenger when the newest change moved to it, else the
    pinned model (also when the change names a model this instance has not loaded)."""
    if (
        latest is not None
        and challenger is not None
        and same_model(latest.to_tag, challenger, challenger_configured)
    ):
        return challenger
    return served


class ModelChoice:
    """Which of the two loaded models answers, in one worker: the newest change, read at start
    and every `every` seconds on a thread of its own (never on the event loop). While the
    database cannot be read the last known choice stays (at start: the pinned model)."""

    def __init__(
        self,
        *,
        engine: Engine,
        served: str,
        challenger: str | None,
        challenger_configured: str | None,
        every: float,
    ) -> None:
        self.engine = engine
        self.served, self.challenger = served, challenger
        self.challenger_configured = challenger_configured
        self.every = every
        self.current = served
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> str:
        try:
            with Session(self.engine) as session:
                latest = latest_change(session=session)
        except SQLAlchemyError as exc:
            log.warning("cannot read the model changes, %s keeps answering: %s", self.current, exc)
            return self.current
        chosen = answering(latest, served=self.served, challenger=self.challenger,
                           challenger_configured=self.challenger_configured)  # fmt: skip
        if chosen != self.current:
            log.warning("model change: %s answers (was %s)", chosen, self.current)
            self.current = chosen
        return chosen

    def start(self) -> "ModelChoice":
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="model-choice", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - a dead thread would pin this worker's choice for good
                log.exception("reading the model changes failed; %s keeps answering", self.current)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
