"""The run log and its projection on a real database (DESIGN §3, §4; STYLE 3).

``runs.append`` writes events and projection in one transaction; the projection
is exactly the fold of the events; a stale or racing append is a
``ConcurrencyError`` that writes nothing; ``due`` honours ``max_in_flight`` and
``next_check_at``; instants come back aware UTC on both backends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.events import (
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    JobFailed,
    PhaseTimedOut,
    PredictionsCompleted,
    PredictionsRequested,
    PredictionsShort,
    RetryScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRearmed,
    RunSeeded,
    SettlementRequested,
    SettlementSkipped,
    UnknownEvent,
)
from retro.machine import Run, State, Step
from retro.store import db, migrate, runs
from retro.store.runs import ConcurrencyError, LiveRunExists
from retro.store.schema import backfill_events, backfill_runs
from tests.conftest import Backend

T0 = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh database holding retro's migrated tables."""
    engine = db.create_engine(backend.database_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


def seeded(run_id: str, match_id: str, at: datetime = T0) -> RunSeeded:
    return RunSeeded(
        at=at,
        run_id=run_id,
        match_id=match_id,
        gaps=("missing_analysis", "missing_predictions"),
        found=1,
        expected=3,
    )


async def append(engine: AsyncEngine, run: Run | None, *events: Event) -> Run:
    """Append ``events`` in a transaction of their own."""
    async with engine.begin() as conn:
        return await runs.append(conn, run, events)


async def get(engine: AsyncEngine, run_id: str) -> Run:
    async with engine.connect() as conn:
        run = await runs.get(conn, run_id)
    assert run is not None
    return run


async def event_count(engine: AsyncEngine, run_id: str | None = None) -> int:
    query = select(func.count()).select_from(backfill_events)
    if run_id is not None:
        query = query.where(backfill_events.c.run_id == run_id)
    async with engine.connect() as conn:
        return int(await conn.scalar(query) or 0)


async def run_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(backfill_runs)) or 0)


async def in_analysis(engine: AsyncEngine, run_id: str, match_id: str, at: datetime = T0) -> Run:
    """A run that requested its analysis job at ``at``."""
    run = await append(engine, None, seeded(run_id, match_id, at))
    return await append(
        engine, run, AnalysisRequested(at=at, job_id=f"analyze-retro-{match_id}", attempt=1)
    )


# --- append: events and projection together --------------------------------------


async def test_append_writes_events_and_projection_in_one_transaction(
    engine: AsyncEngine,
) -> None:
    history: list[Event] = [
        seeded("r1", "m1"),
        AnalysisRequested(at=T0 + sec(1), job_id="analyze-retro-m1", attempt=1),
        JobFailed(at=T0 + sec(2), phase="analysis", reason="worker crashed"),
        RetryScheduled(at=T0 + sec(3), phase="analysis", not_before=T0 + sec(13)),
    ]
    async with engine.begin() as conn:
        run = await runs.append(conn, None, history[:1])
        run = await runs.append(conn, run, history[1:])
        # Nothing is visible outside the transaction before it commits.
        assert await event_count(engine) == 0
        assert await run_count(engine) == 0
    assert run.version == 4
    assert (run.state, run.step, run.attempt) == (State.ANALYZING, Step.BACKOFF, 1)
    assert run.next_check_at == T0 + sec(13)
    assert await get(engine, "r1") == run
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(backfill_events.c.seq, backfill_events.c.type, backfill_events.c.data)
                .where(backfill_events.c.run_id == "r1")
                .order_by(backfill_events.c.seq)
            )
        ).all()
        assert await runs.events_of(conn, "r1") == history
    assert [(seq, type_) for seq, type_, _ in rows] == [
        (1, "RunSeeded"),
        (2, "AnalysisRequested"),
        (3, "JobFailed"),
        (4, "RetryScheduled"),
    ]
    assert json.loads(rows[2][2]) == {"phase": "analysis", "reason": "worker crashed"}


async def test_rolled_back_append_leaves_neither_events_nor_projection(
    engine: AsyncEngine,
) -> None:
    run = await append(engine, None, seeded("r1", "m1"))
    with pytest.raises(RuntimeError, match="crash"):
        async with engine.begin() as conn:
            await runs.append(
                conn, run, [AnalysisRequested(at=T0, job_id="analyze-retro-m1", attempt=1)]
            )
            raise RuntimeError("crash before commit")
    assert await event_count(engine) == 1
    assert await get(engine, "r1") == run


