"""Promotions and rollbacks: which of the two loaded models answers, and the record of changes."""

import uuid
from typing import Any, Literal

from sqlmodel import Session, col, select

from persistence.models import ModelChange

Action = Literal["promote", "rollback"]


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
