"""No thrash (DESIGN §3): a match that can never be healed ends ``failed`` once, with a
reason, after at most ``max_attempts`` per phase, and is not seeded again within the
cooldown. ``retro start --reprocess failed`` seeds it again; ``retro retry`` re-arms
failed runs (``RunRearmed``) and refuses anything else without writing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from retro import commands
from retro.app import App
from retro.commands import RetryRefused
from retro.config import Settings
from retro.events import (
    AnalysisRequested,
    Event,
    JobFailed,
    PredictionsCompleted,
    PredictionsRequested,
    PredictionsShort,
    Requested,
    RetryScheduled,
    RunFailed,
    RunRearmed,
)
from retro.machine import REASON_LIMIT, Run, State
from retro.pipeline import host
from retro.pipeline.faults import INJECTED
from retro.pipeline.stages import analysis_from_row, new_predictions
from retro.pipeline.workers import ReferenceWorkers, run_workers
from retro.queue import consume
from retro.scheduler import Daemon
from retro.store import migrate, runs
from retro.store.db import create_engine
from retro.store.schema import backfill_events, match_analysis, matches, models, predictions
from tests.conftest import Backend
from tests.e2e.clirunner import one_error_line, run_retro
from tests.e2e.hostdata import seed_host

MAX_ATTEMPTS = 2
QUEUES = ("analysis-queue", "predictions-queue", "settlement-queue")


def utcnow() -> datetime:
    return datetime.now(UTC)


def settings_for(backend: Backend) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        max_attempts=MAX_ATTEMPTS,
        retry_backoff=0.01,
        tick_interval=0.05,
        max_in_flight=10,
    )


async def events_of(app: App, run_id: str) -> list[Event]:
    async with app.engine.connect() as conn:
        return await runs.events_of(conn, run_id)


async def all_runs(app: App) -> dict[str, Run]:
    async with app.engine.connect() as conn:
        found = {}
        for run_id in await runs.all_ids(conn):
            run = await runs.get(conn, run_id)
            assert run is not None
            found[run_id] = run
        return found


async def event_count(app: App) -> int:
    async with app.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(backfill_events)) or 0)


@asynccontextmanager
async def workers(
    app: App, handlers: dict[str, Any] | None = None, *, fail_rate: float = 0.0
) -> AsyncIterator[None]:
    """Reference workers (or ``handlers`` by queue) consuming while the block runs."""
    stop = asyncio.Event()
    if handlers is None:
        consuming = run_workers(
            app.settings.database_url,
            app.redis_url,
            prefix=app.settings.queue_prefix,
            stop=stop,
            fail_rate=fail_rate,
        )
    else:
        consuming = consume(
            app.redis_url,
            prefix=app.settings.queue_prefix,
            handlers=handlers,
            concurrency=1,
            stop=stop,
            name="no-thrash",
        )
    task = asyncio.create_task(consuming)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until_idle(app: App, timeout: float = 40) -> None:
    await asyncio.wait_for(
        Daemon(app).run(until_idle=True, scan=False, handle_signals=False), timeout
    )


def assert_one_line_reason(reason: str | None, *words: str) -> str:
    assert reason is not None
    assert "\n" not in reason and len(reason) <= REASON_LIMIT, reason
    for word in words:
        assert word in reason, f"{word!r} not in {reason!r}"
    return reason


# --- a worker that always fails ---------------------------------------------------------


async def test_a_worker_that_always_fails_fails_each_run_once_then_rests(
    backend: Backend,
) -> None:
    expect = seed_host(backend.database_url)
    engine = create_engine(backend.database_url)
    try:
        await migrate.upgrade(engine)
        await host.create_journal(engine)
    finally:
        await engine.dispose()
    async with App(settings_for(backend)) as app:
        seeded = (await commands.start(app, days=14, now=utcnow())).seeded
        assert len(seeded) == len(expect.gaps)
        async with workers(app, fail_rate=1.0):
            await until_idle(app)

        failed = await all_runs(app)
        assert {r.state for r in failed.values()} == {State.FAILED}
        for run_id, run in failed.items():
            events = await events_of(app, run_id)
            types = Counter(e.TYPE for e in events)
            phases = {str(e.PHASE) for e in events if isinstance(e, Requested)}
            assert len(phases) == 1, f"{run_id} failed in more than one phase: {phases}"
            (phase,) = phases
            assert sum(isinstance(e, Requested) for e in events) == MAX_ATTEMPTS, types
            assert types["JobFailed"] == MAX_ATTEMPTS, types
            assert types["RetryScheduled"] == MAX_ATTEMPTS - 1, types
            assert types["RunFailed"] == 1 and isinstance(events[-1], RunFailed), types
            reason = events[-1].reason
            assert_one_line_reason(reason, phase, INJECTED, f"{MAX_ATTEMPTS} times")
            assert run.last_error == reason
        engine = create_engine(backend.database_url)
        try:
            journal = await host.job_log(engine)
        finally:
            await engine.dispose()
        per_job = Counter(e.job_id for e in journal)
        assert set(per_job.values()) == {MAX_ATTEMPTS}, per_job
        assert {e.outcome for e in journal} == {f"error: {INJECTED}"}

        # Within the cooldown neither `start` nor the daemon's scan seeds them again.
        written = await event_count(app)
        again = await commands.start(app, days=14, now=utcnow())
        assert again.seeded == []
        assert again.scan.blocked == len(expect.gaps)
        await Daemon(app, scan_days=14).scan()
        assert await event_count(app) == written
        assert set(await all_runs(app)) == set(failed)

        # retry RUN re-arms that run only; retry --failed re-arms the rest.
        first, *rest = sorted(failed)
        rearmed = await commands.retry(app, [first], failed=False, now=utcnow())
        assert [r.id for r in rearmed] == [first]
        assert rearmed[0].state is State.PENDING and rearmed[0].last_error is None
        assert isinstance((await events_of(app, first))[-1], RunRearmed)
        states = {i: r.state for i, r in (await all_runs(app)).items()}
        assert states == {first: State.PENDING, **dict.fromkeys(rest, State.FAILED)}
        rearmed = await commands.retry(app, [], failed=True, now=utcnow())
        assert sorted(r.id for r in rearmed) == rest
        assert {r.state for r in (await all_runs(app)).values()} == {State.PENDING}

        # Re-armed runs heal once the workers are healthy.
        async with workers(app):
            await until_idle(app)
        done = await all_runs(app)
        assert {r.state for r in done.values()} == {State.DONE}
        assert (await commands.verify(app)).drifted == []

        # Retry of a done run (or an unknown one) is refused and writes nothing.
        written = await event_count(app)
        with pytest.raises(RetryRefused, match="not failed"):
            await commands.retry(app, [first], failed=False, now=utcnow())
        with pytest.raises(RetryRefused, match="no run"):
            await commands.retry(app, ["no-such-run"], failed=False, now=utcnow())
        assert await event_count(app) == written
        assert await all_runs(app) == done
        assert await commands.retry(app, [], failed=True, now=utcnow()) == []


# --- models that change mid-run ---------------------------------------------------------

MATCH = "nt-1"


async def host_with_one_gap(url: str) -> None:
    """Models m1-m3 active, m4 retired; one finished match with an analysis and no
    predictions (a ``missing_predictions`` gap)."""
    engine = create_engine(url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        kickoff = (utcnow() - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        async with engine.begin() as conn:
            await conn.execute(
                models.insert(),
                [
                    {"id": m, "provider": "t", "model_name": m, "display_name": m, "active": on}
                    for m, on in (("m1", True), ("m2", True), ("m3", True), ("m4", False))
                ],
            )
            await conn.execute(
                matches.insert().values(
                    id=MATCH,
                    external_id="ext-nt-1",
                    competition_id="t.1",
                    home_team="Home FC",
                    away_team="Away FC",
                    kickoff_time=kickoff,
                    home_score=2,
                    away_score=1,
                    status="finished",
                )
            )
            await conn.execute(
                match_analysis.insert().values(
                    id="a-nt-1", match_id=MATCH, favorite_team_name="Home FC"
                )
            )
    finally:
        await engine.dispose()


def fixed_model_workers(
    engine: Any, known: tuple[str, ...], hook: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """Reference analysis and settlement; a predictions worker whose model list was
    loaded at start-up (``known``) and never reloaded. ``hook`` runs on its first job."""
    reference = ReferenceWorkers(engine)
    calls: list[str] = []

    async def predict(job: Any, token: str) -> dict[str, Any]:
        match_id = job.data["matchId"]
        if not calls:
            await hook()
        calls.append(match_id)
        match = await host.get_match(engine, match_id)
        row = await host.get_analysis(engine, match_id)
        assert match is not None and row is not None
        analysis = analysis_from_row(row, match.home_team, match.away_team)
        written = await host.insert_predictions(
            engine, new_predictions(match_id, analysis, known, created_at=utcnow())
        )
        return {"written": written}

    return dict(zip(QUEUES, (reference.analyze, predict, reference.settle), strict=True))


async def set_model(engine: Any, model_id: str, **values: bool) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(models).where(models.c.id == model_id).values(**values))


async def test_a_model_disabled_mid_run_lowers_the_expectation_and_the_run_completes(
    backend: Backend,
) -> None:
    await host_with_one_gap(backend.database_url)
    async with App(settings_for(backend)) as app:
        (run_id,) = (await commands.start(app, days=14, now=utcnow())).seeded
        # m3's API is down: the worker cannot predict for it, and the host's pipeline
        # auto-disables it while the predictions job runs.
        handlers = fixed_model_workers(
            app.engine, ("m1", "m2"), lambda: set_model(app.engine, "m3", auto_disabled=True)
        )
        async with workers(app, handlers):
            await until_idle(app)
        events = await events_of(app, run_id)
        run = (await all_runs(app))[run_id]
        assert run.state is State.DONE, [e.TYPE for e in events]
        completed = [e for e in events if isinstance(e, PredictionsCompleted)]
        assert [(e.found, e.expected) for e in completed] == [(2, 2)]
        assert not [e for e in events if isinstance(e, PredictionsShort | JobFailed)]
        rows = await host.match_predictions(app.engine, MATCH)
        assert {(r.model_id, r.status) for r in rows} == {("m1", "scored"), ("m2", "scored")}


async def test_a_model_enabled_mid_run_that_nobody_predicts_fails_the_run_once(
    backend: Backend,
) -> None:
    await host_with_one_gap(backend.database_url)
    async with App(settings_for(backend)) as app:
        (run_id,) = (await commands.start(app, days=14, now=utcnow())).seeded
        # m4 comes back while the predictions job runs; this worker does not know it.
        handlers = fixed_model_workers(
            app.engine, ("m1", "m2", "m3"), lambda: set_model(app.engine, "m4", active=True)
        )
        async with workers(app, handlers):
            await until_idle(app)
        events = await events_of(app, run_id)
        run = (await all_runs(app))[run_id]
        assert run.state is State.FAILED, [e.TYPE for e in events]
        short = [e for e in events if isinstance(e, PredictionsShort)]
        assert [(e.found, e.expected) for e in short] == [(3, 4)] * MAX_ATTEMPTS
        assert sum(isinstance(e, PredictionsRequested) for e in events) == MAX_ATTEMPTS
        assert sum(isinstance(e, RunFailed) for e in events) == 1
        assert isinstance(events[-1], RunFailed)
        assert_one_line_reason(events[-1].reason, "predictions", "3/4")
        assert run.last_error == events[-1].reason

        # Cooldown: neither start nor the scan seeds it again...
        written = await event_count(app)
        assert (await commands.start(app, days=14, now=utcnow())).seeded == []
        await Daemon(app, scan_days=14).scan()
        assert await event_count(app) == written
        # ...until the operator asks for failed matches to be reprocessed.
        (again,) = (await commands.start(app, days=14, now=utcnow(), reprocess="failed")).seeded
        assert again != run_id
        runs_now = await all_runs(app)
        assert runs_now[run_id] == run, "the failed run itself is left as it was"
        assert runs_now[again].state is State.PENDING
        assert (await commands.start(app, days=14, now=utcnow(), reprocess="failed")).seeded == []


# --- a match deleted mid-run ------------------------------------------------------------


async def fail_by_deletion(backend: Backend, how_many: int) -> list[str]:
    """Seed ``how_many`` runs, request their analysis (no worker runs), delete their
    matches, tick: every run fails with "no longer exists". Returns the run ids."""
    expect = seed_host(backend.database_url)
    doomed = sorted(m for m, kinds in expect.gaps.items() if "missing_analysis" in kinds)
    doomed = doomed[:how_many]
    assert len(doomed) == how_many
    engine = create_engine(backend.database_url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    async with App(settings_for(backend)) as app:
        await commands.start(app, days=14, now=utcnow())
        daemon = Daemon(app)
        await daemon.run_once()
        live = {r.match_id: r for r in (await all_runs(app)).values()}
        for match_id in doomed:
            assert live[match_id].state is State.ANALYZING
            assert live[match_id].job_id is not None
        async with app.engine.begin() as conn:
            for table in (predictions, match_analysis):
                await conn.execute(delete(table).where(table.c.match_id.in_(doomed)))
            await conn.execute(delete(matches).where(matches.c.id.in_(doomed)))
        await daemon.run_once()
        await daemon.run_once()
        after = {r.match_id: r for r in (await all_runs(app)).values()}
        run_ids = []
        for match_id in doomed:
            run = after[match_id]
            assert run.state is State.FAILED
            assert_one_line_reason(run.last_error, match_id, "no longer exists")
            events = await events_of(app, run.id)
            assert [type(e) for e in events[-2:]] == [AnalysisRequested, RunFailed]
            assert sum(isinstance(e, RunFailed) for e in events) == 1
            assert not [e for e in events if isinstance(e, JobFailed | RetryScheduled)]
            assert app.queues is not None
            job = await app.queues.job_view(events[-2].PHASE, live[match_id].job_id or "")
            assert job.state == "unknown", "the deleted match's waiting job must be removed"
            run_ids.append(run.id)
        assert (await commands.start(app, days=14, now=utcnow(), reprocess="all")).seeded == []
        return run_ids


async def test_a_match_deleted_mid_run_fails_its_run_once(backend: Backend) -> None:
    await fail_by_deletion(backend, 1)


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
async def test_cli_retry_output(backend: Backend, tmp_path: Path) -> None:
    first, second = await fail_by_deletion(backend, 2)
    env = backend.env()
    one = run_retro("retry", first, cwd=tmp_path, env=env)
    assert one.code == 0, one
    assert one.stdout.strip() == f"Re-armed 1 run: {first}", one
    rest = run_retro("retry", "--failed", cwd=tmp_path, env=env)
    assert rest.code == 0, rest
    assert rest.stdout.strip() == f"Re-armed 1 run: {second}", rest
    none = run_retro("retry", "--failed", cwd=tmp_path, env=env)
    assert none.code == 0, none
    assert none.stdout.strip() == "Re-armed 0 runs.", none
    refused = run_retro("retry", first, cwd=tmp_path, env=env)
    one_error_line(refused, first, "pending", "not failed")
