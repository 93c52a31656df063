"""A paused backfill starts no new job; a job already queued finishes and is judged;
the pause survives a restart and rival daemons respect it; a resume heals (issue 11).

Real database, real Redis, real BullMQ and the reference workers; BullMQ's own
lists are read straight from Redis (:mod:`tests.outstanding`), so "no new job"
is what BullMQ holds, not what retro says it did.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from rich.console import Console

from retro import backfill_commands, commands
from retro.app import App
from retro.cli.render import status_parts
from retro.events import (
    JobReenqueued,
    Phase,
    PhaseTimedOut,
    Requested,
    RetryScheduled,
    RunFailed,
)
from retro.machine import State, Step
from retro.report import status_json
from retro.scheduler import Daemon
from retro.store import backfills, runs
from tests.conftest import Backend, eventually
from tests.e2e.clirunner import invoke_retro
from tests.healing import DEMO_NOW, assert_healed, seed_outage
from tests.integration.test_recovery import (
    events_of,
    get_run,
    make_host,
    now,
    settings_for,
    wipe_prefix,
    workers,
)
from tests.outstanding import Sampler, outstanding, queue_names

HELD = "is paused: 3 live runs held"


async def cli(backend: Backend, cwd: Path, *args: str) -> str:
    """``retro ARGS`` in this process (in a thread: the CLI runs its own event loop)
    on ``backend``; its stdout (exit 0 asserted)."""
    result = await asyncio.to_thread(invoke_retro, *args, cwd=cwd, env=backend.env())
    assert result.code == 0, result
    return result.stdout


async def starts_since(app: App, run_ids: list[str], since: datetime) -> list[tuple[str, str]]:
    """(run id, event type) of every job request or re-enqueue at or after ``since``."""
    found = []
    for run_id in run_ids:
        for event in await events_of(app, run_id):
            if isinstance(event, Requested | JobReenqueued) and event.at >= since:
                found.append((run_id, event.TYPE))
    return found


async def test_a_paused_backfill_starts_no_job_across_a_restart_and_heals_when_resumed(
    backend: Backend, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """``retro pause`` and ``retro resume`` (the CLI, in-process) around a daemon
    restart: while paused, the two jobs already queued finish and are judged and
    nothing else starts, before and after the restart; resumed, everything heals
    within the cap."""
    caplog.set_level(logging.INFO, logger="retro")
    await make_host(backend, match_ids=("M1", "M2", "M3"), predictions=0)
    settings = settings_for(backend, max_in_flight=2)
    redis = Redis.from_url(backend.redis_url)
    names = queue_names(settings)
    try:
        async with App(settings) as app:
            seeded = (await commands.start(app, days=14, now=now(), label="INC-1")).seeded
            await app.tick(now=now())
            queued = [r for r in seeded if (await get_run(app, r)).step is Step.JOB]
            (waiting,) = [r for r in seeded if r not in queued]  # the cap is 2
            assert len(await outstanding(redis, backend.prefix, names)) == 2

            said = await cli(backend, tmp_path, "pause", "--backfill", "INC-1", "--json")
            paused = json.loads(said)
            assert paused["changed"] and paused["backfill"]["paused"]
            paused_at = now()
            async with workers(backend):  # the two queued jobs finish and are judged

                async def judged() -> bool:
                    await app.tick(now=now())
                    types = [[e.TYPE for e in await events_of(app, r)] for r in queued]
                    return all("PredictionsCompleted" in t for t in types)

                await eventually(judged)
                for _ in range(3):
                    assert (await app.tick(now=now())).events == []
                for run_id in queued:  # they rest at the next phase, holding no slot
                    run = await get_run(app, run_id)
                    assert (run.state, run.step, run.holds_slot) == ("settling", "enter", False)
                assert (await get_run(app, waiting)).state == "pending"
                assert await outstanding(redis, backend.prefix, names) == {}
            assert await starts_since(app, seeded, paused_at) == []
            assert await app.idle()  # nothing moves until a resume: --until-idle ends
            status = await commands.status(app, now=now())
            assert {item.run.id for item in status.held} == set(queued)
            assert status.holding == []
            document = status_json(status, now=now())
            assert {i["run_id"]: i["held"] for i in document["in_flight"]} == dict.fromkeys(
                queued, "backfill paused"
            )
            assert [b["paused"] for b in document["backfills"]] == [True]
            console = Console(record=True, width=160)
            for part in status_parts(status, now=now()):
                console.print(part)
            text = console.export_text()
            assert "Held: backfill paused" in text
            assert all(run_id in text for run_id in queued)
            (live,) = status.backfills
            assert (live.state, live.tally.live, live.tally.finished) == ("paused", 3, 0)

        restarted_at = now()
        async with App(settings) as app:  # a restart: the pause is in the database
            daemon = Daemon(app)
            await asyncio.wait_for(
                daemon.run(until_idle=True, scan=False, handle_signals=False), 10
            )
            for _ in range(2):
                assert (await app.tick(now=now())).events == []
            assert await starts_since(app, seeded, restarted_at) == []
            assert await outstanding(redis, backend.prefix, names) == {}

            resumed = await cli(backend, tmp_path, "resume", "--backfill", "INC-1")
            assert "Resumed backfill" in resumed and "3 live runs go on" in resumed
            sampler = Sampler(redis, backend.prefix, names)
            sampling = asyncio.create_task(sampler.run(limit=60))
            try:
                async with workers(backend):
                    await asyncio.wait_for(
                        Daemon(app).run(until_idle=True, scan=False, handle_signals=False), 40
                    )
            finally:
                sampler.stop()
                await asyncio.wait_for(sampling, 10)
            assert 1 <= sampler.peak <= 2  # resumed runs took free slots, within the cap
            async with app.engine.connect() as conn:
                assert await runs.counts_by_state(conn) == {"done": 3}
                assert (await runs.audit(conn)).ok
            (done,) = (await backfill_commands.listing(app, now=now())).summaries
            assert (done.state, done.progress.percent_finished) == ("finished", 100.0)
    finally:
        await redis.aclose()
    said = [r.getMessage() for r in caplog.records if HELD in r.getMessage()]
    assert len(said) == 2, said  # once per daemon (before and after the restart), not per tick
    assert sum("is no longer paused" in r.getMessage() for r in caplog.records) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_rival_daemons_respect_a_pause(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Two daemons on one PostgreSQL, ``max_in_flight`` 3, two backfills. ``INC-A``
    is paused while its first three jobs wait in BullMQ: from the pause on, no job
    request of its runs is committed by either daemon (its start events after are
    those before), and BullMQ, sampled from Redis, never holds a job of its
    matches that was not requested before the pause; the jobs queued then finish
    and are judged, while ``INC-B`` heals. Resumed, ``INC-A`` heals too."""
    caplog.set_level(logging.INFO, logger="retro")
    await seed_outage(backend.database_url, ["en.1"])
    settings = settings_for(backend, max_in_flight=3, tick_interval=0.05)
    redis = Redis.from_url(backend.redis_url)
    names = queue_names(settings)
    sampler = Sampler(redis, backend.prefix, names, interval=0.002)
    sampling = asyncio.create_task(sampler.run(limit=120))
    try:
        async with App(settings) as a, App(settings) as b:
            first = await commands.start(a, days=7, now=now(), until=DEMO_NOW, label="INC-A")
            second = await commands.start(a, days=14, now=now(), until=DEMO_NOW, label="INC-B")
            inc_a, inc_b = first.seeded, second.seeded
            assert len(inc_a) >= 4 and len(inc_b) >= 2, (len(inc_a), len(inc_b))
            daemons = [Daemon(a), Daemon(b)]
            tasks = [
                asyncio.create_task(d.run(until_idle=True, scan=False, handle_signals=False))
                for d in daemons
            ]
            try:

                async def three_queued() -> bool:
                    async with a.engine.connect() as conn:
                        return await runs.count_holding(conn) == 3

                await eventually(three_queued)  # no worker yet: INC-A's oldest three wait
                await backfill_commands.pause(a, "INC-A", now=now())
                before = await start_events(a, inc_a)
                with_job = {r for r in inc_a if (await get_run(a, r)).step is Step.JOB}
                assert len(with_job) == 3
                async with workers(backend):
                    done, _ = await asyncio.wait(tasks, timeout=60)
                    assert len(done) == 2, "the daemons did not go idle within 60 s"
            finally:
                for daemon in daemons:
                    daemon.stop()
                await asyncio.wait_for(asyncio.gather(*tasks), 15)
            assert await start_events(a, inc_a) == before  # nothing requested since
            allowed = {job_id for (_, _, job_id) in before}
            theirs = {
                a.policy.job_id(phase, (await get_run(a, r)).match_id)
                for r in inc_a
                for phase in Phase
            }
            assert sampler.seen & theirs, "INC-A's queued jobs were never seen in BullMQ"
            assert sampler.seen & theirs <= allowed, (sampler.seen & theirs) - allowed
            for run_id in inc_a:  # the queued jobs were judged; nothing else moved
                run = await get_run(a, run_id)
                assert run.step is not Step.JOB and not run.holds_slot
                assert (run.state != "pending") is (run_id in with_job)
            async with a.engine.connect() as conn:
                counts = await runs.counts_by_state(conn, backfill_id=second.backfill.id)
            assert counts == {"done": len(inc_b)}

            await backfill_commands.resume(b, "INC-A", now=now())
            async with workers(backend):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            Daemon(app).run(until_idle=True, scan=False, handle_signals=False)
                            for app in (a, b)
                        )
                    ),
                    60,
                )
    finally:
        sampler.stop()
        await asyncio.wait_for(sampling, 10)
        await redis.aclose()
    assert sampler.peak <= 3
    counts = await assert_healed(backend.database_url)
    assert counts == {"done": len(inc_a) + len(inc_b)}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def start_events(app: App, run_ids: list[str]) -> set[tuple[str, int, str]]:
    """(run id, seq, job id) of every job request or re-enqueue of ``run_ids``."""
    found = set()
    async with app.engine.connect() as conn:
        for run_id in run_ids:
            for row in await runs.event_rows(conn, run_id):
                if row.type.endswith("Requested") or row.type == "JobReenqueued":
                    found.add((run_id, row.seq, str(row.data["job_id"])))
    return found


