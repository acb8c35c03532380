"""Idempotency keys remember their request (jobs.request_hash, sweeps.request_hash: a key
reused with another body is refused), and succeeded jobs their warnings (jobs.warnings: an
export format left out). NULL on older rows: their keys match any body, as before.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("warnings", sa.JSON(), nullable=True))
    with op.batch_alter_table("sweeps") as batch_op:
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch_op:
        batch_op.drop_column("request_hash")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("warnings")
        batch_op.drop_column("request_hash")