async def test_replay_equals_stored_projection_for_every_run(engine: AsyncEngine) -> None:
    t = T0
    # done: analysis skipped, predictions short then complete, settlement skipped.
    done = await append(engine, None, seeded("done", "m1", t))
    await append(
        engine,
        done,
        AnalysisSkipped(at=t + sec(1), reason="present"),
        PredictionsRequested(at=t + sec(2), job_id="predict-retro-m1", attempt=1),
        PredictionsShort(at=t + sec(3), found=2, expected=3),
        RetryScheduled(at=t + sec(4), phase="predictions", not_before=t + sec(9)),
        PredictionsRequested(at=t + sec(9), job_id="predict-retro-m1", attempt=2),
        PredictionsCompleted(at=t + sec(10), found=3, expected=3),
        SettlementSkipped(at=t + sec(11), reason="match not finished"),
        RunCompleted(at=t + sec(12)),
    )
    # failed, then re-armed by an operator and back in analysis.
    rearmed = await in_analysis(engine, "rearmed", "m2", t)
    rearmed = await append(
        engine,
        rearmed,
        JobFailed(at=t + sec(5), phase="analysis", reason="quota"),
        RunFailed(at=t + sec(6), reason="analysis failed 1 times"),
    )
    await append(
        engine,
        rearmed,
        RunRearmed(at=t + sec(7)),
        AnalysisRequested(at=t + sec(8), job_id="analyze-retro-m2", attempt=1),
    )
    # cancelled in settlement.
    cancelled = await append(engine, None, seeded("cancelled", "m3", t + sec(1)))
    await append(
        engine,
        cancelled,
        AnalysisSkipped(at=t + sec(2), reason="present"),
        PredictionsCompleted(at=t + sec(3), found=3, expected=3),
        SettlementRequested(at=t + sec(4), job_id="settle-retro-m3", attempt=1),
        RunCancelled(at=t + sec(5), reason="match postponed"),
    )
    # analysis completed, still predicting; and one just seeded.
    predicting = await in_analysis(engine, "predicting", "m4", t + sec(2))
    await append(engine, predicting, AnalysisCompleted(at=t + sec(3)))
    await append(engine, None, seeded("pending", "m5", t + sec(3)))

    async with engine.connect() as conn:
        ids = await runs.all_ids(conn)
        assert ids == ["done", "rearmed", "cancelled", "predicting", "pending"]
        for run_id in ids:
            stored = await runs.get(conn, run_id)
            assert stored is not None
            assert await runs.replay(conn, run_id) == stored, run_id
            assert stored.version == await event_count(engine, run_id)
    states = {run_id: (await get(engine, run_id)).state for run_id in ids}
    assert states == {
        "done": State.DONE,
        "rearmed": State.ANALYZING,
        "cancelled": State.CANCELLED,
        "predicting": State.PREDICTING,
        "pending": State.PENDING,
    }


# --- optimistic concurrency ---------------------------------------------------------


async def test_stale_run_raises_and_writes_nothing(engine: AsyncEngine) -> None:
    stale = await in_analysis(engine, "r1", "m1")
    fresh = await append(engine, stale, JobFailed(at=T0 + sec(5), phase="analysis", reason="boom"))
    events_before = await event_count(engine)
    with pytest.raises(ConcurrencyError):
        await append(engine, stale, AnalysisCompleted(at=T0 + sec(6)))
    with pytest.raises(ConcurrencyError):
        await append(
            engine,
            stale,
            AnalysisCompleted(at=T0 + sec(6)),
            PredictionsRequested(at=T0 + sec(6), job_id="predict-retro-m1", attempt=1),
        )
    assert await event_count(engine) == events_before
    assert await get(engine, "r1") == fresh
    async with engine.connect() as conn:
        assert await runs.replay(conn, "r1") == fresh
    # The up-to-date projection still appends.
    moved = await append(
        engine, fresh, RetryScheduled(at=T0 + sec(7), phase="analysis", not_before=T0 + sec(9))
    )
    assert moved.version == fresh.version + 1