async def test_paused_runs_that_only_a_new_job_moves_leave_the_daemon_idle(
    backend: Backend,
) -> None:
    """Two runs of a paused backfill hold a ``max_in_flight`` slot but can go on only
    by starting a job: one whose job vanished from BullMQ (a Redis restart: its
    re-enqueue waits for the resume), one whose back-off after a timeout is over
    (its retry waits). Nothing moves them until a resume, so ``run --until-idle``
    ends (it waited for them for ever) and starts nothing; resumed, each starts its
    job."""
    await make_host(backend, match_ids=("M1", "M2"), analysis=False)
    async with App(settings_for(backend, max_in_flight=2)) as app:
        seeded = (await commands.start(app, days=14, now=now(), label="INC-7")).seeded
        await app.tick(now=now())
        lost, timed = seeded
        async with app.engine.begin() as conn:  # judged timed out; its back-off is over
            run = await runs.get(conn, timed)
            assert run is not None and run.step is Step.JOB
            at = now()
            await runs.append(
                conn,
                run,
                [
                    PhaseTimedOut(at=at, phase="analysis", budget=1.0),
                    RetryScheduled(at=at, phase="analysis", not_before=at),
                ],
            )
        await backfill_commands.pause(app, "INC-7", now=now())
        await wipe_prefix(app.redis_url, backend.prefix)  # the lost run's job is gone
        before = await start_events(app, seeded)

        await asyncio.wait_for(
            Daemon(app).run(until_idle=True, scan=False, handle_signals=False), 5
        )
        assert await start_events(app, seeded) == before
        assert [(await get_run(app, r)).step for r in (lost, timed)] == [Step.JOB, Step.BACKOFF]

        await backfill_commands.resume(app, "INC-7", now=now())
        report = await app.tick(now=now())
        assert sorted((r, e.TYPE) for r, e in report.events) == sorted(
            [(lost, "JobReenqueued"), (timed, "AnalysisRequested")]
        )
        assert not await app.idle()


