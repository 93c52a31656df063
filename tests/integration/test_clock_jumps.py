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
from datetime import UTC, datetime, timedelta

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.events import Requested
from retro.scheduler import Daemon
from retro.store import runs
from tests.conftest import Backend, eventually
from tests.slowjobs import CHARGED, Journal, make_host, slow_workers

MATCHES = ("J1", "J2")
TICK = 0.5
BUDGET = 5.0
"""Start-to-close budget of every phase: far above a job's run, far below the jumps."""
HAND_OFF_LIMIT = TICK + 2.0
"""Longest pause between one stage's end and the next stage's start of a match:
one tick, plus slack for a loaded machine and the daemon's restart."""


class WallClock:
    """The daemon's wall clock: real time plus an offset the test moves."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


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
    await make_host(backend.database_url, MATCHES)
    settings = settings_for(backend)
    journal = Journal()
    async with slow_workers(
        backend.database_url, backend.redis_url, backend.prefix, journal, len(MATCHES)
    ):
        # Daemon A: the clock jumps +2 h, then -1 h, each while jobs are active (six
        # jobs in all: three stages of two matches).
        clock = WallClock()
        async with App(settings) as app:
            seeded = (await commands.start(app, days=14, now=clock())).seeded
            assert len(seeded) == len(MATCHES)
            daemon = Daemon(app, clock=clock)
            running = asyncio.create_task(
                daemon.run(until_idle=True, scan=False, handle_signals=False)
            )
            try:
                await eventually(lambda: journal.started() >= 1, timeout=30)
                clock.offset = timedelta(hours=2)
                await eventually(lambda: journal.started() >= 3, timeout=30)
                clock.offset = timedelta(hours=-1)
                await eventually(lambda: journal.started() >= 4, timeout=30)
            finally:
                daemon.stop()
                await asyncio.wait_for(running, 30)
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

    assert counts == {"done": len(MATCHES)}
    for history in histories:
        charged = [e.TYPE for e in history if isinstance(e, CHARGED)]
        assert charged == [], charged
        assert {e.attempt for e in history if isinstance(e, Requested)} == {1}
    pauses = journal.hand_offs()
    assert len(pauses) == 2 * len(MATCHES)  # analysis -> predictions -> settlement
    assert max(pauses) <= HAND_OFF_LIMIT, pauses
