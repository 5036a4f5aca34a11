"""dead letters in the database; erasure records count outcomes and late copies

Dead letters move from each instance's data folder into the `dead_letters` table (the writers
move what their files hold when they next reach the database), so an erasure run anywhere
reaches them. Erasures and prunes now delete the outcomes of the predictions they delete; the
outcomes that earlier runs left behind without their prediction are deleted here.

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-15 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import persistence.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("outcomes", "recorded_by_erased", "late_copies")


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", persistence.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("columns", sa.Text(), nullable=False),
        sa.Column("line", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("record_id", sa.Text(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("employee_ref", sa.Text(), nullable=True),
        sa.Column("created_at", persistence.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_subject", "dead_letters", ["subject"])
    op.create_index(
        "ix_dead_letters_employee_ref",
        "dead_letters",
        ["employee_ref"],
        postgresql_where=sa.text("employee_ref IS NOT NULL"),
        sqlite_where=sa.text("employee_ref IS NOT NULL"),
    )
    # A constant default: PostgreSQL adds the columns without rewriting the table.
    for name in COUNTS:
        op.add_column(
            "log_erasures", sa.Column(name, sa.Integer(), nullable=False, server_default="0")
        )
    op.create_index("ix_log_erasures_filter", "log_erasures", ["filter_kind", "filter_sha256"])
    op.execute(
        "DELETE FROM outcomes WHERE NOT EXISTS"
        " (SELECT 1 FROM inferences i WHERE i.id = outcomes.inference_id)"
    )


def downgrade() -> None:
    left = op.get_bind().execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one()
    if left:  # the folders they came from may be gone: never drop them silently
        raise RuntimeError(
            f"{left} dead letters are in the database: write them (python -m persistence "
            "dead-letters retry) or delete them before downgrading"
        )
    op.drop_index("ix_log_erasures_filter", table_name="log_erasures")
    with op.batch_alter_table("log_erasures") as batch:
        for name in COUNTS:
            batch.drop_column(name)
    op.drop_index("ix_dead_letters_employee_ref", table_name="dead_letters")
    op.drop_index("ix_dead_letters_subject", table_name="dead_letters")
    op.drop_table("dead_letters")
