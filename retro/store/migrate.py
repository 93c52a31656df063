"""Alembic migrations of retro's own tables (never the host's).

retro keeps its Alembic revision in its own ``retro_alembic_version`` table so
a host that uses Alembic itself is not disturbed.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

VERSION_TABLE = "retro_alembic_version"
_LOCATION = Path(__file__).parent / "migrations"


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_LOCATION))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Create or migrate ``backfill_runs``/``backfill_events`` to ``revision``."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(_config(sync), revision))


async def current(engine: AsyncEngine) -> tuple[str | None, str]:
    """``(current revision or None, head revision)`` of retro's tables."""

    def read(sync: Connection) -> tuple[str | None, str]:
        context = MigrationContext.configure(sync, opts={"version_table": VERSION_TABLE})
        head = ScriptDirectory.from_config(_config(sync)).get_current_head()
        assert head is not None
        return context.get_current_revision(), head

    async with engine.connect() as conn:
        return await conn.run_sync(read)
