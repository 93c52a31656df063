"""Shared checks for heal tests: what the database must show after every run ended."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.demo.seed import seed_demo
from retro.events import Requested
from retro.pipeline import host
from retro.pipeline.workers import QUEUES, run_workers
from retro.scheduler import Daemon
from retro.store import migrate, runs
from retro.store.db import create_engine
from retro.store.schema import backfill_runs, predictions

DEMO_NOW = datetime(2025, 5, 26, 12, tzinfo=UTC)


async def seed_outage(database_url: str, competitions: Sequence[str]) -> int:
    """The demo season of ``competitions`` with its 14-day outage, host and retro
    tables included; returns the number of gap matches it left."""
    engine = create_engine(database_url)
    try:
        seeded = await seed_demo(engine, now=DEMO_NOW, competitions=list(competitions))
        await migrate.upgrade(engine)
        return seeded.gaps
    finally:
        await engine.dispose()


async def seed_runs(
    database_url: str, redis_url: str, competitions: Sequence[str], *, prefix: str = "bull"
) -> list[str]:
    """:func:`seed_outage`, then one run seeded per gap match (``retro start --days 14``
    at the demo's present); returns the run ids, one per gap."""
    gaps = await seed_outage(database_url, competitions)
    settings = Settings(database_url=database_url, redis_url=redis_url, queue_prefix=prefix)
    async with App(settings, redis=False) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC), until=DEMO_NOW)
    assert len(report.seeded) == gaps
    return report.seeded


async def heal_until_idle(
    app: App,
    *,
    database_url: str,
    prefix: str,
    timeout: float = 90,
    queues: tuple[str, str, str] = QUEUES,
    fail_rate: float = 0.0,
) -> None:
    """Run the reference workers and ``app``'s daemon until every run is terminal
    (``until_idle``, no scan), then stop the workers (seconds: ``timeout`` for the
    daemon, 30 for the workers to finish their jobs)."""
    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(
            database_url,
            app.redis_url,
            prefix=prefix,
            queues=queues,
            stop=stop,
            fail_rate=fail_rate,
        )
    )
    try:
        await asyncio.wait_for(
            Daemon(app).run(until_idle=True, scan=False, handle_signals=False), timeout
        )
    finally:
        stop.set()
        await asyncio.wait_for(workers, 30)


async def assert_healed(database_url: str, *, expected_per_match: int = 42) -> dict[str, int]:
    """Every run done; each healed match has exactly the expected predictions, all
    scored once when settleable; no job (id, enqueue) executed twice; replay ==
    projection. Returns the run counts by state."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            counts = await runs.counts_by_state(conn)
            assert set(counts) == {"done"}, f"runs not all done: {counts}"
            audit = await runs.audit(conn)
            assert audit.drifted == [], f"projection drift in {audit.drifted}"
            match_ids = [m for (m,) in await conn.execute(select(backfill_runs.c.match_id))]
            requested: Counter[tuple[str, str]] = Counter()
            for run_id in await runs.all_ids(conn):
                for event in await runs.events_of(conn, run_id):
                    if isinstance(event, Requested):
                        requested[(event.job_id, str(event.PHASE))] += 1
            per_match = dict(
                (
                    await conn.execute(
                        select(predictions.c.match_id, func.count())
                        .where(predictions.c.match_id.in_(match_ids))
                        .group_by(predictions.c.match_id)
                    )
                ).all()
            )
        for match_id in match_ids:
            assert per_match.get(match_id) == expected_per_match, (
                f"match {match_id}: {per_match.get(match_id)} predictions"
            )
            match = await host.get_match(engine, match_id)
            assert match is not None
            rows = await host.match_predictions(engine, match_id)
            if match.status in ("finished", "awarded") and match.home_score is not None:
                assert all(r.status in ("scored", "void") for r in rows), match_id
        journal = await host.job_log(engine)
        executions = Counter((e.job_id, e.job_timestamp) for e in journal)
        twice = [key for key, n in executions.items() if n > 1]
        assert twice == [], f"jobs executed twice for one enqueue: {twice}"
        per_job = Counter(e.job_id for e in journal if e.job_id.endswith(tuple(match_ids)))
        for job_id, n in per_job.items():
            asked = sum(v for (j, _), v in requested.items() if j == job_id)
            assert n <= asked, f"{job_id} executed {n} times for {asked} attempts"
        return counts
    finally:
        await engine.dispose()
