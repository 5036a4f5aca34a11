"""dead letters in the database; erasure records count outcomes and late copies

Dead letters move from each instance's data folder into the `dead_letters` table (the writers
move what their files hold when they next reach the database), so an erasure run anywhere
reaches them. Erasures and prunes now delete the outcomes of the predictions they delete; the
outcomes that earlier runs left behind without their prediction are deleted here, and stored
monitoring summaries lose what could be one person's values (groups under 10 rows, logged
minimums and maximums, group error rates).

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-15 10:00:00
"""

from collections.abc import Sequence

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import persistence.types

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTS = ("outcomes", "recorded_by_erased", "late_copies")
# Stored monitoring summaries keep no statistic over fewer rows than this (monitoring/privacy.py).
MIN_GROUP_SIZE = 10


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
    reports = sa.table(
        "monitoring_reports",
        sa.column("id", sa.Uuid()),
        sa.column("summary", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    )
    bind = op.get_bind()
    for report_id, summary in bind.execute(sa.select(reports.c.id, reports.c.summary)).all():
        bind.execute(
            reports.update().where(reports.c.id == report_id).values(summary=redact(summary))
        )


def redact(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary stored before small groups were suppressed, with what could be one person's
    values taken out (what is needed to recompute them properly is not stored)."""
    k = MIN_GROUP_SIZE
    fairness = summary.get("fairness") or {}
    hidden = {g["attribute"] for g in fairness.get("groups", []) if (g.get("n") or 0) < k}
    for g in fairness.get("groups", []):
        if (g.get("n") or 0) < k:
            g.update(n=None, selection_rate=None, mean_risk=None, suppressed=True)
        if g["attribute"] in hidden:  # a ratio against a hidden group gives its rate away
            g.update(ratio=None, flagged=False)
    if fairness:
        ratios = [g["ratio"] for g in fairness.get("groups", []) if g.get("ratio") is not None]
        fairness["lowest_ratio"] = min(ratios, default=None)
        fairness["flagged"] = [f"{g['attribute']}={g['group']}" for g in fairness["groups"]
                               if g.get("flagged")]  # fmt: skip
    quality = summary.get("quality") or {}
    for r in quality.get("ranges", []):
        r["current"] = "removed: stored before values of fewer than 10 rows were suppressed"
        if quality.get("rows", 0) < k:
            r["share_outside"] = None
    for g in (summary.get("performance") or {}).get("groups", []):
        g.update(true_positive_rate=None, false_positive_rate=None)  # per-class counts unknown
        if (g.get("n") or 0) < k:
            g.update(n=None, suppressed=True)
    summary["min_group_size"] = k
    return summary


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
