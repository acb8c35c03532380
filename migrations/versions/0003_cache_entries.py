"""Teacher-cache entries: one row per entry a tenant's jobs share.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_entries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.String(length=1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_cache_entries_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_entries")),
        sa.UniqueConstraint("tenant_id", "key", name=op.f("uq_cache_entries_tenant_id_key")),
    )
    with op.batch_alter_table("cache_entries") as batch_op:
        batch_op.create_index(
            "ix_cache_entries_tenant_created", ["tenant_id", "created_at", "id"], unique=False
        )
        batch_op.create_index("ix_cache_entries_last_used", ["last_used_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("cache_entries") as batch_op:
        batch_op.drop_index("ix_cache_entries_last_used")
        batch_op.drop_index("ix_cache_entries_tenant_created")
    op.drop_table("cache_entries")
