"""storage: pools, volumes, snapshots and the root disk chain of each VM

Revision ID: 0100_storage
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100_storage"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("pool", sa.String(63), sa.ForeignKey("pools.name"), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("instance_id", sa.String(36), nullable=True),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_volumes_name", "volumes", ["name"], unique=True)
    op.create_index("ix_volumes_instance_id", "volumes", ["instance_id"])
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("instance_id", "name"),
    )
    op.create_index("ix_snapshots_instance_id", "snapshots", ["instance_id"])
    op.create_table(
        "instance_disks",
        sa.Column("instance_id", sa.String(36), primary_key=True),
        sa.Column("active_path", sa.Text(), nullable=False),
        sa.Column("origin_snapshot_id", sa.String(36), nullable=True),
    )
    op.create_index(
        "ix_instance_disks_origin_snapshot_id", "instance_disks", ["origin_snapshot_id"]
    )


def downgrade() -> None:
    op.drop_table("instance_disks")
    op.drop_table("snapshots")
    op.drop_table("volumes")
    op.drop_table("pools")
