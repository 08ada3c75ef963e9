"""instances, operations and events

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("image", sa.String(128), nullable=False),
        sa.Column("image_path", sa.Text(), nullable=False),
        sa.Column("type_name", sa.String(32), nullable=False),
        sa.Column("cpus", sa.Integer(), nullable=False),
        sa.Column("memory", sa.Integer(), nullable=False),
        sa.Column("disk_size", sa.Integer(), nullable=False),
        sa.Column("arch", sa.String(16), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("ssh_port", sa.Integer(), nullable=True),
        sa.Column("accel", sa.String(8), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_instances_name", "instances", ["name"], unique=True)
    op.create_table(
        "operations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("instance_name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_operations_instance_id", "operations", ["instance_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("instance_name", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("operation_id", sa.Integer(), sa.ForeignKey("operations.id"), nullable=True),
    )
    op.create_index("ix_events_instance_name", "events", ["instance_name"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("operations")
    op.drop_table("instances")
