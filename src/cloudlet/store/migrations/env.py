"""Alembic environment: runs against the connection cloudlet hands in."""

from __future__ import annotations

from alembic import context

from cloudlet.store.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies tables
)
with context.begin_transaction():
    context.run_migrations()
