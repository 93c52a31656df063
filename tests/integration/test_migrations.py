"""Alembic migrations of retro's own tables (STYLE 7): the metadata is the truth.

One database is built from ``retro_metadata.create_all``, one by
``retro.store.migrate.upgrade``; both must show the same schema, and Alembic's
autogenerate must find nothing to change on the migrated one. The host's tables
are never created or touched by the upgrade.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.events import (
    AnalysisRequested,
    Event,
    JobFailed,
    PhaseTimedOut,
    RetryScheduled,
    RunFailed,
    RunSeeded,
    to_record,
)
from retro.machine import project
from retro.store import backfills, db, migrate, runs
from retro.store.schema import (
    HOST_TABLES,
    RETRO_TABLES,
    backfill_events,
    backfill_runs,
    host_metadata,
    retro_metadata,
)
from tests.conftest import Backend


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """An engine on the test's fresh, empty database."""
    engine = db.create_engine(backend.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def second_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """A second fresh, empty database on the same backend, dropped afterwards."""
    if backend.name == "sqlite-embedded":
        yield f"sqlite+aiosqlite:///{tmp_path / 'from_metadata.db'}"
        return
    url = make_url(backend.database_url)
    name = f"{url.database}_m{uuid.uuid4().hex[:6]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _diffs(sync: Connection) -> list[Any]:
    context = MigrationContext.configure(
        sync,
        opts={
            "version_table": migrate.VERSION_TABLE,
            "compare_type": True,
            "compare_server_default": True,
        },
    )
    return list(compare_metadata(context, retro_metadata))


def _where(options: dict[str, Any]) -> str:
    """The WHERE clause of a partial index, as text ('' for a full index)."""
    for key in ("sqlite_where", "postgresql_where"):
        if options.get(key) is not None:
            return str(options[key])
    return ""


def _schema(sync: Connection) -> dict[str, Any]:
    """retro's tables as the database reports them, in a comparable shape."""
    inspector = inspect(sync)
    shape: dict[str, Any] = {}
    for name in sorted(set(inspector.get_table_names()) & set(RETRO_TABLES)):
        columns = [
            (c["name"], str(c["type"]), c["nullable"], c.get("default"))
            for c in inspector.get_columns(name)
        ]
        indexes = sorted(
            (
                i["name"],
                tuple(i["column_names"]),
                bool(i["unique"]),
                _where(i.get("dialect_options", {})),
            )
            for i in inspector.get_indexes(name)
        )
        uniques = sorted(
            (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)
        )
        shape[name] = {
            "columns": columns,
            "pk": inspector.get_pk_constraint(name)["constrained_columns"],
            "indexes": indexes,
            "uniques": uniques,
            "fks": inspector.get_foreign_keys(name),
        }
    return shape


async def test_upgrade_leaves_nothing_for_autogenerate(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(_diffs) == []


async def test_migrated_database_equals_metadata_database(
    engine: AsyncEngine, second_url: str
) -> None:
    await migrate.upgrade(engine)
    created = db.create_engine(second_url)
    try:
        async with created.begin() as conn:
            await conn.run_sync(retro_metadata.create_all)
        async with created.connect() as conn:
            from_metadata = await conn.run_sync(_schema)
            assert await conn.run_sync(_diffs) == []
    finally:
        await created.dispose()
    async with engine.connect() as conn:
        from_migrations = await conn.run_sync(_schema)
    assert set(from_migrations) == set(RETRO_TABLES)
    assert from_migrations == from_metadata
    live = from_migrations["backfill_runs"]["indexes"]
    assert any(
        name == "uq_backfill_runs_live_match" and unique and "finished_at IS NULL" in where
        for name, _, unique, where in live
    ), live


async def test_current_before_and_after_upgrade(engine: AsyncEngine) -> None:
    current, head = await migrate.current(engine)
    assert current is None
    await migrate.upgrade(engine)
    assert await migrate.current(engine) == (head, head)


async def test_upgrade_is_idempotent(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        before = await conn.run_sync(_schema)
    await migrate.upgrade(engine)
    await migrate.upgrade(engine)
    _, head = await migrate.current(engine)
    async with engine.connect() as conn:
        assert await conn.run_sync(_schema) == before
        versions = (
            await conn.execute(text(f"SELECT version_num FROM {migrate.VERSION_TABLE}"))
        ).all()
        assert [v for (v,) in versions] == [head]
    assert await migrate.current(engine) == (head, head)


async def test_upgrade_creates_only_retro_tables(engine: AsyncEngine) -> None:
    assert migrate.VERSION_TABLE == "retro_alembic_version"
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        names = await db.table_names(conn)
    assert names == {*RETRO_TABLES, "retro_alembic_version"}
    assert not names & set(HOST_TABLES)
    assert "alembic_version" not in names


async def test_upgrade_leaves_host_tables_and_host_alembic_alone(engine: AsyncEngine) -> None:
    """A host with its own tables and its own Alembic history is not disturbed."""
    async with engine.begin() as conn:
        await conn.run_sync(host_metadata.create_all)
        await conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        await conn.execute(text("INSERT INTO alembic_version VALUES ('host_rev_9')"))
        await conn.execute(text("INSERT INTO models (id, model_name) VALUES ('m1', 'gpt')"))
        host_before = await conn.run_sync(
            lambda s: {t: inspect(s).get_columns(t) for t in HOST_TABLES}
        )
    await migrate.upgrade(engine)
    current, head = await migrate.current(engine)
    assert current == head
    async with engine.connect() as conn:
        names = await db.table_names(conn)
        assert names == {*HOST_TABLES, *RETRO_TABLES, "alembic_version", "retro_alembic_version"}
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).all() == [
            ("host_rev_9",)
        ]
        assert (await conn.execute(text("SELECT id, model_name FROM models"))).all() == [
            ("m1", "gpt")
        ]
        host_after = await conn.run_sync(
            lambda s: {t: inspect(s).get_columns(t) for t in HOST_TABLES}
        )
    assert repr(host_after) == repr(host_before)
    await db.check(engine)  # host and retro tables are all there now


# --- data migrations ----------------------------------------------------------------


async def test_0004_marks_old_timed_out_runs_as_their_replay_does(engine: AsyncEngine) -> None:
    """Histories written before 0004 (no ``timed_out`` column) upgrade to a
    projection equal to their replay: a run whose last verdict was a timeout, in
    step ``failed`` or ``backoff``, gets the mark (and keeps its slot); one retried
    since, failed otherwise, or ended does not."""
    t0 = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)

    def at(n: int) -> datetime:
        return t0 + timedelta(minutes=n)

    def history(run_id: str, *events: Event) -> list[Event]:
        seeded = RunSeeded(
            at=t0,
            run_id=run_id,
            match_id=f"m-{run_id}",
            gaps=("missing_analysis",),
            found=0,
            expected=3,
        )
        requested = AnalysisRequested(at=at(1), job_id=f"analyze-retro-m-{run_id}", attempt=1)
        return [seeded, requested, *events]

    timed_out = PhaseTimedOut(at=at(2), phase="analysis", budget=90)
    retry = RetryScheduled(at=at(2), phase="analysis", not_before=at(30))
    histories = {
        "backoff": history("backoff", timed_out, retry),
        "judged": history("judged", timed_out),
        "retried": history(
            "retried",
            timed_out,
            retry,
            AnalysisRequested(at=at(30), job_id="analyze-retro-m-retried", attempt=2),
        ),
        "failed": history("failed", JobFailed(at=at(2), phase="analysis", reason="quota"), retry),
        "ended": history("ended", timed_out, RunFailed(at=at(3), reason="gave up")),
    }
    expected = {"backoff": True, "judged": True, "retried": False, "failed": False, "ended": False}
    await migrate.upgrade(engine, "0003")
    async with engine.begin() as conn:  # written as retro before 0004 wrote them
        for run_id, events in histories.items():
            for seq, event in enumerate(events, 1):
                type_, data, when = to_record(event)
                await conn.execute(
                    backfill_events.insert().values(
                        run_id=run_id, seq=seq, type=type_, data=json.dumps(data), at=when
                    )
                )
            row = runs.run_row(project(events))
            assert row.pop("timed_out") is expected[run_id]
            del row["backfill_id"]  # added by 0005
            await conn.execute(backfill_runs.insert().values(row))
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        audit = await runs.audit(conn)
        assert (audit.ok, audit.runs, audit.drifted) == (True, len(histories), [])
        stored = {run.id: run for run in await runs.list_runs(conn)}
    assert {r: run.timed_out for r, run in stored.items()} == expected
    assert {r for r, run in stored.items() if run.holds_slot} == {
        "backoff",
        "judged",
        "retried",
    }


async def test_0005_puts_runs_from_before_backfills_in_the_legacy_backfill(
    engine: AsyncEngine,
) -> None:
    """Runs written before 0005 (no ``backfill_id`` anywhere: not in the row, not in
    their ``RunSeeded``) upgrade into one backfill, ``legacy``, whose gap counts are
    counted from the runs; their replay (the upcast) equals the stored projection."""
    t0 = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)
    gaps = {"a": ("missing_analysis", "unscored"), "b": ("unscored",)}
    await migrate.upgrade(engine, "0004")
    async with engine.begin() as conn:  # written as retro before 0005 wrote them
        for n, (run_id, kinds) in enumerate(gaps.items()):
            seeded = RunSeeded(
                at=t0 + timedelta(minutes=n),
                run_id=run_id,
                match_id=f"m-{run_id}",
                gaps=kinds,
                found=0,
                expected=3,
            )
            type_, data, when = to_record(seeded)
            del data["backfill_id"]
            await conn.execute(
                backfill_events.insert().values(
                    run_id=run_id, seq=1, type=type_, data=json.dumps(data), at=when
                )
            )
            row = runs.run_row(project([seeded]))
            del row["backfill_id"]
            await conn.execute(backfill_runs.insert().values(row))
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        audit = await runs.audit(conn)
        assert (audit.ok, audit.runs, audit.drifted) == (True, 2, [])
        assert {run.backfill_id for run in await runs.list_runs(conn)} == {"legacy"}
        legacy = await backfills.get(conn, "legacy")
    assert legacy is not None
    assert (legacy.label, legacy.created_at, legacy.window_from) == ("before-backfills", t0, None)
    assert legacy.gap_counts == {"missing_analysis": 1, "unscored": 2}


async def test_0005_on_an_empty_store_creates_no_legacy_backfill(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.connect() as conn:
        assert await backfills.all_backfills(conn) == []
