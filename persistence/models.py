"""SQLModel tables (Base -> Create -> table -> Public), UUID keys, timezone-aware times."""

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint, text
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
    # Text columns without a length limit: a record the database refused for its length would
    # have to be dead-lettered, so limits belong to the API models that accept the values.
    subject: str = Field(sa_type=Text, description="The token's subject.")
    route: str = Field(sa_type=Text)
    model_tag: str = Field(sa_type=Text)
    batch_id: uuid.UUID | None = Field(default=None, description="Shared by the rows of one batch.")
    position: int | None = Field(default=None, description="Row of the employee in its batch.")
    # json, not jsonb: PostgreSQL keeps the text as sent instead of decomposing it, which cut
    # its CPU per logged row by a third (loadtests/log_write_bench.py); reads parse it either way.
    inputs: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    probability: float
    label: str = Field(sa_type=Text)
    threshold: float
    latency_ms: float
    trace_id: str | None = Field(
        default=None,
        sa_type=Text,
        description="The OpenTelemetry trace of the request (32 hex digits), when it had one.",
    )
    employee_ref: str | None = Field(
        default=None,
        sa_type=Text,
        description="The caller's reference for the employee, if it sent one (never a model input).",
    )
    drivers: dict[str, Any] | None = Field(
        default=None,
        # none_as_null: a prediction without drivers has SQL NULL there, not JSON 'null'; json,
        # not jsonb, for the same reason as inputs.
        sa_column=Column(JSON(none_as_null=True), nullable=True),
        description="The explanation returned with the prediction, when it was asked for.",
    )


class Inference(InferenceBase, table=True):
    """One prediction: what it was made from and what it said. The id is the request id.

    On PostgreSQL the table is partitioned by month of created_at (persistence/partitions.py),
    so the primary key includes it; an id is still unique, as every record has one created_at.
    """

    __tablename__ = "inferences"
    __table_args__ = (
        Index("ix_inferences_created_id", "created_at", "id"),
        Index("ix_inferences_subject_created_id", "subject", "created_at", "id"),
        Index(
            "ix_inferences_employee_ref",
            "employee_ref",
            postgresql_where=text("employee_ref IS NOT NULL"),
            sqlite_where=text("employee_ref IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: uuid.UUID = Field(primary_key=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, primary_key=True, nullable=False))
    # The model that did not answer, scored on the same features in the same batch (a shadow):
    # never returned, not even by the history routes. NULL when no challenger was configured.
    challenger_tag: str | None = Field(default=None, sa_type=Text)
    challenger_probability: float | None = None
    challenger_label: str | None = Field(
        default=None, sa_type=Text, description="At the challenger's own threshold."
    )


class InferencePublic(InferenceBase):
    id: uuid.UUID
    created_at: datetime


class Outcome(SQLModel, table=True):
    """What became of a scored employee, reported later by an HR system.

    Append-only: a correction adds the next revision; the highest revision is the outcome.
    No foreign key to inferences: that table may be partitioned by time, and a key on `id`
    alone cannot reference it; the route checks the id instead, and erasure and retention
    delete the outcomes of the predictions they delete (persistence/retention.py).
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


class LogErasure(SQLModel, table=True):
    """One erasure or retention prune of the inference log: who, when, which filter, how many
    rows. Never the erased values: a subject or employee_ref filter is kept as its SHA-256."""

    __tablename__ = "log_erasures"
    # Tombstone look-ups: a late record's subject and employee_ref hashes.
    __table_args__ = (Index("ix_log_erasures_filter", "filter_kind", "filter_sha256"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    requested_by: str = Field(sa_type=Text)
    reason: str | None = Field(default=None, sa_type=Text)
    filter_kind: str = Field(sa_type=Text, description="subject, employee_ref or created_before.")
    filter_sha256: str | None = Field(default=None, sa_type=Text)
    created_before: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))
    rows: int = Field(description="Rows deleted from the database.")
    dead_letters: int = Field(default=0, description="Dead letters deleted.")
    outcomes: int = Field(default=0, description="Outcomes of the deleted predictions, deleted.")
    recorded_by_erased: int = Field(
        default=0, description="Other outcomes whose recorded_by was the erased subject."
    )
    late_copies: int = Field(
        default=0,
        description="Records of this erasure's person made before it that reached the database "
        "after it (a replay, a dead letter moved or retried), removed on arrival.",
    )


class DeadLetterRow(SQLModel, table=True):
    """A record the database refused, kept with the reason until `python -m persistence
    dead-letters retry` writes it or an erasure or prune deletes it.

    `line` is the COPY text line's bytes exactly as refused (NUL or bytes that are not UTF-8
    included, which text columns cannot hold). The person's keys are copied out of it for
    erasure and retention: NULL where the line has no readable, storable value.
    """

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_subject", "subject"),
        Index(
            "ix_dead_letters_employee_ref",
            "employee_ref",
            postgresql_where=text("employee_ref IS NOT NULL"),
            sqlite_where=text("employee_ref IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(primary_key=True, description="The dead letter's own id.")
    at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    columns: str = Field(sa_type=Text, description="The line's column names, tab-separated.")
    line: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    error: str = Field(sa_type=Text)
    record_id: str | None = Field(default=None, sa_type=Text)
    subject: str | None = Field(default=None, sa_type=Text)
    employee_ref: str | None = Field(default=None, sa_type=Text)
    created_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime))


class ModelChange(SQLModel, table=True):
    """One promotion or rollback: from then on `to_tag` answers and the other model is the
    shadow. The newest row is the current choice; no row means the pinned model answers."""

    __tablename__ = "model_changes"
    __table_args__ = (Index("ix_model_changes_at", "at"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime, nullable=False))
    action: str = Field(sa_type=Text, description="promote or rollback.")
    from_tag: str = Field(sa_type=Text, description="The model that answered before.")
    to_tag: str = Field(sa_type=Text, description="The model that answers from now on.")
    changed_by: str = Field(sa_type=Text)
    reason: str | None = Field(default=None, sa_type=Text)
    monitoring_report_id: uuid.UUID | None = Field(
        default=None, description="The monitoring report the decision relied on."
    )
    comparison: dict[str, Any] | None = Field(
        default=None,
        sa_column=Column(JSON(none_as_null=True), nullable=True),
        description="The comparison numbers the decision relied on (that report's section).",
    )
