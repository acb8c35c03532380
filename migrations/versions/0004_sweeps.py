"""Hyper-parameter sweeps: a sweeps table, jobs.sweep_id (the sweep a job is a point of) and
jobs.choices (automatic choices resolved before training; NULL on older rows, read as {}).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("scratch", sa.Boolean(), nullable=False),
        sa.Column("points", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sweeps_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_sweeps_tenant_id_idempotency_key")
        ),
    )
    with op.batch_alter_table("sweeps") as batch_op:
        batch_op.create_index(
            "ix_sweeps_tenant_created", ["tenant_id", "created_at", "id"], unique=False
        )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column("choices", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_sweep_id"), ["sweep_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_sweep_id_sweeps"), "sweeps", ["sweep_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_sweep_id_sweeps"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_sweep_id"))
        batch_op.drop_column("choices")
        batch_op.drop_column("sweep_id")
    with op.batch_alter_table("sweeps") as batch_op:
        batch_op.drop_index("ix_sweeps_tenant_created")
    op.drop_table("sweeps")
