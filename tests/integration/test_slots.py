"""Slots are held by work, not by waiting (issue 10): a run sleeping out a retry
back-off releases its ``max_in_flight`` slot, another run heals meanwhile, and the
back-off run takes a slot again when its retry is due. BullMQ's own lists (read
straight from Redis, :mod:`tests.outstanding`) never hold more than
``max_in_flight`` of retro's jobs at once.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from bullmq import Worker
from redis.asyncio import Redis
from rich.console import Console

from retro import commands
from retro.app import App
from retro.cli.render import status_parts
from retro.machine import Step
from retro.report import iso, status_json
from retro.scheduler import Daemon
from retro.tick import TickReport
from tests.conftest import Backend, close_worker, eventually
from tests.integration.test_recovery import (
    events_of,
    get_run,
    job_view,
    make_host,
    now,
    settings_for,
    workers,
)
from tests.outstanding import Sampler, queue_names

BACKOFF = 30.0


async def fail_predictions_job(app: App, backend: Backend, run_id: str) -> None:
    """Fail ``run_id``'s outstanding predictions job with "attempt-1 failure" (a real
    python-bullmq worker on the queue, closed once BullMQ has the job failed)."""

    async def fail(job: Any, token: str) -> None:
        raise RuntimeError("attempt-1 failure")

    worker = Worker(
        app.settings.predictions_queue,
        fail,
        {"connection": app.redis_url, "prefix": backend.prefix},
    )
    try:
        run = await get_run(app, run_id)

        async def failed() -> bool:
            return (await job_view(app, run)).state == "failed"

        await eventually(failed)
    finally:
        await close_worker(worker)


async def test_a_backoff_releases_its_slot_and_takes_one_again_when_due(
    backend: Backend,
) -> None:
    await make_host(backend, match_ids=("M1", "M2"), predictions=0)
    settings = settings_for(backend, max_in_flight=1, retry_backoff=BACKOFF, max_attempts=3)
    redis = Redis.from_url(backend.redis_url)
    sampler = Sampler(redis, backend.prefix, queue_names(settings))
    sampling = asyncio.create_task(sampler.run(limit=120))
    try:
        async with App(settings) as app:
            seeded = (await commands.start(app, days=14, now=now())).seeded
            assert len(seeded) == 2
            await app.tick(now=now())
            states = {r: (await get_run(app, r)).state for r in seeded}
            (first,) = [r for r, s in states.items() if s == "predicting"]
            (second,) = [r for r, s in states.items() if s == "pending"]  # the cap is 1

            await fail_predictions_job(app, backend, first)

            failed_at = now()
            report = await app.tick(now=failed_at)
            run = await get_run(app, first)
            assert (run.step, run.attempt) == (Step.BACKOFF, 1)
            assert run.not_before == failed_at + timedelta(seconds=BACKOFF)
            # Its slot is free, and the same tick offers it: the second run starts.
            assert (report.released, report.started) == (1, 1)
            assert (await get_run(app, second)).state == "predicting"  # it took the slot

            # status shows the back-off apart, with its last error and when it is due.
            status = await commands.status(app, now=failed_at)
            assert [item.run.id for item in status.holding] == [second]
            assert [item.run.id for item in status.backoff] == [first]
            document = status_json(status, now=failed_at)
            (entry,) = document["backoff"]
            assert entry["run_id"] == first
            assert entry["last_error"] == "attempt-1 failure"
            assert entry["retry_at"] == iso(run.not_before)
            assert entry["retry_in_seconds"] == BACKOFF
            assert entry["holds_slot"] is False  # a failure, not a timeout
            assert {item["run_id"] for item in document["in_flight"]} == {first, second}
            console = Console(record=True, width=240)
            for part in status_parts(status, now=failed_at):
                console.print(part)
            text = console.export_text()
            assert "In back-off" in text and "attempt-1 failure" in text
            assert f"(in {BACKOFF:.0f} s)" in text

            async with workers(backend):

                async def second_done() -> bool:
                    await app.tick(now=now())
                    return (await get_run(app, second)).state == "done"

                await eventually(second_done, timeout=BACKOFF - 5)
                run = await get_run(app, first)
                assert (run.step, run.attempt) == (Step.BACKOFF, 1)  # healed meanwhile

                async def first_done() -> bool:  # the back-off is over on this clock
                    await app.tick(now=now() + timedelta(seconds=BACKOFF + 1))
                    return (await get_run(app, first)).state == "done"

                await eventually(first_done)
            attempts = [
                (e.TYPE, getattr(e, "attempt", None))
                for e in await events_of(app, first)
                if e.TYPE == "PredictionsRequested"
            ]
            assert attempts == [("PredictionsRequested", 1), ("PredictionsRequested", 2)]
    finally:
        sampler.stop()
        await asyncio.wait_for(sampling, 10)
        await redis.aclose()
    assert sampler.samples > 20
    assert len(sampler.seen) >= 3  # both runs' jobs were seen outstanding
    assert sampler.peak == 1


async def test_the_daemon_ticks_when_a_backoff_ends_not_a_tick_interval_later(
    backend: Backend,
) -> None:
    """A retry back-off shorter than ``tick_interval`` ends on time: the daemon
    ticks when the earliest back-off ends (``TickReport.next_backoff_end``), not at
    its next interval. With a 1 s back-off and a 30 s interval, the retry is
    requested well inside the interval (it would wait ~30 s without the rule)."""
    interval, backoff = 30.0, 1.0
    await make_host(backend, predictions=0)
    settings = settings_for(backend, max_in_flight=1, retry_backoff=backoff, tick_interval=interval)
    async with App(settings) as app:
        (run_id,) = (await commands.start(app, days=14, now=now())).seeded
        daemon = Daemon(app)
        running = asyncio.create_task(daemon.run(until_idle=True, scan=False, handle_signals=False))
        try:

            async def fail(job: Any, token: str) -> None:
                raise RuntimeError("attempt-1 failure")

            worker = Worker(
                settings.predictions_queue,
                fail,
                {"connection": app.redis_url, "prefix": backend.prefix},
            )
            try:

                async def backing_off() -> bool:
                    return "RetryScheduled" in [e.TYPE for e in await events_of(app, run_id)]

                await eventually(backing_off, timeout=interval / 2)
            finally:
                await close_worker(worker)
            async with workers(backend):
                await asyncio.wait_for(running, timeout=interval / 2)
        finally:
            daemon.stop()
            await asyncio.wait_for(running, 10)
        events = await events_of(app, run_id)
    assert events[-1].TYPE == "RunCompleted", [e.TYPE for e in events]
    scheduled = next(e for e in events if e.TYPE == "RetryScheduled")
    retried = [e for e in events if e.TYPE == "PredictionsRequested"][1]
    late = (retried.at - scheduled.at).total_seconds()
    assert backoff <= late < interval / 2, late


async def test_a_due_back_off_waiting_for_a_slot_does_not_spin_the_daemon(
    backend: Backend,
) -> None:
    """A back-off that is over while every slot is held waits for a slot, not for a
    time: the daemon keeps its ``tick_interval`` (and its wake-ups) then, rather than
    ticking at once again and again for a back-off end that has passed."""
    await make_host(backend, match_ids=("M1", "M2"), predictions=0)
    settings = settings_for(backend, max_in_flight=1, retry_backoff=0.2, tick_interval=1.0)
    async with App(settings) as app:
        seeded = (await commands.start(app, days=14, now=now())).seeded
        await app.tick(now=now())
        (first,) = [r for r in seeded if (await get_run(app, r)).state == "predicting"]

        await fail_predictions_job(app, backend, first)
        await app.tick(now=now())  # the first backs off; the second takes the slot
        await app.tick(now=now())
        assert [(await get_run(app, r)).step for r in seeded].count(Step.BACKOFF) == 1
        await asyncio.sleep(0.3)  # the back-off is over; the slot is held by a queued job

        ticks = 0
        tick = app.tick

        async def counted(*, now: datetime) -> TickReport:
            nonlocal ticks
            ticks += 1
            return await tick(now=now)

        app.tick = counted  # type: ignore[method-assign]
        daemon = Daemon(app)
        asyncio.get_running_loop().call_later(2.0, daemon.stop)
        await asyncio.wait_for(daemon.run(scan=False, handle_signals=False), 10)
        assert (await get_run(app, first)).step is Step.BACKOFF  # still no slot
    assert 1 <= ticks <= 5, ticks  # ~2 s at a 1 s interval, not one tick per 10 ms
