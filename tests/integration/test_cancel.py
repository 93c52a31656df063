"""``retro cancel`` beside a daemon that has committed a request but not yet enqueued
its job (DESIGN §4: intent, then effect): the late job is removed when it arrives."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from retro.app import App, job_payload
from retro.commands import Refused, cancel
from retro.config import Settings
from retro.machine import State
from retro.store import runs
from retro.store.facts import match_facts
from tests.conftest import Backend
from tests.healing import seed_runs


class _StopAfterAppend(BaseException):
    """A daemon that committed its request and stopped before the enqueue."""


class _Points:
    def reach(self, point: str) -> None:
        if point == "after_append":
            raise _StopAfterAppend(point)


def settings_for(backend: Backend) -> Settings:
    return Settings(
        database_url=backend.database_url, redis_url=backend.redis_url, queue_prefix=backend.prefix
    )


async def test_cancel_removes_a_job_enqueued_just_after_it(backend: Backend) -> None:
    await seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    settings = settings_for(backend)
    async with App(settings, crash=_Points()) as daemon:  # type: ignore[arg-type]
        with pytest.raises(_StopAfterAppend):
            await daemon.tick(now=datetime.now(UTC))
    async with App(settings) as app:
        assert app.queues is not None
        async with app.engine.connect() as conn:
            (run,) = [r for r in await runs.list_runs(conn) if r.state is not State.PENDING]
            match = await match_facts(conn, run.match_id)
        assert run.phase is not None and run.job_id is not None and match is not None
        assert (await app.queues.job_view(run.phase, run.job_id)).state == "unknown"

        async def late_enqueue() -> None:  # the daemon's step 3, a moment late
            await asyncio.sleep(0.5)
            await app.queues.enqueue(run.phase, run.job_id, job_payload(run.phase, match))

        enqueue = asyncio.create_task(late_enqueue())
        report = await cancel(
            app, [run.id], every_live=False, now=datetime.now(UTC), reason="stop\nnow"
        )
        await enqueue
        (done,) = report.cancelled
        assert done.job_removed and done.job_state in ("waiting", "prioritized")
        assert (await app.queues.job_view(run.phase, run.job_id)).state == "unknown"
        async with app.engine.connect() as conn:
            after = await runs.get(conn, run.id)
        assert after is not None and after.state is State.CANCELLED
        assert after.last_error == "stop now"  # one line: the newline folded
        events = await _events(app, run.id)
        assert events[-1].TYPE == "RunCancelled" and events[-1].reason == "stop now"
        with pytest.raises(Refused, match="empty"):
            await cancel(app, [], every_live=True, now=datetime.now(UTC), reason=" \n ")


async def _events(app: App, run_id: str) -> list:  # type: ignore[type-arg]
    async with app.engine.connect() as conn:
        return await runs.events_of(conn, run_id)
