"""SQLModel tables (Base -> Create -> table -> Public), UUID keys, timezone-aware times."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from persistence.types import UTCDateTime, utcnow

# outcomes: HR systems that report whether scored employees left (POST /outcomes).
ROLES = ("predict", "history", "outcomes", "admin")
USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"
USERNAME_MAX_LENGTH = 64


class UserBase(SQLModel):
    # schema_extra, not regex=: SQLModel 0.0.50 drops regex= under pydantic 2 (names with spaces
    # or control characters were accepted).
    username: str = Field(
        min_length=1, max_length=USERNAME_MAX_LENGTH, schema_extra={"pattern": USERNAME_PATTERN}
    )
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    is_active: bool = True


class UserCreate(UserBase):
    password: str = Field(min_length=8, max_length=1024)


class User(UserBase, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    username: str = Field(max_length=64, unique=True, index=True)
    password_hash: str = Field(max_length=255)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    last_login_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    # Tokens issued before this are refused: set when the user is created (so a re-created name
    # does not inherit its predecessor's tokens) and by `python -m auth revoke-tokens`.
    tokens_valid_after: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class UserPublic(UserBase):
    id: uuid.UUID
    created_at: datetime
    last_login_at: datetime | None


class LoginAttempt(SQLModel, table=True):
    """Failed logins per username (known or not), for lockout across all workers.

    `failures` counts attempts since the last success, started before the password check;
    `updated_at` is the latest attempt (counts older than the lockout window start again).
    """

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_updated_at", "updated_at"),)

    username: str = Field(max_length=64, primary_key=True)
    failures: int = 0
    locked_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )


class InferenceBase(SQLModel):
    subject: str = Field(max_length=255, description="The token's subject.")
    route: str = Field(max_length=128)
    model_tag: str = Field(max_length=128)
    batch_id: uuid.UUID | None = Field(default=None, description="Shared by the rows of one batch.")
    position: int | None = Field(default=None, description="Row of the employee in its batch.")
    inputs: dict[str, Any] = Field(
        sa_column=Column(JSON().with_variant(JSONB(), "postgresql"), nullable=False)
    )
    probability: float
    label: str = Field(max_length=8)
    threshold: float
    latency_ms: float
    drivers: dict[str, Any] | None = Field(
        default=None,
        # none_as_null: a prediction without drivers has SQL NULL there, not JSON 'null'.
        sa_column=Column(
            JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql"),
            nullable=True,
        ),
        description="The explanation returned with the prediction, when it was asked for.",
    )


class Inference(InferenceBase, table=True):
    """One prediction: what it was made from and what it said. The id is the request id."""

    __tablename__ = "inferences"
    __table_args__ = (
        Index("ix_inferences_created_id", "created_at", "id"),
        Index("ix_inferences_subject_created_id", "subject", "created_at", "id"),
        Index("ix_inferences_batch_id", "batch_id"),
    )

    id: uuid.UUID = Field(primary_key=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class InferencePublic(InferenceBase):
    id: uuid.UUID
    created_at: datetime


class Outcome(SQLModel, table=True):
    """What became of a scored employee, reported later by an HR system.

    Append-only: a correction adds the next revision; the highest revision is the outcome.
    No foreign key to inferences: that table may be partitioned by time, and a key on `id`
    alone cannot reference it; the route checks the id instead.
    """

    __tablename__ = "outcomes"
    __table_args__ = (UniqueConstraint("inference_id", "revision", name="uq_outcomes_revision"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    inference_id: uuid.UUID
    revision: int = Field(default=0, description="0 first; each correction adds 1.")
    outcome: str = Field(max_length=8, description="left or stayed")
    observed_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    recorded_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    recorded_by: str = Field(max_length=255, description="Subject of the token that posted it.")


class MonitoringReport(SQLModel, table=True):
    """The JSON summary of each monitoring report run; the newest is served and exported."""

    __tablename__ = "monitoring_reports"
    __table_args__ = (Index("ix_monitoring_reports_created", "created_at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False)
    )
    model_tag: str = Field(max_length=128)
    summary: dict[str, Any] = Field(
        sa_column=Column(JSON().with_variant(JSONB(), "postgresql"), nullable=False)
    )
