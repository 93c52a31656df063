"""Crash safety on real services (DESIGN §4, §6): what a restart, a restore, a wipe or
a dead worker leaves behind must cost no attempt and run no job twice.

Each case drives ``App.tick`` (or the daemon) against a real database and a real
Redis, with real BullMQ workers. Redis is only ever touched under the test's own
key prefix, never flushed as a whole: the server is shared.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bullmq import Worker
from redis.asyncio import Redis
from sqlalchemy import update

from retro import commands
from retro import tick as tick_module
from retro.app import App, TickReport
from retro.config import Settings
from retro.demo.seed import seed_demo
from retro.events import (
    Event,
    JobFailed,
    JobReenqueued,
    Phase,
    PhaseTimedOut,
    PredictionsShort,
    Requested,
    RunFailed,
)
from retro.machine import JobView, Run
from retro.pipeline import host
from retro.pipeline.host_rows import AnalysisRow, MatchRow, ModelRow, NewPrediction, iso_utc
from retro.pipeline.workers import run_workers
from retro.queue import consume
from retro.scheduler import Daemon
from retro.store import migrate, runs
from retro.store.db import create_engine
from retro.store.facts import match_facts
from retro.store.schema import matches
from tests.conftest import Backend, close_worker, eventually
from tests.healing import DEMO_NOW, assert_healed

MODELS = 2
VERDICTS = (JobFailed, PhaseTimedOut, PredictionsShort, RunFailed)
"""Events that charge an attempt or end a run: none is due to a restart or a race."""


# --- a tiny host ----------------------------------------------------------------------


async def make_host(
    backend: Backend,
    *,
    match_ids: tuple[str, ...] = ("M1",),
    analysis: bool = True,
    predictions: int = 0,
) -> None:
    """Matches that finished 2-1 yesterday, ``MODELS`` active models, an analysis
    with a favourite if ``analysis``, and ``predictions`` pending predictions each."""
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
            [
                MatchRow(m, f"x-{m}", "xx.1", "Home", "Away", iso_utc(kickoff), 2, 1, "finished")
                for m in match_ids
            ],
        )
        for m in match_ids:
            if analysis:
                await host.upsert_analysis(engine, AnalysisRow(m, "Home"))
            await add_predictions(engine, m, predictions)
    finally:
        await engine.dispose()


async def add_predictions(engine: host.HostEngine, match_id: str, n: int) -> None:
    at = datetime.now(UTC)
    await host.insert_predictions(
        engine, [NewPrediction(match_id, f"model-{i}", 1, 0, "H", at) for i in range(n)]
    )


def settings_for(backend: Backend, **more: Any) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        **more,
    )


def now() -> datetime:
    return datetime.now(UTC)


async def get_run(app: App, run_id: str) -> Run:
    async with app.engine.connect() as conn:
        run = await runs.get(conn, run_id)
    assert run is not None
    return run


async def events_of(app: App, run_id: str) -> list[Event]:
    async with app.engine.connect() as conn:
        return await runs.events_of(conn, run_id)


async def types_of(app: App, run_id: str) -> list[str]:
    return [e.TYPE for e in await events_of(app, run_id)]


async def job_view(app: App, run: Run) -> JobView:
    assert app.queues is not None and run.phase is not None and run.job_id is not None
    return await app.queues.job_view(run.phase, run.job_id)


async def seed_one(app: App) -> str:
    seeded = (await commands.start(app, days=14, now=now())).seeded
    assert len(seeded) == 1
    return seeded[0]


@asynccontextmanager
async def workers(backend: Backend) -> AsyncIterator[None]:
    """The reference workers on the three queues, for the body of the ``with``."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_workers(backend.database_url, backend.redis_url, prefix=backend.prefix, stop=stop)
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def tick_until_done(
    app: App, run_id: str, *, between: Callable[[], Awaitable[None]] | None = None
) -> Run:
    async def finished() -> bool:
        if between is not None:
            await between()
        await app.tick(now=now())
        return (await get_run(app, run_id)).state == "done"

    await eventually(finished, timeout=20)
    return await get_run(app, run_id)


