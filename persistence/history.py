"""Reading the inference log: filters and keyset pagination, newest first."""

import base64
import binascii
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator
from sqlalchemy import tuple_
from sqlmodel import Session, col, select

from persistence.models import Inference
from persistence.types import plain_text


class BadCursor(ValueError):
    pass


def utc_time(value: datetime) -> datetime:
    """A filter time as UTC; ValueError without an offset or outside the representable range."""
    if value.tzinfo is None:
        raise ValueError("needs a timezone offset, e.g. 2026-01-31T00:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:  # 0001-01-01T00:00+05:00 is before year 1 in UTC
        raise ValueError("is outside the representable range once converted to UTC") from exc


FilterTime = Annotated[datetime, AfterValidator(utc_time)]
FilterText = Annotated[str, AfterValidator(plain_text)]


def encode_cursor(record: Inference) -> str:
    raw = json.dumps({"t": record.created_at.isoformat(), "id": str(record.id)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# What encode_cursor writes: URL-safe base64 without padding. b64decode skips every other
# character, so a cursor with a NUL or a space in it would otherwise decode as the original.
CURSOR_TEXT = re.compile(r"[A-Za-z0-9_-]*")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (time, id) a cursor points after; BadCursor naming the problem for anything else."""
    if not CURSOR_TEXT.fullmatch(cursor):
        raise BadCursor("has characters a cursor never has (URL-safe base64 only)")
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, record_id = raw["t"], raw["id"]
        if not isinstance(at, str) or not isinstance(record_id, str):
            raise TypeError("cursor fields must be strings")
        parsed = datetime.fromisoformat(at), uuid.UUID(record_id)
    except (ValueError, KeyError, TypeError, IndexError, binascii.Error, RecursionError) as exc:
        raise BadCursor("not a cursor from this API") from exc
    try:
        return utc_time(parsed[0]), parsed[1]
    except ValueError as exc:
        raise BadCursor(f"its time {exc}") from exc


def list_inferences(
    *,
    session: Session,
    limit: int,
    cursor: str | None = None,
    subject: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    label: str | None = None,
    min_probability: float | None = None,
    model_tag: str | None = None,
) -> tuple[list[Inference], str | None]:
    """One page, newest first, and the cursor of the next page (None on the last)."""
    query = select(Inference)
    if subject is not None:
        query = query.where(Inference.subject == subject)
    if since is not None:
        query = query.where(col(Inference.created_at) >= since)
    if until is not None:
        query = query.where(col(Inference.created_at) < until)
    if label is not None:
        query = query.where(Inference.label == label)
    if min_probability is not None:
        query = query.where(col(Inference.probability) >= min_probability)
    if model_tag is not None:
        query = query.where(Inference.model_tag == model_tag)
    if cursor is not None:
        at, last_id = decode_cursor(cursor)
        query = query.where(
            tuple_(col(Inference.created_at), col(Inference.id)) < tuple_(at, last_id)
        )
    query = query.order_by(col(Inference.created_at).desc(), col(Inference.id).desc()).limit(
        limit + 1
    )
    rows = list(session.exec(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]) if more and rows else None


def get_inference(*, session: Session, inference_id: uuid.UUID) -> Inference | None:
    # The key is (id, created_at), for the monthly partitions; an id has one created_at.
    return session.exec(select(Inference).where(Inference.id == inference_id)).first()