async def test_two_appends_on_one_version_one_wins(engine: AsyncEngine) -> None:
    """Two daemons decided on the same version: the second append is a lost race."""
    base = await in_analysis(engine, "r1", "m1")
    winner_event = AnalysisCompleted(at=T0 + sec(5))
    loser_event = JobFailed(at=T0 + sec(5), phase="analysis", reason="timed out")

    async def loser() -> Run:
        async with engine.begin() as conn:
            return await runs.append(conn, base, [loser_event])

    async with engine.begin() as conn:
        won = await runs.append(conn, base, [winner_event])
        # The rival's transaction starts while ours is open, then waits on our lock.
        rival = asyncio.create_task(loser())
        await asyncio.sleep(0.3)
    with pytest.raises(ConcurrencyError):
        await asyncio.wait_for(rival, timeout=20)

    assert await get(engine, "r1") == won
    assert won.state is State.PREDICTING
    async with engine.connect() as conn:
        events = await runs.events_of(conn, "r1")
        assert events[-1] == winner_event
        assert await runs.replay(conn, "r1") == won
    assert await event_count(engine) == base.version + 1
    # Sequential variant: the rival tries again later with the same stale base.
    with pytest.raises(ConcurrencyError):
        await append(engine, base, loser_event)
    assert await event_count(engine) == base.version + 1


async def test_one_live_run_per_match(engine: AsyncEngine) -> None:
    first = await append(engine, None, seeded("r1", "m1"))
    with pytest.raises(LiveRunExists):  # its own error, not a lost race
        await append(engine, None, seeded("r2", "m1", T0 + sec(1)))
    assert await event_count(engine) == 1
    assert await run_count(engine) == 1
    # Another match is free; the same run id cannot be seeded twice.
    await append(engine, None, seeded("r3", "m2"))
    with pytest.raises(ConcurrencyError):
        await append(engine, None, seeded("r1", "m9"))
    # Once the first run has finished, the match can be seeded again.
    await append(engine, first, RunCancelled(at=T0 + sec(2), reason="operator"))
    second = await append(engine, None, seeded("r2", "m1", T0 + sec(3)))
    assert second.state is State.PENDING
    assert await get(engine, "r2") == second
    assert (await get(engine, "r1")).finished_at == T0 + sec(2)


# --- due runs ----------------------------------------------------------------------


async def test_due_keeps_pending_runs_out_while_the_cap_is_full(engine: AsyncEngine) -> None:
    now = T0 + timedelta(minutes=10)
    await append(engine, None, seeded("p1", "m1", T0))
    await append(engine, None, seeded("p2", "m2", T0 + sec(1)))
    await in_analysis(engine, "busy", "m3", T0 + sec(2))
    async with engine.connect() as conn:
        assert await runs.count_in_flight(conn) == 1
        due = await runs.due(conn, now=now, max_in_flight=1)
        assert due.in_flight == ["busy"]
        assert due.pending == []
        due = await runs.due(conn, now=now, max_in_flight=2)
        assert due.in_flight == ["busy"]
        assert due.pending == ["p1"]
    # Over the cap (it was lowered while runs were in flight): still no pending run.
    await in_analysis(engine, "busy2", "m4", T0 + sec(3))
    async with engine.connect() as conn:
        due = await runs.due(conn, now=now, max_in_flight=1)
        assert due.in_flight == ["busy", "busy2"]
        assert due.pending == []


async def test_due_returns_oldest_pending_within_free_slots(engine: AsyncEngine) -> None:
    now = T0 + timedelta(minutes=10)
    # Seeded out of order; one was seeded "after now" (a wall clock that since went
    # back): a pending run waits only for a slot, so it is due too, last.
    await append(engine, None, seeded("p3", "m3", T0 + sec(30)))
    await append(engine, None, seeded("p1", "m1", T0 + sec(10)))
    await append(engine, None, seeded("future", "m9", now + sec(1)))
    await append(engine, None, seeded("p2", "m2", T0 + sec(20)))
    done = await in_analysis(engine, "done", "m4", T0)
    await append(engine, done, RunCancelled(at=T0 + sec(1), reason="operator"))
    async with engine.connect() as conn:
        assert await runs.count_in_flight(conn) == 0
        due = await runs.due(conn, now=now, max_in_flight=2)
        assert due.in_flight == []
        assert due.pending == ["p1", "p2"]
        assert (await runs.due(conn, now=now, max_in_flight=1)).pending == ["p1"]
        everything = ["p1", "p2", "p3", "future"]
        assert (await runs.due(conn, now=now, max_in_flight=10)).pending == everything
        assert (await runs.due(conn, now=now, max_in_flight=0)).pending == []


