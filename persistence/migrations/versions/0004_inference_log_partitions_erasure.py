"""inference log: monthly partitions, json inputs, employee_ref, erasure records

The table is rebuilt (PostgreSQL cannot turn a table into a partitioned one in place): existing
rows are copied into the new one, which takes about as long as writing them did.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import persistence.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_INDEXES = {
    "ix_inferences_batch_id": ["batch_id"],
    "ix_inferences_created_id": ["created_at", "id"],
    "ix_inferences_subject_created_id": ["subject", "created_at", "id"],
}
COPIED = (
    "id, created_at, subject, route, model_tag, batch_id, position, inputs, probability, label,"
    " threshold, latency_ms"
)


def postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def partition_sql(year: int, month: int) -> str:
    """Same naming and bounds as persistence/partitions.py (kept here as of this revision)."""
    upper = (year + 1, 1) if month == 12 else (year, month + 1)
    return (
        f"CREATE TABLE IF NOT EXISTS inferences_p{year:04d}_{month:02d} PARTITION OF inferences"
        f" FOR VALUES FROM ('{year:04d}-{month:02d}-01 00:00:00+00:00')"
        f" TO ('{upper[0]:04d}-{upper[1]:02d}-01 00:00:00+00:00')"
    )


def upgrade() -> None:
    # Columns added by a revision that ran before this one (whatever the merge order) are
    # carried over as they are.
    known = {c.strip() for c in COPIED.split(",")}
    extra = [
        sa.Column(c["name"], c["type"], nullable=True)
        for c in sa.inspect(op.get_bind()).get_columns("inferences")
        if c["name"] not in known
    ]
    for index in OLD_INDEXES:
        op.drop_index(index, table_name="inferences")
    op.rename_table("inferences", "inferences_0002")
    if postgres():  # free the name for the new table's key
        op.execute("ALTER TABLE inferences_0002 RENAME CONSTRAINT inferences_pkey TO inferences_0002_pkey")
    op.create_table(
        "inferences",
        *extra,
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("route", sa.Text(), nullable=False),
        sa.Column("model_tag", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("employee_ref", sa.Text(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", "created_at"),
        postgresql_partition_by="RANGE (created_at)",
    )
    if postgres():
        months = op.get_bind().execute(
            sa.text(
                "SELECT DISTINCT extract(year FROM created_at AT TIME ZONE 'UTC')::int,"
                " extract(month FROM created_at AT TIME ZONE 'UTC')::int FROM inferences_0002"
            )
        )
        for year, month in months.all():
            op.execute(partition_sql(year, month))
        selected = COPIED.replace("inputs,", "inputs::json,")
    else:
        selected = COPIED
    names = "".join(f", {c.name}" for c in extra)
    op.execute(
        f"INSERT INTO inferences ({COPIED}{names}) SELECT {selected}{names} FROM inferences_0002"
    )
    op.drop_table("inferences_0002")
    op.create_index("ix_inferences_created_id", "inferences", ["created_at", "id"])
    op.create_index(
        "ix_inferences_subject_created_id", "inferences", ["subject", "created_at", "id"]
    )
    op.create_index(
        "ix_inferences_employee_ref",
        "inferences",
        ["employee_ref"],
        postgresql_where=sa.text("employee_ref IS NOT NULL"),
        sqlite_where=sa.text("employee_ref IS NOT NULL"),
    )
    op.create_table(
        "log_erasures",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("filter_kind", sa.Text(), nullable=False),
        sa.Column("filter_sha256", sa.Text(), nullable=True),
        sa.Column("created_before", persistence.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("dead_letters", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("log_erasures")
    for index in ("ix_inferences_employee_ref", "ix_inferences_subject_created_id",
                  "ix_inferences_created_id"):  # fmt: skip
        op.drop_index(index, table_name="inferences")
    op.rename_table("inferences", "inferences_0004")
    if postgres():
        op.execute("ALTER TABLE inferences_0004 RENAME CONSTRAINT inferences_pkey TO inferences_0004_pkey")
    op.create_table(
        "inferences",
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("model_tag", sa.String(length=128), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("position", sa.Integer(), nullable=True),
        sa.Column(
            "inputs",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("label", sa.String(length=8), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    selected = COPIED.replace("inputs,", "inputs::jsonb,") if postgres() else COPIED
    op.execute(f"INSERT INTO inferences ({COPIED}) SELECT {selected} FROM inferences_0004")
    op.execute("DROP TABLE inferences_0004 CASCADE" if postgres() else "DROP TABLE inferences_0004")
    for index, columns in OLD_INDEXES.items():
        op.create_index(index, "inferences", columns)
