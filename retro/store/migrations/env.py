"""Alembic environment for retro's own tables; run through :mod:`retro.store.migrate`."""

from __future__ import annotations

from alembic import context

from retro.store.migrate import VERSION_TABLE
from retro.store.schema import retro_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=retro_metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
