"""Column types that behave the same on PostgreSQL and SQLite."""

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes; SQLite returns naive values, which are UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


# C0/C1 control characters (NUL included) and UTF-16 surrogates: PostgreSQL refuses NUL in text
# and UTF-8 cannot encode a lone surrogate, so no stored name or tag contains them.
UNSTORABLE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def plain_text(value: str) -> str:
    """`value`, or ValueError when it has characters no stored text has (a pydantic validator)."""
    if UNSTORABLE_TEXT.search(value):
        raise ValueError("must not contain control characters")
    return value