async def prefix_keys(redis: Redis, prefix: str) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{prefix}:*")]


async def wipe_prefix(redis_url: str, prefix: str) -> None:
    """What FLUSHALL (or a restart without persistence) does to this test's keys."""
    redis = Redis.from_url(redis_url)
    try:
        keys = await prefix_keys(redis, prefix)
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


def attempts(events: list[Event]) -> list[int]:
    return [e.attempt for e in events if isinstance(e, Requested)]


# --- a restored leftover is not charged to the next attempt ---------------------------


async def test_failed_job_restored_from_a_snapshot_is_not_charged_to_the_next_attempt(
    backend: Backend,
) -> None:
    """Redis restarts from a snapshot taken before retro removed attempt 1's failed
    job: attempt 2 must not be failed with attempt 1's outcome (it would fail the run
    here, with ``max_attempts=2``); the leftover is removed and the job enqueued again."""
    await make_host(backend)
    settings = settings_for(backend, max_attempts=2, retry_backoff=0)
    async with App(settings) as app:
        assert app.queues is not None
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert (run.state, run.attempt) == ("predicting", 1)

        async def fail(job: Any, token: str) -> None:
            raise RuntimeError("attempt-1 failure")

        worker = Worker(
            settings.predictions_queue,
            fail,
            {"connection": app.redis_url, "prefix": backend.prefix},
        )
        try:
            await eventually(lambda: _state_is(app, run, "failed"))
        finally:
            await close_worker(worker)
        first = await job_view(app, run)
        redis = Redis.from_url(app.redis_url)
        try:
            snapshot = [(k, await redis.dump(k)) for k in await prefix_keys(redis, backend.prefix)]

            await app.tick(now=now())  # JobFailed, RetryScheduled: committed first, then
            await app.tick(now=now())  # PredictionsRequested(2), removing attempt 1's job
            run = await get_run(app, run_id)
            assert (run.state, run.attempt) == ("predicting", 2)
            assert (await job_view(app, run)).state in ("waiting", "prioritized")

            # Redis restarts from the snapshot: attempt 1's failed job is back
            await redis.delete(*await prefix_keys(redis, backend.prefix))
            for key, value in snapshot:
                assert value is not None
                await redis.restore(key, 0, value, replace=True)
        finally:
            await redis.aclose()
        assert await job_view(app, run) == first

        report = await app.tick(now=now())
        assert report.events == []
        after = await get_run(app, run_id)
        assert (after.state, after.attempt, after.version) == ("predicting", 2, run.version)
        again = await job_view(app, after)
        assert again.state in ("waiting", "prioritized")
        assert first.created_at is not None and again.created_at is not None
        assert again.created_at > first.created_at  # a new job, not the leftover

        async with workers(backend):
            await tick_until_done(app, run_id)
        events = await events_of(app, run_id)
        asked = [(e.TYPE, e.attempt) for e in events if isinstance(e, Requested)]
        assert asked == [
            ("PredictionsRequested", 1),
            ("PredictionsRequested", 2),
            ("SettlementRequested", 1),
        ]
        verdicts = [
            (e.TYPE, getattr(e, "reason", None), getattr(e, "job_created_at", None))
            for e in events
            if isinstance(e, VERDICTS)
        ]
        assert verdicts == [("JobFailed", "attempt-1 failure", first.created_at)]
    await assert_healed(backend.database_url, expected_per_match=MODELS)


async def _state_is(app: App, run: Run, state: str) -> bool:
    return (await job_view(app, run)).state == state


# --- a job adopted by a retry is that retry's outcome ---------------------------------