async def test_a_cancel_that_stops_partway_leaves_the_rest_held_and_final(
    backend: Backend,
) -> None:
    """``cancel --backfill`` marks the backfill cancelled before it cancels each run;
    stopped right after that mark (Ctrl-C, Redis gone), the runs it did not reach
    start no job (a cancel pauses), and a second cancel ends them. A cancelled
    backfill stays final: a failed run of it is not re-armed, by id or by --failed."""
    await make_host(backend, match_ids=("M1", "M2", "M3"), analysis=False)
    async with App(settings_for(backend, max_in_flight=3)) as app:
        seeded = (await commands.start(app, days=14, now=now(), label="INC-8")).seeded
        failed, *live = seeded
        async with app.engine.begin() as conn:
            run = await runs.get(conn, failed)
            assert run is not None
            await runs.append(conn, run, [RunFailed(at=now(), reason="gave up")])
            await backfills.set_cancelled(conn, run.backfill_id, now())  # then it stops
        report = await app.tick(now=now())
        assert not [e for _, e in report.events if isinstance(e, Requested | JobReenqueued)]
        assert await start_events(app, live) == set()

        done = await backfill_commands.cancel(app, "INC-8", now=now())
        assert sorted(c.run.id for c in done.report.cancelled) == sorted(live)
        with pytest.raises(commands.RetryRefused, match="was cancelled"):
            await commands.retry(app, [failed], failed=False, now=now())
        assert await commands.retry(app, [], failed=True, now=now()) == []
        assert (await get_run(app, failed)).state is State.FAILED
