"""Issue 9 on real services: lost jobs (an orphaned hash, BullMQ issue 1644) are
enqueued again a bounded number of times; a job no worker takes (wrong Redis
database, paused queue, waiting for children) shows its reason at once, and past
``queue_wait_budget`` in the metric and in ``/healthz``, without charging an attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bullmq import FlowProducer
from redis.asyncio import Redis

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.events import Event, JobFailed, JobReenqueued, Phase, PhaseTimedOut, RunFailed
from retro.machine import Run
from retro.metrics import Health, WorkersByQueue, sync_engine
from retro.pipeline import host
from retro.pipeline.host_rows import MatchRow, ModelRow, iso_utc
from retro.pipeline.workers import run_workers
from retro.report import status_json
from retro.store import migrate, runs
from retro.store.db import create_engine
from tests.conftest import Backend, close_worker, eventually

MODELS = 2
JOB = "analyze-retro-M1"


async def make_host(backend: Backend) -> None:
    """One match that finished 2-1 yesterday, without analysis, ``MODELS`` models."""
    engine = create_engine(backend.database_url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        await host.insert_models(
            engine, [ModelRow(f"model-{i}", "acme", f"m{i}", f"Model {i}") for i in range(MODELS)]
        )
        kickoff = datetime.now(UTC) - timedelta(days=1)
        await host.insert_matches(
            engine,
            [MatchRow("M1", "x-M1", "xx.1", "Home", "Away", iso_utc(kickoff), 2, 1, "finished")],
        )
    finally:
        await engine.dispose()


def settings_for(backend: Backend, **more: Any) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        **more,
    )


def now() -> datetime:
    return datetime.now(UTC)


async def seed_one(app: App) -> str:
    (run_id,) = (await commands.start(app, days=14, now=now())).seeded
    return run_id


async def get_run(app: App, run_id: str) -> Run:
    async with app.engine.connect() as conn:
        run = await runs.get(conn, run_id)
    assert run is not None
    return run


async def events_of(app: App, run_id: str) -> list[Event]:
    async with app.engine.connect() as conn:
        return await runs.events_of(conn, run_id)


def at_db(url: str, db: int) -> str:
    """``url`` on logical database ``db`` (``redis://h:p/db`` or ``unix://path?db=``)."""
    if url.startswith("unix://"):
        return f"{url.split('?', 1)[0]}?db={db}"
    return f"{url.rsplit('/', 1)[0]}/{db}"


@asynccontextmanager
async def workers(backend: Backend, redis_url: str | None = None) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_workers(
            backend.database_url, redis_url or backend.redis_url, prefix=backend.prefix, stop=stop
        )
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


# --- lost jobs: the orphaned hash of BullMQ issue 1644 --------------------------------


async def orphan(app: App, backend: Backend, job_id: str = JOB) -> None:
    """Leave ``job_id``'s hash and take its id out of every state list (issue 1644);
    before the first add, write a hash as a lost job leaves it."""
    redis = Redis.from_url(app.redis_url)
    base = f"{backend.prefix}:analysis-queue"
    try:
        await redis.hset(
            f"{base}:{job_id}",
            mapping={"name": "analyze-match", "data": "{}", "opts": "{}", "timestamp": 1},
        )
        for name in ("wait", "paused", "active"):
            await redis.lrem(f"{base}:{name}", 0, job_id)
        for name in ("prioritized", "delayed", "waiting-children", "completed", "failed"):
            await redis.zrem(f"{base}:{name}", job_id)
    finally:
        await redis.aclose()
    assert app.queues is not None
    view = await app.queues.job_view(Phase.ANALYSIS, job_id)
    assert (view.state, view.orphaned) == ("unknown", True)


async def heal(app: App, backend: Backend, run_id: str) -> Run:
    async with workers(backend):

        async def finished() -> bool:
            await app.tick(now=now())
            return (await get_run(app, run_id)).state == "done"

        await eventually(finished, timeout=30)
    return await get_run(app, run_id)


async def test_an_orphaned_hash_before_the_first_add_is_removed_and_the_run_heals(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await orphan(app, backend)
        run = await heal(app, backend, run_id)
        events = await events_of(app, run_id)
    assert run.state == "done"
    readds = [e for e in events if isinstance(e, JobReenqueued)]
    assert len(readds) <= 3
    assert [e for e in events if isinstance(e, JobFailed | PhaseTimedOut | RunFailed)] == []
    removed = [r for r in caplog.records if "removed orphaned job hash" in r.getMessage()]
    assert len(removed) == 1


async def test_a_job_lost_from_its_list_is_re_enqueued_once_and_the_run_heals(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        assert (await get_run(app, run_id)).job_id == JOB
        await orphan(app, backend)
        run = await heal(app, backend, run_id)
        events = await events_of(app, run_id)
    assert run.state == "done"
    readds = [(e.phase, e.job_id, e.reason) for e in events if isinstance(e, JobReenqueued)]
    assert readds == [("analysis", JOB, "orphaned job hash (in no state list)")]
    logged = [r for r in caplog.records if r.getMessage().startswith("JobReenqueued")]
    assert len(logged) == 1  # once per re-add, not once per tick
    assert [e for e in events if isinstance(e, JobFailed | PhaseTimedOut | RunFailed)] == []


async def test_a_job_that_stays_lost_fails_the_run_after_the_bound(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """No worker, and the job is orphaned again after every re-add: three re-adds
    (``max_reenqueues``), each logged once, then RunFailed naming the job."""
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        for _ in range(6):  # more ticks than the bound: the run must stop by itself
            if (await get_run(app, run_id)).state == "failed":
                break
            await orphan(app, backend)
            await app.tick(now=now())
        run = await get_run(app, run_id)
        types = [e.TYPE for e in await events_of(app, run_id)]
    assert types.count("JobReenqueued") == 3
    assert types[-1] == "RunFailed"
    assert run.state == "failed" and run.attempt == 1
    assert run.last_error == (
        f"analysis job {JOB} lost: still orphaned job hash (in no state list) "
        "after 3 re-enqueues in a row"
    )
    logged = [r for r in caplog.records if r.getMessage().startswith("JobReenqueued")]
    assert len(logged) == 3


async def test_cancel_removes_an_orphaned_hash(backend: Backend) -> None:
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        await orphan(app, backend)
        report = await commands.cancel(app, [run_id], every_live=False, now=now())
        (cancelled,) = report.cancelled
        assert (cancelled.job_state, cancelled.job_removed) == ("unknown", True)
        redis = Redis.from_url(app.redis_url)
        try:
            assert not await redis.exists(f"{backend.prefix}:analysis-queue:{JOB}")
        finally:
            await redis.aclose()


# --- schedule-to-start: jobs no worker takes ------------------------------------------


def degraded(app: App) -> dict[str, Any]:
    """``/healthz``'s body for ``app``, which must answer 200 ``degraded``."""
    health = Health(
        sync_engine(app.settings.database_url), app.redis_url, app.metrics, tick_interval=2
    )
    try:
        healthy, body = health.check()
    finally:
        health.close()
        health.engine.dispose()
    assert healthy and body["status"] == "degraded", body
    return body


async def watch_the_wait(
    app: App, run_id: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One tick requests the job; ``status --json`` shows ``reason`` at once; past the
    (tiny) budget the metric and ``/healthz`` show it; no attempt is charged; the
    reason is logged once, not per tick."""
    await app.tick(now=now())
    document = status_json(await commands.status(app, now=now()), now=now())
    (item,) = document["in_flight"]
    assert item["waiting"]["reason"] == reason, item
    assert item["waiting"]["queue"] == "analysis-queue"
    await asyncio.sleep(0.4)  # past queue_wait_budget (0.3 s)
    for _ in range(3):
        await app.tick(now=now())
    oldest = app.metrics.registry.get_sample_value(
        "retro_oldest_waiting_job_seconds", {"queue": "analysis-queue"}
    )
    assert oldest is not None and oldest > 0.3
    document = status_json(await commands.status(app, now=now()), now=now())
    (item,) = document["in_flight"]
    assert (item["waiting"]["reason"], item["waiting"]["over_budget"]) == (reason, True)
    assert item["waiting"]["text"].startswith("waiting ")
    body = degraded(app)
    assert [(w["queue"], w["reason"]) for w in body["waiting"]] == [("analysis-queue", reason)]
    run = await get_run(app, run_id)
    assert (run.state, run.attempt) == ("analyzing", 1)
    types = [e.TYPE for e in await events_of(app, run_id)]
    assert not {"JobFailed", "PhaseTimedOut", "RunFailed"} & set(types)
    said = [r for r in caplog.records if f"{JOB} waiting " in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]


WAIT_SETTINGS = {"queue_wait_budget": 0.3, "tick_interval": 0.05}


async def test_workers_on_another_redis_database_do_not_count(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    elsewhere = at_db(backend.redis_url, 1)
    async with App(settings_for(backend, **WAIT_SETTINGS)) as app:
        run_id = await seed_one(app)
        async with workers(backend, elsewhere):
            counter = WorkersByQueue(elsewhere, backend.prefix, ["analysis-queue"])
            try:

                def seen_on_db1() -> bool:
                    (family,) = counter.collect()
                    return bool(family.samples[0].value)

                await eventually(seen_on_db1, timeout=10)  # the workers are up, on db 1
            finally:
                counter.close()
            await watch_the_wait(app, run_id, "no-worker", caplog)
            assert app.queues is not None
            assert await app.queues.worker_count(Phase.ANALYSIS) == 0
            ours = WorkersByQueue(app.redis_url, backend.prefix, ["analysis-queue"])
            try:
                (family,) = ours.collect()
            finally:
                ours.close()
            assert [s.value for s in family.samples] == [0]
    redis = Redis.from_url(elsewhere)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{backend.prefix}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


async def test_a_paused_queue_is_named_as_the_reason(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    async with App(settings_for(backend, **WAIT_SETTINGS)) as app:
        assert app.queues is not None
        run_id = await seed_one(app)
        await app.queues.queue(Phase.ANALYSIS).pause()
        async with workers(backend):
            await eventually(
                lambda: _has_workers(app), timeout=10
            )  # workers consume it, but it is paused
            await watch_the_wait(app, run_id, "paused", caplog)


async def _has_workers(app: App) -> bool:
    assert app.queues is not None
    return bool(await app.queues.worker_count(Phase.ANALYSIS))


async def test_a_job_waiting_for_children_is_named_as_the_reason(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A parent job under retro's id (a FlowProducer's) waits for a child on a queue
    nobody consumes: retro adopts it and says it waits for its children."""
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    async with App(settings_for(backend, **WAIT_SETTINGS)) as app:
        run_id = await seed_one(app)
        flows = FlowProducer({"connection": app.redis_url, "prefix": backend.prefix})
        try:
            await flows.add(
                {
                    "name": "analyze-match",
                    "queueName": "analysis-queue",
                    "data": {"matchId": "M1"},
                    "opts": {"jobId": JOB},
                    "children": [{"name": "child", "queueName": "nobody-queue", "data": {}}],
                }
            )
        finally:
            await flows.close()
        assert app.queues is not None
        assert (await app.queues.job_view(Phase.ANALYSIS, JOB)).state == "waiting-children"
        await watch_the_wait(app, run_id, "waiting-children", caplog)


async def test_an_active_job_whose_worker_died_shows_as_a_wait_not_healthy_silence(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker takes the job and dies with no other worker on the queue: BullMQ's
    stalled check runs only in workers, so nothing moves it. It costs no attempt, and
    it must not look healthy either: status names the missing worker at once, and past
    the budget the metric and /healthz (degraded) show it."""
    from bullmq import Worker

    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend)
    settings = settings_for(backend, analysis_timeout=0.2, **WAIT_SETTINGS)
    async with App(settings) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        worker = Worker(
            settings.analysis_queue,
            lambda *_: None,
            {"connection": app.redis_url, "prefix": backend.prefix, "autorun": False},
        )
        taken = await worker.moveToActive("dead-worker")
        assert taken is not None and taken.id == JOB
        await close_worker(worker)  # the worker process is gone
        await eventually(lambda: _no_workers(app), timeout=10)
        await app.tick(now=now())
        document = status_json(await commands.status(app, now=now()), now=now())
        (item,) = document["in_flight"]
        assert item["job_state"] == "active"
        assert item["waiting"]["reason"] == "no-worker", item
        await asyncio.sleep(0.4)  # past queue_wait_budget (0.3 s) and analysis_timeout
        await app.tick(now=now())
        oldest = app.metrics.registry.get_sample_value(
            "retro_oldest_waiting_job_seconds", {"queue": "analysis-queue"}
        )
        assert oldest is not None and oldest > 0.3
        assert [w["reason"] for w in degraded(app)["waiting"]] == ["no-worker"]
        run = await get_run(app, run_id)
        assert (run.state, run.attempt) == ("analyzing", 1)
        types = {e.TYPE for e in await events_of(app, run_id)}
        assert not {"JobFailed", "PhaseTimedOut", "RunFailed"} & types


async def _no_workers(app: App) -> bool:
    assert app.queues is not None
    return await app.queues.worker_count(Phase.ANALYSIS) == 0


async def test_an_orphan_a_worker_still_locks_is_not_re_added_until_the_lock_goes(
    backend: Backend,
) -> None:
    """An orphaned hash with a live ``:lock``: BullMQ refuses to remove it, so a re-add
    would be ignored and would only use up ``max_reenqueues``. It counts as active
    until the lock goes; then it is re-added once and the run heals."""
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        await orphan(app, backend)
        redis = Redis.from_url(app.redis_url)
        lock = f"{backend.prefix}:analysis-queue:{JOB}:lock"
        try:
            await redis.set(lock, "a-worker-token", ex=60)
            assert app.queues is not None
            view = await app.queues.job_view(Phase.ANALYSIS, JOB)
            assert (view.state, view.orphaned) == ("active", True)
            for _ in range(5):
                await app.tick(now=now())
            events = await events_of(app, run_id)
            assert [e for e in events if isinstance(e, JobReenqueued | RunFailed)] == []
            await redis.delete(lock)  # the lock expires
        finally:
            await redis.aclose()
        run = await heal(app, backend, run_id)
        events = await events_of(app, run_id)
    assert run.state == "done"
    assert len([e for e in events if isinstance(e, JobReenqueued)]) == 1