async def test_a_running_job_adopted_by_the_retry_is_charged_to_the_retry(
    backend: Backend,
) -> None:
    """Attempt 1 times out while a live worker still runs its job; attempt 2 adopts
    that job (step 1 leaves it running). When it then fails, the failure is attempt
    2's: recorded as adopted, it is not mistaken for a leftover and re-run for free."""
    await make_host(backend, analysis=False)
    settings = settings_for(backend, analysis_timeout=0.3, retry_backoff=0, max_attempts=3)
    async with App(settings) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert run.state == "analyzing"
        release = asyncio.Event()

        async def slow_failure(job: Any, token: str) -> None:
            await release.wait()
            raise RuntimeError("slow failure")

        worker = Worker(
            settings.analysis_queue,
            slow_failure,
            {"connection": app.redis_url, "prefix": backend.prefix},
        )
        try:
            await eventually(lambda: _state_is(app, run, "active"))
            held = await job_view(app, run)
            await app.tick(now=now())  # first seen active: its start-to-close starts
            await asyncio.sleep(0.4)  # past the 0.3 s budget, on every clock
            await app.tick(now=now())  # timed out (committed first)
            await app.tick(now=now())  # the retry adopts it
            adopted = await get_run(app, run_id)
            assert (adopted.attempt, adopted.adopted_created_at) == (2, held.created_at)
            release.set()
            await eventually(lambda: _state_is(app, run, "failed"))
        finally:
            release.set()
            await close_worker(worker)
        await app.tick(now=now() + timedelta(seconds=2))  # JobFailed, RetryScheduled
        await app.tick(now=now() + timedelta(seconds=2))  # AnalysisRequested(3)
        events = await events_of(app, run_id)
        assert [e.TYPE for e in events if isinstance(e, VERDICTS)] == ["PhaseTimedOut", "JobFailed"]
        asked = [(e.attempt, e.adopted_created_at) for e in events if isinstance(e, Requested)]
        assert asked == [(1, None), (2, held.created_at), (3, None)]
        assert (await get_run(app, run_id)).last_error == "slow failure"


# --- a job the run no longer tracks is removed ----------------------------------------


async def test_settle_job_left_by_a_skipped_settlement_is_removed(backend: Backend) -> None:
    """The provider annuls the result while the settle job waits: the run completes
    via SettlementSkipped, and the queued job (with the old score in its payload)
    must not run later."""
    await make_host(backend, predictions=MODELS)  # finished 2-1, predictions unscored
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert (run.state, run.job_id) == ("settling", "settle-retro-M1")
        assert (await job_view(app, run)).state in ("waiting", "prioritized")
        async with app.engine.begin() as conn:
            await conn.execute(
                update(matches).values(status="live", home_score=None, away_score=None)
            )
        await app.tick(now=now())
        types = await types_of(app, run_id)
        assert types[-2:] == ["SettlementSkipped", "RunCompleted"]
        assert (await job_view(app, run)).state == "unknown"


async def test_predictions_job_is_removed_when_another_writer_completes_the_phase(
    backend: Backend,
) -> None:
    """The data appears without the job (the host's own pipeline caught up): the
    phase is done and the still-queued predictions job is removed."""
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert run.state == "predicting"
        await add_predictions(app.engine, "M1", MODELS)
        await app.tick(now=now())
        after = await get_run(app, run_id)
        assert after.state == "settling"
        assert "PredictionsCompleted" in await types_of(app, run_id)
        assert (await job_view(app, run)).state == "unknown"


class Killed(BaseException):
    """The process dies here (SIGKILL): nothing after this point runs."""


class DieAt:
    """Crash points that kill the tick (in-process) at one named point."""

    def __init__(self, point: str) -> None:
        self.point = point

    def reach(self, point: str) -> None:
        if point == self.point:
            raise Killed