async def test_due_waits_for_a_backoff_until_not_before(engine: AsyncEngine) -> None:
    run = await in_analysis(engine, "backoff", "m1", T0)
    not_before = T0 + sec(40)
    run = await append(
        engine,
        run,
        JobFailed(at=T0 + sec(10), phase="analysis", reason="quota"),
        RetryScheduled(at=T0 + sec(10), phase="analysis", not_before=not_before),
    )
    await append(engine, None, seeded("p1", "m2", T0))
    assert run.next_check_at == not_before
    async with engine.connect() as conn:
        early = await runs.due(conn, now=not_before - sec(1), max_in_flight=1)
        assert early.in_flight == early.resuming == []
        assert early.pending == ["p1"]  # a back-off holds no slot (issue 10)
        on_time = await runs.due(conn, now=not_before, max_in_flight=1)
        assert on_time.in_flight == []
        assert on_time.resuming == ["backoff"]  # over: it takes the slot before p1
        assert on_time.pending == []
        both = await runs.due(conn, now=not_before, max_in_flight=2)
        assert (both.resuming, both.pending) == (["backoff"], ["p1"])


async def test_a_wall_clock_that_went_back_holds_no_run(engine: AsyncEngine) -> None:
    # Runs last changed at T0 + 1 h; the clock then went back by an hour.
    later = T0 + timedelta(hours=1)
    waiting = await in_analysis(engine, "job", "m1", later)
    backing = await in_analysis(engine, "backoff", "m2", later)
    await append(
        engine,
        backing,
        JobFailed(at=later, phase="analysis", reason="quota"),
        RetryScheduled(at=later, phase="analysis", not_before=later + sec(5)),
    )
    assert waiting.next_check_at == later
    async with engine.connect() as conn:
        due = await runs.due(conn, now=T0, max_in_flight=2)
        # A run with a job outstanding is looked at whatever its next_check_at, and
        # a back-off ending further ahead than its 5 s could reach is over.
        assert (due.in_flight, due.resuming) == (["job"], ["backoff"])
        # Within its reach, the back-off is still honoured.
        due = await runs.due(conn, now=later + sec(1), max_in_flight=2)
        assert (due.in_flight, due.resuming) == (["job"], [])


# --- slots: held by work, not by waiting (issue 10) -------------------------------


async def in_backoff(
    engine: AsyncEngine, run_id: str, match_id: str, at: datetime, not_before: datetime
) -> Run:
    """A run whose analysis job failed at ``at``; its retry is due at ``not_before``."""
    run = await in_analysis(engine, run_id, match_id, at)
    return await append(
        engine,
        run,
        JobFailed(at=at, phase="analysis", reason="quota"),
        RetryScheduled(at=at, phase="analysis", not_before=not_before),
    )


