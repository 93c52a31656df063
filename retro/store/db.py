"""Engines and connection checks for the two supported backends.

SQLite (``sqlite+aiosqlite``) is the embedded default; PostgreSQL
(``postgresql+psycopg``) is production. SQLite gets WAL and a busy timeout so
the daemon, the CLI and the reference workers can share one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import String, event, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from retro.config import mask
from retro.errors import UsageError
from retro.store.schema import HOST_TABLES, RETRO_TABLES


class StoreError(UsageError, RuntimeError):
    """The database is unusable (unreachable, missing tables); message is masked."""


class DatabaseUnreachable(StoreError):
    """The database did not answer (connection refused, unknown host, auth)."""


class HostTablesMissing(StoreError):
    """The database lacks one of the host pipeline's tables (DESIGN §1)."""


class HostSchemaMismatch(StoreError):
    """A host table lacks a column retro relies on, or it has an unusable type."""


HOST_COLUMNS: dict[str, tuple[str, ...]] = {
    "models": ("id", "active", "auto_disabled"),
    "matches": (
        "id",
        "external_id",
        "home_team",
        "away_team",
        "kickoff_time",
        "home_score",
        "away_score",
        "status",
    ),
    "match_analysis": ("match_id", "favorite_team_name"),
    "predictions": ("match_id", "model_id", "status"),
}
"""Host columns retro reads (DESIGN §1); any others are the host's business."""


class RetroTablesMissing(StoreError):
    """retro's own tables are missing: run ``retro db upgrade``."""


def is_sqlite(url: str | URL) -> bool:
    """True when ``url`` names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def require_sqlite_file(url: str) -> None:
    """For a SQLite URL, insist the file exists (connecting would create it).

    Raises:
        HostTablesMissing: the file does not exist, so it cannot hold the host tables.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return
    if not Path(database).exists():
        raise HostTablesMissing(
            f"SQLite database {database} does not exist: point RETRO_DATABASE_URL at the "
            "pipeline's database"
        )


def create_engine(url: str) -> AsyncEngine:
    """An :class:`AsyncEngine` for ``url`` (``sqlite+aiosqlite`` or ``postgresql+psycopg``).

    Raises:
        StoreError: the URL cannot be parsed.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise StoreError(f"cannot parse database URL {mask(url)!r}") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Per-connection settings only: nothing here writes to the file, so a file
    # retro refuses (no host tables) is left byte for byte. WAL: enable_wal().
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


async def enable_wal(engine: AsyncEngine) -> None:
    """Switch a SQLite file to WAL (persistent in the file) so the daemon, the CLI
    and the workers can read while one writes; no-op on PostgreSQL. Call after
    :func:`check` accepted the database."""
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA journal_mode=WAL")


async def table_names(conn: AsyncConnection) -> set[str]:
    """Names of the tables in the connected database's default schema."""
    return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


async def check(engine: AsyncEngine, *, host: bool = True, retro: bool = True) -> None:
    """Connect and verify the tables retro needs exist.

    Raises:
        DatabaseUnreachable: no connection could be made.
        HostTablesMissing: a host table is absent (``host=True``).
        RetroTablesMissing: ``backfill_runs``/``backfill_events`` absent (``retro=True``).
    """
    try:
        async with engine.connect() as conn:
            names = await table_names(conn)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise DatabaseUnreachable(
            f"database {mask(engine.url.render_as_string(hide_password=True))} unreachable: "
            f"{first_line(exc)}"
        ) from None
    if host:
        missing = [t for t in HOST_TABLES if t not in names]
        if missing:
            raise HostTablesMissing(
                f"database {engine.url.render_as_string(hide_password=True)} has no host "
                f"table(s) {', '.join(missing)}: point RETRO_DATABASE_URL at the pipeline's "
                "database"
            )
        async with engine.connect() as conn:
            await conn.run_sync(_check_host_columns)
    if retro:
        missing = [t for t in RETRO_TABLES if t not in names]
        if missing:
            raise RetroTablesMissing(
                f"database {engine.url.render_as_string(hide_password=True)} has no "
                f"{', '.join(missing)}: run 'retro db upgrade'"
            )


def _check_host_columns(sync: Any) -> None:
    inspector = inspect(sync)
    for table, needed in HOST_COLUMNS.items():
        columns = {c["name"]: c["type"] for c in inspector.get_columns(table)}
        absent = [c for c in needed if c not in columns]
        if absent:
            raise HostSchemaMismatch(
                f"host table {table} has no column(s) {', '.join(absent)} (DESIGN §1)"
            )
    kickoff = inspector.get_columns("matches")
    kind = next(c["type"] for c in kickoff if c["name"] == "kickoff_time")
    if not isinstance(kind, String):
        raise HostSchemaMismatch(
            f"matches.kickoff_time is {kind}, but retro reads it as ISO-8601 text "
            "(e.g. 2025-05-20T19:00:00.000Z)"
        )


_SCHEMA_ERRORS = ("no such table", "no such column", "syntax error", "has no column")


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the database did not answer (down, restarting,
    connection dropped), as opposed to a bad query or bad data."""
    if isinstance(exc, DatabaseUnreachable):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    # SQLite reports schema mistakes as OperationalError too: those are not outages.
    message = str(exc.orig if isinstance(exc, DBAPIError) else exc).lower()
    return not any(word in message for word in _SCHEMA_ERRORS)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (driver errors span many lines), masked."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return mask(text[0] if text else type(orig).__name__)
