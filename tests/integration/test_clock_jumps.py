"""Jumps of retro's wall clock (issue 9, point 4), injected at the shell.

The daemon reads its wall clock through ``Daemon(clock=…)``; here that clock jumps
+2 h and -1 h while real BullMQ workers are in the middle of slow jobs, and a
restarted daemon starts with its clock two hours ahead. Nothing may charge an
attempt (no timeout, failure or retry), and no run may wait longer than about one
tick after its job finished. The monotonic clock, Redis and the workers keep real
time, as they would on a host whose clock was set wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from retro.app import App
from retro.config import Settings
from retro.events import JobFailed, PhaseTimedOut, Requested, RetryScheduled, RunFailed
from retro.metrics import Health, sync_engine
from retro.pipeline.workers import QUEUES, ReferenceWorkers
from retro.queue import consume
from retro.scheduler import Daemon
from retro.store import host, migrate, runs
from retro.store.db import create_engine
from retro.store.host_rows import MatchRow, ModelRow, iso_utc
from tests.conftest import Backend, eventually

MATCHES = ("J1", "J2")
SLOW = 0.6
"""Seconds each job takes: long enough to be active when the clock jumps."""
TICK = 0.5
BUDGET = 5.0
"""Start-to-close budget of every phase: far above SLOW, far below the jumps."""
HAND_OFF_LIMIT = TICK + 2.0
"""Longest pause between one stage's end and the next stage's start of a match:
one tick, plus slack for a loaded machine and the daemon's restart."""
CHARGED = (JobFailed, PhaseTimedOut, RetryScheduled, RunFailed)


class WallClock:
    """The daemon's wall clock: real time plus an offset the test moves."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Journal:
    """When (monotonic seconds) each job started and ended, per match."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[str, float, float | None]]] = defaultdict(list)

    def wrap(
        self, stage: str, process: Callable[[Any, str], Awaitable[Any]]
    ) -> Callable[[Any, str], Awaitable[Any]]:
        async def slow(job: Any, token: str) -> Any:
            match_id = str(job.data["matchId"])
            self.spans[match_id].append((stage, time.monotonic(), None))
            await asyncio.sleep(SLOW)
            result = await process(job, token)
            name, started, _ = self.spans[match_id][-1]
            self.spans[match_id][-1] = (name, started, time.monotonic())
            return result

        return slow

    def started(self) -> int:
        return sum(len(spans) for spans in self.spans.values())

    def hand_offs(self) -> list[float]:
        """Seconds from each job's end to the start of its match's next job."""
        pauses = []
        for spans in self.spans.values():
            for (_, _, ended), (_, started, _) in zip(spans, spans[1:], strict=False):
                assert ended is not None
                pauses.append(started - ended)
        return pauses


async def make_host(backend: Backend) -> None:
    """Two matches that finished yesterday, two active models, nothing else."""
    engine = create_engine(backend.database_url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        await host.insert_models(
            engine, [ModelRow(f"model-{i}", "acme", f"m{i}", f"Model {i}") for i in range(2)]
        )
        kickoff = iso_utc(datetime.now(UTC) - timedelta(days=1))
        await host.insert_matches(
            engine,
            [
                MatchRow(m, f"x-{m}", "xx.1", "Home", "Away", kickoff, 2, 1, "finished")
                for m in MATCHES
            ],
        )
    finally:
        await engine.dispose()


def settings_for(backend: Backend) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        tick_interval=TICK,
        analysis_timeout=BUDGET,
        predictions_timeout=BUDGET,
        settlement_timeout=BUDGET,
        max_in_flight=len(MATCHES),
    )


async def test_clock_jumps_while_running_and_across_a_restart_charge_nothing(
    backend: Backend,
) -> None:
    await make_host(backend)
    settings = settings_for(backend)
    journal = Journal()
    engine = create_engine(backend.database_url)
    processors = ReferenceWorkers(engine)
    stop_workers = asyncio.Event()
    stages = (processors.analyze, processors.predict, processors.settle)
    handlers = {
        queue: journal.wrap(queue, process) for queue, process in zip(QUEUES, stages, strict=True)
    }
    workers = asyncio.create_task(
        consume(
            backend.redis_url,
            prefix=backend.prefix,
            handlers=handlers,
            concurrency=len(MATCHES),
            stop=stop_workers,
            name="slow-workers",
        )
    )
    health_engine = sync_engine(backend.database_url)
    try:
        # Daemon A: the clock jumps +2 h, then -1 h, each while jobs are active (six
        # jobs in all: three stages of two matches).
        clock = WallClock()
        async with App(settings) as app:
            seeded = (await app.start(days=14, now=clock())).seeded
            assert len(seeded) == len(MATCHES)
            health = Health(health_engine, app.redis_url, app.metrics, TICK)
            daemon = Daemon(app, clock=clock)
            running = asyncio.create_task(
                daemon.run(until_idle=True, scan=False, handle_signals=False)
            )
            try:
                await eventually(lambda: journal.started() >= 1, timeout=30)
                clock.offset = timedelta(hours=2)
                await eventually(lambda: journal.started() >= 3, timeout=30)
                assert health.check()[1]["checks"]["tick"]["ok"]
                clock.offset = timedelta(hours=-1)
                await eventually(lambda: journal.started() >= 4, timeout=30)
                assert health.check()[1]["checks"]["tick"]["ok"]
            finally:
                daemon.stop()
                await asyncio.wait_for(running, 30)
                health.close()
        # Daemon B: a restart with the clock two hours ahead, then an hour behind.
        clock = WallClock(timedelta(hours=2))
        async with App(settings) as app:
            daemon = Daemon(app, clock=clock)
            running = asyncio.create_task(
                daemon.run(until_idle=True, scan=False, handle_signals=False)
            )
            await eventually(lambda: journal.started() >= 5, timeout=30)
            clock.offset = timedelta(hours=-1)
            await asyncio.wait_for(running, 60)
            async with app.engine.connect() as conn:
                counts = await runs.counts_by_state(conn)
                histories = [await runs.events_of(conn, run_id) for run_id in seeded]
    finally:
        stop_workers.set()
        await asyncio.wait_for(workers, 30)
        await engine.dispose()
        health_engine.dispose()

    assert counts == {"done": len(MATCHES)}
    for history in histories:
        charged = [e.TYPE for e in history if isinstance(e, CHARGED)]
        assert charged == [], charged
        assert {e.attempt for e in history if isinstance(e, Requested)} == {1}
    pauses = journal.hand_offs()
    assert len(pauses) == 2 * len(MATCHES)  # analysis -> predictions -> settlement
    assert max(pauses) <= HAND_OFF_LIMIT, pauses
