"""api: REST API tokens (hashed) and the API's operations

Revision ID: 0300_api
Revises: 0101_backups
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0300_api"
down_revision = "0101_backups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("project", sa.String(63), nullable=False, server_default="default"),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("project", "name"),
    )
    op.create_table(
        "api_operations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project", sa.String(63), nullable=False, server_default="default"),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("resources_json", sa.Text(), nullable=False),
        sa.Column("progress_json", sa.Text(), nullable=True),
        sa.Column("may_cancel", sa.Boolean(), nullable=False),
        sa.Column("error_json", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=False),
        sa.Column("owner_start", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_api_operations_status", "api_operations", ["status"])


def downgrade() -> None:
    op.drop_index("ix_api_operations_status", "api_operations")
    op.drop_table("api_operations")
    op.drop_table("api_tokens")
