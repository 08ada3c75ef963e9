"""networks: virtual networks, NICs on them, firewall groups

Revision ID: 0200_networks
Revises: 0100_storage
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200_networks"
down_revision = "0100_storage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("bridge", sa.String(15), nullable=False, unique=True),
        sa.Column("dnsmasq_pid", sa.Integer(), nullable=True),
        sa.Column("dnsmasq_start", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "nics",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(36), nullable=False),
        sa.Column("network", sa.String(63), sa.ForeignKey("networks.name"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("ip", sa.String(15), nullable=False),
        sa.Column("tap", sa.String(15), nullable=False, unique=True),
        sa.Column("slot", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("network", "ip"),
        sa.UniqueConstraint("instance_id", "network"),
    )
    op.create_index("ix_nics_instance_id", "nics", ["instance_id"])
    op.create_index("ix_nics_network", "nics", ["network"])
    op.create_table(
        "firewall_groups",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("rules_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("firewall_groups")
    op.drop_table("nics")
    op.drop_table("networks")