@pytest.mark.parametrize("point", ["before_append", "after_append"])
@pytest.mark.parametrize("status", ["postponed", "live"])
async def test_a_crash_around_the_removal_does_not_leave_the_job_queued(
    backend: Backend, status: str, point: str
) -> None:
    """Intent before effect holds for removals too (DESIGN §4): the unstarted job is
    removed before RunCancelled (match postponed) or SettlementSkipped (result
    annulled) is appended, so a crash on either side of the append cannot leave it
    queued; after a restart the decision is simply taken again."""
    await make_host(backend, predictions=MODELS if status == "live" else 0)
    settings = settings_for(backend)
    async with App(settings) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert (await job_view(app, run)).state in ("waiting", "prioritized")
        async with app.engine.begin() as conn:
            await conn.execute(update(matches).values(status=status, home_score=None))
        app.crash = DieAt(point)  # type: ignore[assignment]
        with pytest.raises(Killed):
            await app.tick(now=now())
        assert (await job_view(app, run)).state == "unknown"  # removed before the append
    async with App(settings) as app:  # the restarted daemon
        for _ in range(3):
            await app.tick(now=now())
        assert (await get_run(app, run_id)).state in ("cancelled", "done")
        assert (await job_view(app, run)).state == "unknown"


# --- a job held by a dead worker ------------------------------------------------------


async def test_active_job_of_a_dead_worker_is_not_timed_out_while_no_worker_consumes(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker takes the job and dies: the job stays active with nobody to finish
    it. That is "no worker consuming", not a timeout: no attempt is burned."""
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend, analysis=False)
    settings = settings_for(backend, analysis_timeout=0.3, retry_backoff=0, max_attempts=3)
    async with App(settings) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert run.state == "analyzing"
        worker = Worker(
            settings.analysis_queue,
            lambda *_: None,
            {"connection": app.redis_url, "prefix": backend.prefix, "autorun": False},
        )
        taken = await worker.moveToActive("dead-worker")
        assert taken is not None and taken.id == run.job_id
        await close_worker(worker)  # the worker process is gone
        for _ in range(3):  # beyond the 0.3 s budget
            await app.tick(now=now())
            await asyncio.sleep(0.2)
        after = await get_run(app, run_id)
        events = await events_of(app, run_id)
        assert [e for e in events if isinstance(e, VERDICTS)] == []
        assert (after.state, after.attempt, after.version) == ("analyzing", 1, run.version)
        assert (await job_view(app, after)).state == "active"
        unconsumed = [
            r for r in caplog.records if "no worker consuming analysis-queue" in r.message
        ]
        assert len(unconsumed) == 1  # said once, not every tick


# --- §4.4: the prefix's keys wiped mid-run --------------------------------------------


async def test_keys_wiped_mid_run_are_re_enqueued_without_charging_an_attempt(
    backend: Backend,
) -> None:
    """FLUSHALL while a job waits, and again each time a job completes before retro
    saw it: the job is enqueued again (a ``JobReenqueued``, no attempt burned), the
    run finishes."""
    await make_host(backend, analysis=False)
    async with App(settings_for(backend)) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert run.state == "analyzing"
        await wipe_prefix(app.redis_url, backend.prefix)
        assert (await job_view(app, run)).state == "unknown"

        report = await app.tick(now=now())
        assert [(type(e), e.reason) for _, e in report.events] == [  # type: ignore[attr-defined]
            (JobReenqueued, "job not in BullMQ")
        ]
        after = await get_run(app, run_id)
        assert (after.attempt, after.version, after.reenqueues) == (1, run.version + 1, 1)
        assert (await job_view(app, after)).state in ("waiting", "prioritized")

        wiped: list[str] = []

        async def wipe_completed() -> None:
            current = await get_run(app, run_id)
            if current.job_id and (await job_view(app, current)).state == "completed":
                wiped.append(current.job_id)
                await wipe_prefix(app.redis_url, backend.prefix)

        async with workers(backend):
            await tick_until_done(app, run_id, between=wipe_completed)
        events = await events_of(app, run_id)
        assert [e for e in events if isinstance(e, VERDICTS)] == []
        assert set(attempts(events)) == {1}
        assert wiped, "no completed job was ever wiped: the case did not happen"
    await assert_healed(backend.database_url, expected_per_match=MODELS)


# --- the daemon loop: SIGTERM finishes the current tick -------------------------------


async def test_sigterm_during_a_slow_enqueue_still_finishes_the_tick(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §6: SIGTERM finishes the current tick. A tick cut between the intent
    (committed) and the enqueue would leave a run waiting on a job never sent."""
    await make_host(backend)
    async with App(settings_for(backend, tick_interval=0.2)) as app:
        assert app.queues is not None
        run_id = await seed_one(app)
        real_enqueue = app.queues.enqueue
        seen: list[str] = []

        async def slow_enqueue(phase: Phase, job_id: str, payload: Any, **options: Any) -> None:
            seen.append("started")
            try:
                await asyncio.sleep(1.0)  # a slow Redis round trip
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            await real_enqueue(phase, job_id, payload, **options)
            seen.append("finished")

        monkeypatch.setattr(app.queues, "enqueue", slow_enqueue)
        daemon = Daemon(app, scan_days=14)
        task = asyncio.create_task(daemon.run(scan=False, handle_signals=True))
        await eventually(lambda: bool(seen), timeout=10, interval=0.01)
        assert not task.done()  # its SIGTERM handler is installed
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 10)
        assert seen == ["started", "finished"]
        run = await get_run(app, run_id)
        assert (await types_of(app, run_id))[-1] == "PredictionsRequested"
        assert (await job_view(app, run)).state in ("waiting", "prioritized")


