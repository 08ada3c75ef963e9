"""backups: one row per backup in the backup store

Revision ID: 0101_backups
Revises: 0200_networks
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0101_backups"
down_revision = "0200_networks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backups",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("instance_name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("consistency", sa.String(24), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("read_bytes", sa.BigInteger(), nullable=False),
        sa.Column("new_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunks", sa.Integer(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("verified_at", sa.DateTime(), nullable=True),
        sa.Column("verify_ok", sa.Boolean(), nullable=True),
    )
    op.create_index("ix_backups_instance_id", "backups", ["instance_id"])
    op.create_index("ix_backups_instance_name", "backups", ["instance_name"])


def downgrade() -> None:
    op.drop_table("backups")