async def test_a_slot_is_held_by_work_not_by_a_backoff(engine: AsyncEngine) -> None:
    now = T0 + timedelta(minutes=10)
    # One run in every place a run can stand, and whether it holds a slot, written
    # out by hand from the rule: a job requested, queued or active, a job being
    # judged, or a settlement finishing, holds one; pending, entering a phase (no
    # job yet: it rests there only while its backfill is paused), back-off and the
    # terminal states do not.
    expected: dict[str, bool] = {}
    await append(engine, None, seeded("pending", "m0", T0))
    expected["pending"] = False
    await in_analysis(engine, "job", "m1", T0)
    expected["job"] = True
    failed = await in_analysis(engine, "failed", "m2", T0)
    await append(engine, failed, JobFailed(at=T0, phase="analysis", reason="quota"))
    expected["failed"] = True  # judged, its retry not yet scheduled: still working
    await in_backoff(engine, "backoff", "m3", now, now + sec(3))
    expected["backoff"] = False
    await in_backoff(engine, "backoff-due", "m4", T0, now - sec(1))
    expected["backoff-due"] = False
    entering = await in_analysis(engine, "entering", "m5", T0)
    await append(engine, entering, AnalysisCompleted(at=T0))
    expected["entering"] = False
    settling = await in_analysis(engine, "finishing", "m6", T0)
    settling = await append(
        engine,
        settling,
        AnalysisCompleted(at=T0),
        PredictionsRequested(at=T0, job_id="predict-retro-m6", attempt=1),
        PredictionsCompleted(at=T0, found=3, expected=3),
        SettlementRequested(at=T0, job_id="settle-retro-m6", attempt=1),
        SettlementSkipped(at=T0, reason="not played yet"),
    )
    expected["finishing"] = True
    done = await in_analysis(engine, "cancelled", "m7", T0)
    await append(engine, done, RunCancelled(at=T0, reason="operator"))
    expected["cancelled"] = False
    async with engine.connect() as conn:
        stored = await runs.list_runs(conn)
        steps = {run.id: (run.state, run.step) for run in stored}
        assert steps["entering"] == (State.PREDICTING, Step.ENTER)
        assert steps["finishing"] == (State.SETTLING, Step.FINISHED)
        assert steps["failed"] == (State.ANALYZING, Step.FAILED)
        assert {run.id: run.holds_slot for run in stored} == expected
        holders = sum(expected.values())
        assert await runs.count_holding(conn) == holders  # the SQL twin agrees
        assert await runs.count_in_flight(conn) == holders + 3  # plus back-offs, entering
        due = await runs.due(conn, now=now, max_in_flight=holders + 3)
        assert sorted(due.in_flight) == sorted(r for r, held in expected.items() if held)
        # the due back-off and the entering run, by next_check_at; the other sleeps on
        assert sorted(due.resuming) == ["backoff-due", "entering"]
        assert due.pending == ["pending"]
        assert (await runs.due(conn, now=now, max_in_flight=holders + 2)).pending == []
        assert (await runs.due(conn, now=now, max_in_flight=holders)).resuming == []
        assert await runs.slot_free(conn, holders + 1)
        assert not await runs.slot_free(conn, holders)


async def test_a_timed_out_backoff_keeps_its_slot(engine: AsyncEngine) -> None:
    """A back-off after a timeout holds its slot (BullMQ may still run the job
    judged), whether its retry is due or not, and is never offered a free one;
    a back-off after a failure does not and is."""
    now = T0 + timedelta(minutes=10)
    for run_id, match_id, not_before in (("asleep", "m1", now + sec(3)), ("due", "m2", now)):
        run = await in_analysis(engine, run_id, match_id, T0)
        run = await append(
            engine,
            run,
            PhaseTimedOut(at=T0, phase="analysis", budget=60),
            RetryScheduled(at=T0, phase="analysis", not_before=not_before),
        )
        assert (run.step, run.timed_out, run.job_id) == (Step.BACKOFF, True, None)
    await in_backoff(engine, "failed", "m3", T0, now - sec(1))
    await append(engine, None, seeded("pending", "m4", T0))
    async with engine.connect() as conn:
        stored = {run.id: run for run in await runs.list_runs(conn)}
        assert {r: run.holds_slot for r, run in stored.items()} == {
            "asleep": True,
            "due": True,
            "failed": False,
            "pending": False,
        }
        assert await runs.count_holding(conn) == 2  # the SQL twin agrees
        assert not await runs.slot_free(conn, 2)
        assert await runs.starters(conn, now=now, limit=10) == ["failed", "pending"]
        due = await runs.due(conn, now=now, max_in_flight=2)
        assert (sorted(due.in_flight), due.resuming, due.pending) == (["asleep", "due"], [], [])
        due = await runs.due(conn, now=now, max_in_flight=3)
        assert (due.resuming, due.pending) == (["failed"], [])
    # Its retry adopts the job (same id) and clears the mark: it holds the slot by its job.
    retried = await append(
        engine,
        stored["due"],
        AnalysisRequested(at=now, job_id="analyze-retro-m2", attempt=2),
    )
    assert (retried.step, retried.timed_out) == (Step.JOB, False)
    assert retried.holds_slot
    async with engine.connect() as conn:
        assert await runs.get(conn, "due") == retried
        assert (await runs.audit(conn)).ok


