"""A job judged timed out (start-to-close) while BullMQ still runs it is still one of
retro's jobs outstanding: its run, backing off for the retry, must not hand its
``max_in_flight`` slot to another run meanwhile (issue 10, point 4: the guarantee to
the data provider). Found in review; ``Run.timed_out`` keeps the slot through the
back-off, and the retry adopts the still-running job (same deterministic id).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Worker
from redis.asyncio import Redis
from rich.console import Console

from retro import commands
from retro.app import App
from retro.cli.render import status_parts
from retro.machine import Step
from retro.report import status_json
from tests.conftest import Backend, close_worker, eventually
from tests.integration.test_recovery import get_run, job_view, make_host, now, settings_for
from tests.outstanding import outstanding, queue_names

BACKOFF = 30.0


async def test_a_timed_out_job_still_running_keeps_its_slot(backend: Backend) -> None:
    """A job that ran past its start-to-close budget is judged (``PhaseTimedOut``)
    and its run backs off, but BullMQ still has it active under a live worker: it
    is still one of retro's jobs outstanding. With ``max_in_flight`` 1, no other
    run's job may be requested while it runs (the guarantee to the data
    provider, read from BullMQ's own lists)."""
    await make_host(backend, match_ids=("M1", "M2"), predictions=0)
    settings = settings_for(
        backend, max_in_flight=1, retry_backoff=BACKOFF, predictions_timeout=1.0
    )
    release = asyncio.Event()
    redis = Redis.from_url(backend.redis_url)
    async with App(settings) as app:
        seeded = (await commands.start(app, days=14, now=now())).seeded
        await app.tick(now=now())
        states = {r: (await get_run(app, r)).state for r in seeded}
        (first,) = [r for r, s in states.items() if s == "predicting"]
        (second,) = [r for r, s in states.items() if s == "pending"]

        async def slow(job: Any, token: str) -> None:
            await asyncio.wait_for(release.wait(), 20)  # runs well past its 1 s budget

        worker = Worker(
            settings.predictions_queue,
            slow,
            {"connection": app.redis_url, "prefix": backend.prefix},
        )
        try:
            run = await get_run(app, first)

            async def active() -> bool:
                return (await job_view(app, run)).state == "active"

            await eventually(active)
            await asyncio.sleep(1.5)  # past the budget
            for _ in range(3):
                await app.tick(now=now())
            assert (await get_run(app, first)).step is Step.BACKOFF  # judged: timed out
            assert (await job_view(app, run)).state == "active"  # yet still running
            ids = await outstanding(redis, backend.prefix, queue_names(settings))
            second_state = (await get_run(app, second)).state
            # status lists it in back-off, keeping its slot
            at = now()
            status = await commands.status(app, now=at)
            listed = ([i.run.id for i in status.holding], [i.run.id for i in status.backoff])
            (entry,) = status_json(status, now=at)["backoff"]
            console = Console(record=True, width=240)
            for part in status_parts(status, now=at):
                console.print(part)
            text = console.export_text()
        finally:
            release.set()
            await close_worker(worker)
            await redis.aclose()
    assert len(ids) <= 1, (ids, second_state)
    assert second_state == "pending"
    assert listed == ([], [first])
    assert (entry["run_id"], entry["holds_slot"]) == (first, True)
    assert "kept: its timed-out job may still run" in text
