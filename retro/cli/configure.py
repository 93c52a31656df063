"""``retro config`` (the effective settings and their sources) and ``retro db
upgrade`` (retro's own tables)."""

from __future__ import annotations

import click

from retro.cli.common import (
    command_line,
    database_option,
    execute,
    log_format_option,
    redis_option,
    settings_from,
    verbose_option,
)
from retro.cli.render import (
    out,
)
from retro.logs import setup_logging

CONFIG_SCHEMA = "retro.config/1"
"""``schema`` of ``retro config --json`` (docs/config.md); a change of shape bumps it."""


@click.command("config")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="RETRO_CONFIG_JSON",
    show_envvar=True,
    help=f"Print one JSON object ({CONFIG_SCHEMA}, see docs/config.md) instead of a table.",
)
@database_option
@redis_option
def config_command(as_json: bool, database_url: str | None, redis_url: str | None) -> None:
    """Show the effective configuration: every setting, its value and where it came from."""
    import json

    from retro.cli.render import render_config
    from retro.config import public_values, setting_sources

    settings = settings_from(database_url, redis_url)
    given = command_line(database_url=database_url, redis_url=redis_url)
    values, sources = public_values(settings), setting_sources(**given)
    if as_json:
        document = {"schema": CONFIG_SCHEMA, "settings": values, "sources": sources}
        click.echo(json.dumps(document, indent=2))
    else:
        render_config(values, sources)


@click.group()
def db() -> None:
    """retro's own tables (backfill_runs, backfill_events, backfills, backfill_actions, outbox)."""


@db.command("upgrade")
@database_option
@verbose_option
@log_format_option
def db_upgrade(database_url: str | None, verbose: bool, log_format: str | None) -> None:
    """Create or migrate retro's own tables (never the host's)."""
    # Redis is never opened here, so a PostgreSQL URL needs no RETRO_REDIS_URL.
    settings = settings_from(
        database_url, "redis://db-upgrade-opens-no-redis.invalid", log_format=log_format
    )
    setup_logging(verbose, settings.log_format)
    from retro.store import db as store_db
    from retro.store import migrate

    async def go() -> tuple[str | None, str]:
        store_db.require_sqlite_file(settings.database_url)
        engine = store_db.create_engine(settings.database_url)
        try:
            await store_db.check(engine, host=True, retro=False)
            await migrate.upgrade(engine)
            return await migrate.current(engine)
        finally:
            await engine.dispose()

    current, head = execute(go(), verbose)
    out.print(f"retro tables at revision {current} (head {head})")