async def test_a_due_backoff_takes_a_slot_before_older_pending_runs(engine: AsyncEngine) -> None:
    now = T0 + timedelta(minutes=10)
    await append(engine, None, seeded("p-old", "m1", T0 - timedelta(hours=1)))
    await append(engine, None, seeded("p-new", "m2", T0))
    await in_backoff(engine, "late", "m3", T0, now - sec(1))
    await in_backoff(engine, "early", "m4", T0, now - sec(5))
    await in_backoff(engine, "asleep", "m5", now, now + sec(3))
    async with engine.connect() as conn:
        order = await runs.starters(conn, now=now, limit=10)
        assert order == ["early", "late", "p-old", "p-new"]
        for limit in range(len(order) + 1):
            assert await runs.starters(conn, now=now, limit=limit) == order[:limit]
        due = await runs.due(conn, now=now, max_in_flight=3)
        assert (due.in_flight, due.resuming, due.pending) == ([], ["early", "late"], ["p-old"])


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_a_backoff_and_a_pending_run_cannot_both_take_the_last_slot(
    engine: AsyncEngine, backend: Backend
) -> None:
    """Rival daemons (PostgreSQL only: SQLite has one writer, DESIGN §4): each takes
    the slot check and its first event in one transaction under the advisory lock,
    so the second one sees the first."""
    assert engine.dialect.name == "postgresql"
    now = T0 + timedelta(minutes=10)
    waking = await in_backoff(engine, "waking", "m1", T0, now - sec(1))
    starting = await append(engine, None, seeded("starting", "m2", T0))
    first_checked = asyncio.Event()
    taken: list[str] = []

    async def take(run: Run, event: Event, *, hold: bool) -> None:
        async with engine.begin() as conn:
            if not await runs.slot_free(conn, 1):
                return
            if hold:  # keep the lock while the rival asks for it
                first_checked.set()
                await asyncio.sleep(0.3)
            await runs.append(conn, run, [event])
            taken.append(run.id)

    async def second() -> None:
        await asyncio.wait_for(first_checked.wait(), 10)
        await take(
            starting,
            AnalysisRequested(at=now, job_id="analyze-retro-m2", attempt=1),
            hold=False,
        )

    await asyncio.wait_for(
        asyncio.gather(
            take(
                waking,
                AnalysisRequested(at=now, job_id="analyze-retro-m1", attempt=2),
                hold=True,
            ),
            second(),
        ),
        10,
    )
    assert taken == ["waking"]
    async with engine.connect() as conn:
        assert await runs.count_holding(conn) == 1
        assert (await runs.get(conn, "starting")).state is State.PENDING  # type: ignore[union-attr]


# --- stored instants and unknown events -------------------------------------------


async def test_datetimes_round_trip_as_aware_utc(engine: AsyncEngine) -> None:
    cest = timezone(timedelta(hours=2))
    seeded_at = datetime(2025, 5, 20, 21, 0, 0, 123456, tzinfo=cest)  # 19:00:00.123456Z
    run = await append(engine, None, seeded("r1", "m1", seeded_at))
    requested_at = datetime(2025, 5, 20, 19, 0, 5, 1, tzinfo=UTC)
    run = await append(
        engine, run, AnalysisRequested(at=requested_at, job_id="analyze-retro-m1", attempt=1)
    )
    not_before = datetime(2025, 5, 20, 19, 1, 0, 999999, tzinfo=UTC)
    await append(
        engine,
        run,
        JobFailed(at=requested_at + sec(1), phase="analysis", reason="x"),
        RetryScheduled(at=requested_at + sec(1), phase="analysis", not_before=not_before),
    )
    stored = await get(engine, "r1")
    instants = {
        "created_at": stored.created_at,
        "updated_at": stored.updated_at,
        "not_before": stored.not_before,
        "next_check_at": stored.next_check_at,
    }
    for name, value in instants.items():
        assert value is not None, name
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0), name
    assert stored.created_at == datetime(2025, 5, 20, 19, 0, 0, 123456, tzinfo=UTC)
    assert stored.created_at.tzinfo is UTC
    assert stored.updated_at == requested_at + sec(1)
    assert stored.not_before == not_before
    assert stored.next_check_at == not_before
    async with engine.connect() as conn:
        events = await runs.events_of(conn, "r1")
        assert [e.at for e in events] == [
            seeded_at,
            requested_at,
            requested_at + sec(1),
            requested_at + sec(1),
        ]
        assert all(e.at.utcoffset() == timedelta(0) for e in events)
        assert isinstance(events[-1], RetryScheduled)
        assert events[-1].not_before == not_before
        assert await runs.replay(conn, "r1") == stored
        # A naive instant is refused, never stored as if it were UTC.
        with pytest.raises(StatementError, match="naive"):
            await conn.execute(
                insert(backfill_events).values(
                    run_id="r1", seq=99, type="RunCompleted", data="{}", at=datetime(2025, 1, 1)
                )
            )


