"""Invalid uploads release their file: teachers.blob_id and datasets.blob_id become nullable.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("teachers", "datasets"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("blob_id", existing_type=sa.Uuid(), nullable=True)


def downgrade() -> None:
    # Rows whose file was released cannot point anywhere again: drop them first.
    for table in ("teachers", "datasets"):
        op.execute(sa.text(f"DELETE FROM {table} WHERE blob_id IS NULL"))
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("blob_id", existing_type=sa.Uuid(), nullable=False)
