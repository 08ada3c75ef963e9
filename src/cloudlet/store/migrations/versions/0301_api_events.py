"""api events: who caused an event, API operation events, Idempotency-Key answers

Revision ID: 0301_api_events
Revises: 0300_api
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0301_api_events"
down_revision = "0300_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("category", sa.String(16), nullable=False, server_default="lifecycle")
        )
        batch.add_column(sa.Column("requester", sa.String(63), nullable=True))
        batch.add_column(sa.Column("api_operation", sa.String(36), nullable=True))
    with op.batch_alter_table("api_operations") as batch:
        batch.add_column(sa.Column("requester", sa.String(63), nullable=True))
    op.create_table(
        "api_idempotency",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(63), nullable=False, server_default="default"),
        sa.Column("token", sa.String(63), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("body_json", sa.Text(), nullable=True),
        sa.Column("location", sa.String(255), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=False),
        sa.Column("owner_start", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("project", "token", "key"),
    )
    op.create_index("ix_api_idempotency_created_at", "api_idempotency", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_api_idempotency_created_at", "api_idempotency")
    op.drop_table("api_idempotency")
    with op.batch_alter_table("api_operations") as batch:
        batch.drop_column("requester")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("api_operation")
        batch.drop_column("requester")
        batch.drop_column("category")