async def test_unknown_event_type_raises_and_changes_nothing(engine: AsyncEngine) -> None:
    run = await in_analysis(engine, "r1", "m1")
    async with engine.begin() as conn:
        await conn.execute(
            insert(backfill_events).values(
                run_id="r1",
                seq=run.version + 1,
                type="AnalysisTeleported",
                data=json.dumps({"where": "mars"}),
                at=T0 + sec(5),
            )
        )
    events_before = await event_count(engine)
    async with engine.connect() as conn:
        with pytest.raises(UnknownEvent, match="AnalysisTeleported"):
            await runs.events_of(conn, "r1")
        with pytest.raises(UnknownEvent):
            await runs.replay(conn, "r1")
    assert await event_count(engine) == events_before
    assert await get(engine, "r1") == run


async def test_known_event_with_unusable_data_raises_unknown_event(engine: AsyncEngine) -> None:
    run = await in_analysis(engine, "r1", "m1")
    async with engine.begin() as conn:
        await conn.execute(
            insert(backfill_events).values(
                run_id="r1", seq=run.version + 1, type="JobFailed", data="{}", at=T0 + sec(5)
            )
        )
    async with engine.connect() as conn:
        with pytest.raises(UnknownEvent, match="JobFailed"):
            await runs.events_of(conn, "r1")
    assert await get(engine, "r1") == run


async def test_append_stores_a_plans_projections_as_given(engine: AsyncEngine) -> None:
    """The tick appends a :func:`~retro.machine.plan` with the projections it
    computed: the stored run is the plan's final projection, rows are numbered by
    the plan's versions, and the replay of the log equals it (``verify`` agrees)."""
    from retro.machine import Facts, Policy, plan

    run = await append(engine, None, seeded("r9", "m9"))
    facts = Facts(
        match_found=True, match_status="scheduled", has_analysis=True, predictions_expected=3
    )
    planned = plan(run, facts, now=T0 + sec(1), policy=Policy())
    assert [e.TYPE for e in planned.events] == ["AnalysisSkipped", "PredictionsRequested"]
    async with engine.begin() as conn:
        stored = await runs.append(conn, run, planned.events, projected=planned.runs)
    assert stored == planned.final == await get(engine, "r9")
    async with engine.connect() as conn:
        assert await runs.replay(conn, "r9") == planned.final
        assert (await runs.audit(conn)).ok
        with pytest.raises(ValueError, match="one projection per event"):
            await runs.append(conn, stored, planned.events, projected=planned.runs[:1])


async def test_next_backoff_end_is_the_earliest_back_off_still_to_come(
    engine: AsyncEngine,
) -> None:
    """The daemon wakes at :func:`runs.next_backoff_end`; a back-off already over
    (its run waits for a slot) is not one, or the daemon would tick without pause."""
    now = T0 + timedelta(minutes=10)
    async with engine.connect() as conn:
        assert await runs.next_backoff_end(conn, now=now) is None
    await in_backoff(engine, "over", "m1", T0, now - sec(1))
    async with engine.connect() as conn:
        assert await runs.next_backoff_end(conn, now=now) is None
    await in_backoff(engine, "late", "m2", T0, now + sec(30))
    await in_backoff(engine, "soon", "m3", T0, now + sec(5))
    async with engine.connect() as conn:
        assert await runs.next_backoff_end(conn, now=now) == now + sec(5)
        assert await runs.next_backoff_end(conn, now=now + sec(6)) == now + sec(30)