async def test_the_daemon_scans_at_start(backend: Backend) -> None:
    """The first scan runs when the daemon starts, not one ``scan_interval`` later."""
    await make_host(backend)
    async with App(settings_for(backend, scan_interval=900)) as app:
        daemon = Daemon(app, scan_days=14)
        task = asyncio.create_task(daemon.run(scan=True, handle_signals=False))
        try:

            async def seeded() -> bool:
                async with app.engine.connect() as conn:
                    return bool(await runs.all_ids(conn))

            await eventually(seeded, timeout=10)
        finally:
            daemon.stop()
            await asyncio.wait_for(task, 10)


# --- one run's trouble does not hold up the others ------------------------------------


async def test_one_runs_exception_does_not_stop_the_others_in_a_tick(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose advance raises is logged and left for the next tick; the tick goes
    on with the other runs instead of stopping at the first exception."""
    await make_host(backend, match_ids=("M1", "M2"))
    async with App(settings_for(backend, max_in_flight=2)) as app:
        seeded = (await commands.start(app, days=14, now=now())).seeded
        assert len(seeded) == 2

        async def broken_for_m1(conn: Any, match_id: str, **kw: Any) -> Any:
            if match_id == "M1":
                raise RuntimeError("M1's row cannot be read")
            return await match_facts(conn, match_id, **kw)

        monkeypatch.setattr(tick_module, "match_facts", broken_for_m1)
        for _ in range(2):  # whichever run the first tick looks at first
            await app.tick(now=now())
        by_match = {(await get_run(app, r)).match_id: r for r in seeded}
        assert await types_of(app, by_match["M1"]) == ["RunSeeded"]
        m2 = await get_run(app, by_match["M2"])
        assert (m2.state, m2.step) == ("predicting", "job")
        assert any("could not be advanced" in r.message for r in caplog.records)

        monkeypatch.setattr(tick_module, "match_facts", match_facts)
        await app.tick(now=now())
        assert (await get_run(app, by_match["M1"])).state == "predicting"


# --- a job finishing between the two reads --------------------------------------------


async def test_job_completing_between_the_reads_is_not_a_short_job(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker commits its data, then BullMQ marks the job completed. The tick reads
    the job first and the data after, on a fresh snapshot; read the other way round,
    a job finishing in between looks "completed without data" and burns an attempt."""
    await make_host(backend)
    async with App(settings_for(backend)) as app:
        assert app.queues is not None
        run_id = await seed_one(app)
        await app.tick(now=now())
        run = await get_run(app, run_id)
        assert run.state == "predicting"
        real_view = app.queues.job_view
        real_state = app.queues.job_state
        raced: list[str] = []

        async def finishing_state(phase: Phase, job_id: str) -> str:
            if phase is Phase.PREDICTIONS and not raced:
                raced.append(job_id)  # the worker runs right now, inside the tick
                async with workers(backend):
                    await eventually(
                        lambda: _completed(real_view(phase, job_id)), timeout=15, interval=0.02
                    )
            return await real_state(phase, job_id)

        monkeypatch.setattr(app.queues, "job_state", finishing_state)
        await app.tick(now=now())
        assert raced == [run.job_id]
        events = await events_of(app, run_id)
        assert [e for e in events if isinstance(e, VERDICTS)] == []
        assert "PredictionsCompleted" in [e.TYPE for e in events]
        assert set(attempts(events)) == {1}


async def _completed(view: Awaitable[JobView]) -> bool:
    return (await view).state == "completed"


# --- two daemons on one PostgreSQL ----------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_two_daemons_on_one_postgres_heal_without_doubles(
    backend: Backend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN §4: two daemons may run at once on PostgreSQL. Every run is healed,
    no job runs twice for one enqueue, ``max_in_flight`` holds across both, and no
    attempt is charged by the rivalry."""
    caplog.set_level(logging.INFO, logger="retro")
    engine = create_engine(backend.database_url)
    try:
        seeded = await seed_demo(engine, now=DEMO_NOW, outage_days=14, competitions=["en.1"])
        await migrate.upgrade(engine)
        settings = settings_for(backend, max_in_flight=3, tick_interval=0.05)
        peak = 0
        async with App(settings) as a, App(settings) as b:
            assert (
                len((await commands.start(a, days=14, now=now(), until=DEMO_NOW)).seeded)
                == seeded.gaps
            )
            appended = {"a": 0, "b": 0}
            for name, app in (("a", a), ("b", b)):
                monkeypatch.setattr(app, "tick", _counting(app.tick, appended, name))
            daemons = [Daemon(a), Daemon(b)]
            async with workers(backend):
                tasks = [
                    asyncio.create_task(d.run(until_idle=True, scan=False, handle_signals=False))
                    for d in daemons
                ]
                try:
                    deadline = asyncio.get_running_loop().time() + 40
                    while not all(t.done() for t in tasks):
                        assert asyncio.get_running_loop().time() < deadline, "daemons still busy"
                        async with engine.connect() as conn:
                            peak = max(peak, await runs.count_in_flight(conn))
                        await asyncio.sleep(0.005)
                finally:
                    for daemon in daemons:
                        daemon.stop()  # a no-op for a daemon that went idle by itself
                    await asyncio.wait_for(asyncio.gather(*tasks), 15)
            assert appended["a"] > 0 and appended["b"] > 0, f"one daemon did all: {appended}"
            async with engine.connect() as conn:
                verdicts = [
                    (run_id, e.TYPE)
                    for run_id in await runs.all_ids(conn)
                    for e in await runs.events_of(conn, run_id)
                    if isinstance(e, VERDICTS)
                ]
    finally:
        await engine.dispose()
    assert 0 < peak <= 3
    assert verdicts == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    counts = await assert_healed(backend.database_url)
    assert counts == {"done": seeded.gaps}


def _counting(
    tick: Callable[..., Awaitable[TickReport]], appended: dict[str, int], name: str
) -> Callable[..., Awaitable[TickReport]]:
    async def counted(*, now: datetime) -> TickReport:
        report = await tick(now=now)
        appended[name] += len(report.events)
        return report

    return counted


# --- a retry without backoff: the judgement is committed before the job is removed ----


class _CrashBeforeAppend(BaseException):
    """Stands in for a crash of the daemon at ``before_append``."""


class _CrashPoints:
    def reach(self, point: str) -> None:
        if point == "before_append":
            raise _CrashBeforeAppend(point)


async def test_a_retry_without_backoff_keeps_the_failed_job_until_its_failure_is_committed(
    backend: Backend,
) -> None:
    """With ``retry_backoff`` 0 the retry is due at once, but its step 1 removes the
    failed job (same deterministic id): so JobFailed + RetryScheduled are appended
    first, and the retry's request comes in a later transaction. A crash before that
    first append leaves the failed job in BullMQ, so its failure is still seen."""
    await make_host(backend, analysis=False)
    settings = settings_for(backend, retry_backoff=0.0, max_attempts=3)
    async with App(settings) as app:
        run_id = await seed_one(app)
        await app.tick(now=now())  # AnalysisRequested, attempt 1
        run = await get_run(app, run_id)

        async def fail(job: Any, token: str) -> None:
            raise RuntimeError("analysis upstream down")

        stop = asyncio.Event()
        consumer = asyncio.create_task(
            consume(
                backend.redis_url,
                prefix=backend.prefix,
                handlers={"analysis-queue": fail},
                concurrency=1,
                stop=stop,
                name="test-failing",
            )
        )
        try:

            async def failed() -> bool:
                return (await job_view(app, run)).state == "failed"

            await eventually(failed, timeout=20)
        finally:
            stop.set()
            await asyncio.wait_for(consumer, 15)

    async with App(settings, crash=_CrashPoints()) as crashing:  # type: ignore[arg-type]
        with pytest.raises(_CrashBeforeAppend):
            await crashing.tick(now=now())
        assert (await job_view(crashing, run)).state == "failed", "judged job removed early"
        assert (await types_of(crashing, run_id))[-1] == "AnalysisRequested"

    async with App(settings) as app:
        report = await app.tick(now=now())
        assert [type(e).__name__ for _, e in report.events] == ["JobFailed", "RetryScheduled"]
        assert report.again, "the retry is due at once: the daemon must look again"
        failure = next(e for e in await events_of(app, run_id) if isinstance(e, JobFailed))
        assert "analysis upstream down" in failure.reason
        await app.tick(now=now())
        assert attempts(await events_of(app, run_id)) == [1, 2]


# --- a failure the worker marks unrecoverable (issue 10, point 5) ----------------------


async def test_an_unrecoverable_failure_ends_the_run_after_one_attempt(
    backend: Backend,
) -> None:
    """A worker throws BullMQ's ``UnrecoverableError``: the run fails at once with the
    worker's reason, and no retry is spent (``max_attempts`` 3 would allow two)."""
    from bullmq import UnrecoverableError

    await make_host(backend, analysis=False)
    settings = settings_for(backend, retry_backoff=0, max_attempts=3, job_attempts=3)
    async with App(settings) as app:
        run_id = await seed_one(app)
        calls: list[str] = []

        async def never(job: Any, token: str) -> None:
            calls.append(job.id)
            raise UnrecoverableError("fixture unknown to the data provider")

        worker = Worker(  # consuming before the job comes, as a host's worker is
            settings.analysis_queue, never, {"connection": app.redis_url, "prefix": backend.prefix}
        )
        try:
            await app.tick(now=now())
            run = await get_run(app, run_id)
            await eventually(lambda: _state_is(app, run, "failed"))
        finally:
            await close_worker(worker)
        await app.tick(now=now())
        events = await events_of(app, run_id)
    assert calls == [run.job_id]  # BullMQ's own attempts skipped too
    assert [e.TYPE for e in events] == ["RunSeeded", "AnalysisRequested", "RunFailed"]
    assert events[-1].reason == (  # type: ignore[attr-defined]
        f"analysis job {run.job_id} failed with UnrecoverableError: "
        "fixture unknown to the data provider"
    )
