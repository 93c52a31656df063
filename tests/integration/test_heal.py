"""A whole heal in one process: seed the 2024/25 outage, run workers and the daemon
until idle, and check the data, the job journal and the event log."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.scheduler import Daemon
from retro.store.schema import backfill_events
from tests.conftest import Backend
from tests.healing import DEMO_NOW, assert_healed, heal_until_idle, seed_outage


def settings_for(backend: Backend, **more: object) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        **more,  # type: ignore[arg-type]
    )


async def seed(backend: Backend) -> int:
    return await seed_outage(backend.database_url, ["en.1"])


@pytest.mark.parametrize("max_in_flight", [1, 4])
async def test_daemon_heals_every_gap(backend: Backend, max_in_flight: int) -> None:
    gaps = await seed(backend)
    assert gaps > 5
    settings = settings_for(backend, max_in_flight=max_in_flight, tick_interval=0.5)
    async with App(settings) as app:
        now = datetime.now(UTC)
        first = await commands.start(app, days=14, now=now, until=DEMO_NOW)
        assert len(first.seeded) == gaps
        second = await commands.start(app, days=14, now=now, until=DEMO_NOW)
        assert second.seeded == []
        assert second.scan.blocked == gaps  # each has a live run

        appends = 0

        def count_appends(_c: object, _k: object, statement: str, *_: object) -> None:
            nonlocal appends
            appends += statement.lstrip().upper().startswith("INSERT INTO BACKFILL_EVENTS")

        sync_engine = app.engine.sync_engine
        event.listen(sync_engine, "before_cursor_execute", count_appends)
        try:
            await heal_until_idle(app, database_url=backend.database_url, prefix=backend.prefix)
        finally:
            event.remove(sync_engine, "before_cursor_execute", count_appends)
        async with app.engine.connect() as conn:
            healing_events = await conn.scalar(
                select(func.count())
                .select_from(backfill_events)
                .where(backfill_events.c.type != "RunSeeded")
            )
        # A phase's completion and the next request (or a start and its first
        # request) go in one append: well over one event per INSERT on average.
        assert appends > 0, "the INSERT listener saw nothing"
        assert healing_events >= 2 * appends, (healing_events, appends)
        after = await commands.start(app, days=14, now=datetime.now(UTC), until=DEMO_NOW)
        assert after.seeded == [], "a healed match inside the cooldown was seeded again"
    counts = await assert_healed(backend.database_url)
    assert counts == {"done": gaps}


async def test_run_once_waits_without_workers_and_costs_no_attempt(backend: Backend) -> None:
    """A job waiting with no worker is not a failure: the run stays on attempt 1."""
    await seed(backend)
    settings = settings_for(backend, max_in_flight=2)
    async with App(settings) as app:
        await commands.start(app, days=14, now=datetime.now(UTC), until=DEMO_NOW)
        daemon = Daemon(app)
        for _ in range(5):
            await daemon.run_once()
        report = await commands.status(app)
        assert len(report.in_flight) == 2
        for item in report.in_flight:
            assert item.run.attempt == 1
            assert item.job_state in ("waiting", "prioritized")
            assert item.waiting_for_worker is not None
        assert set(report.workers.values()) == {0}
