"""tokens bound to the user they were issued for; login attempts purged by age

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import persistence.types

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable first, filled, then NOT NULL: existing users keep the tokens issued since creation.
    with op.batch_alter_table('users') as batch:
        batch.add_column(
            sa.Column('tokens_valid_after', persistence.types.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute('UPDATE users SET tokens_valid_after = created_at')
    with op.batch_alter_table('users') as batch:
        batch.alter_column(
            'tokens_valid_after',
            existing_type=persistence.types.UTCDateTime(timezone=True),
            nullable=False,
        )
    op.create_index('ix_login_attempts_updated_at', 'login_attempts', ['updated_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_login_attempts_updated_at', table_name='login_attempts')
    with op.batch_alter_table('users') as batch:
        batch.drop_column('tokens_valid_after')
