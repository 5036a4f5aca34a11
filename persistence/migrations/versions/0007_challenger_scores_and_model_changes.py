"""challenger scores on inferences; model changes (promotions and rollbacks)

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-20 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import persistence.types

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHALLENGER_COLUMNS = (
    ("challenger_tag", sa.Text()),
    ("challenger_probability", sa.Float()),
    ("challenger_label", sa.Text()),
)


def upgrade() -> None:
    # Plain ADD COLUMNs (nullable, no default): instant, and they reach every partition.
    for name, type_ in CHALLENGER_COLUMNS:
        op.add_column("inferences", sa.Column(name, type_, nullable=True))
    op.create_table(
        "model_changes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("from_tag", sa.Text(), nullable=False),
        sa.Column("to_tag", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("monitoring_report_id", sa.Uuid(), nullable=True),
        sa.Column("comparison", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_changes_at", "model_changes", ["at"])


def downgrade() -> None:
    op.drop_index("ix_model_changes_at", table_name="model_changes")
    op.drop_table("model_changes")
    for name, _ in reversed(CHALLENGER_COLUMNS):
        op.drop_column("inferences", name)
