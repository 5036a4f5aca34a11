"""the trace id of each inference (issue 18): the OpenTelemetry trace its request belonged to

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A plain ADD COLUMN (nullable, no default): instant, and it reaches every partition. No
    # index: an auditor goes from a record to its trace, not the other way.
    op.add_column("inferences", sa.Column("trace_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("inferences", "trace_id")
