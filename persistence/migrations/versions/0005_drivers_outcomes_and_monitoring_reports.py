"""drivers, outcomes and monitoring reports

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 00:31:24.613445
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import persistence.types
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('monitoring_reports',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('model_tag', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('summary', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_monitoring_reports_created', 'monitoring_reports', ['created_at'], unique=False)
    op.create_table('outcomes',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('inference_id', sa.Uuid(), nullable=False),
    sa.Column('revision', sa.Integer(), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('observed_at', persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', persistence.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('inference_id', 'revision', name='uq_outcomes_revision')
    )
    # A plain ADD COLUMN (nullable, no default): instant, and it works on a partitioned table.
    op.add_column('inferences', sa.Column('drivers', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('inferences', 'drivers')
    op.drop_table('outcomes')
    op.drop_index('ix_monitoring_reports_created', table_name='monitoring_reports')
    op.drop_table('monitoring_reports')
