"""The backfill read model on a real database (issue 11): each backfill's runs by
state (one ``GROUP BY``), its progress (finished out of seeded, 100 % exactly when
no run is live) and ETA from its own runs' hand-offs, what ``ID|LABEL`` names,
and the pause flag, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.backfill import Backfill, BackfillState, Tally, percent_finished
from retro.events import (
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    PredictionsCompleted,
    PredictionsRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunSeeded,
    SettlementCompleted,
    SettlementRequested,
)
from retro.machine import Run
from retro.progress import HANDOFFS_LEFT, measure, summaries
from retro.store import backfills, db, migrate, runs
from tests.conftest import Backend

T0 = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)
NOW = T0 + timedelta(minutes=5)


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(backend.database_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


def backfill(backfill_id: str, label: str, minutes: int = 0) -> Backfill:
    return Backfill(
        id=backfill_id,
        label=label,
        window_from=T0 - timedelta(days=14),
        window_to=T0,
        created_at=T0 + timedelta(minutes=minutes),
        created_by="alice",
        options={"reprocess": "missing", "days": 14},
        gap_counts={"missing_analysis": 1},
    )


async def seed(engine: AsyncEngine, owner: Backfill, run_id: str, *events: Event) -> Run:
    """A run of ``owner`` (created with its first run), then ``events``."""
    async with engine.begin() as conn:
        if await backfills.get(conn, owner.id) is None:
            await backfills.create(conn, owner)
        run = await runs.append(
            conn,
            None,
            [
                RunSeeded(
                    at=T0,
                    run_id=run_id,
                    match_id=f"m-{run_id}",
                    gaps=("missing_analysis",),
                    found=0,
                    expected=3,
                    backfill_id=owner.id,
                )
            ],
        )
        if events:
            run = await runs.append(conn, run, list(events))
        return run


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def healed(m: str) -> list[Event]:
    """A whole heal: three hand-offs (at minutes 1, 2, 3) and the end."""
    return [
        AnalysisSkipped(at=at(1), reason="present"),
        PredictionsRequested(at=at(1), job_id=f"predict-retro-{m}", attempt=1),
        PredictionsCompleted(at=at(2), found=3, expected=3),
        SettlementRequested(at=at(2), job_id=f"settle-retro-{m}", attempt=1),
        SettlementCompleted(at=at(3)),
        RunCompleted(at=at(3)),
    ]


async def two_backfills(engine: AsyncEngine) -> tuple[Backfill, Backfill]:
    """``inc`` (done, failed, pending) and ``other`` (cancelled, analyzing)."""
    inc, other = backfill("aaaaaa111111", "INC-123", 0), backfill("aaaaaa222222", "other", 1)
    await seed(engine, inc, "r-done", *healed("m-r-done"))
    await seed(engine, inc, "r-failed", RunFailed(at=at(1), reason="boom"))
    await seed(engine, inc, "r-pending")
    await seed(engine, other, "r-cancelled", RunCancelled(at=at(1), reason="operator"))
    await seed(
        engine, other, "r-analyzing", AnalysisRequested(at=at(4), job_id="a-retro-m", attempt=1)
    )
    return inc, other


async def test_each_backfill_is_tallied_and_measured_from_its_own_runs(
    engine: AsyncEngine,
) -> None:
    inc, other = await two_backfills(engine)
    async with engine.connect() as conn:
        tallies = await backfills.tallies(conn)
        found = {s.backfill.id: s for s in await summaries(conn, now=NOW, window=600)}
        alone = await summaries(conn, now=NOW, window=600, backfill_id=inc.id)
        counts = await runs.counts_by_state(conn, backfill_id=inc.id)
        measured = await measure(conn, counts=counts, now=NOW, window=600, backfill_id=inc.id)
        left_all = await runs.phases_left(conn, HANDOFFS_LEFT)
        handoffs_all = await runs.handoffs_since(conn, NOW - timedelta(seconds=600))
    assert tallies[inc.id] == Tally({"done": 1, "failed": 1, "pending": 1})
    assert tallies[other.id] == Tally({"cancelled": 1, "analyzing": 1})
    assert list(found) == [other.id, inc.id]  # newest first
    mine = found[inc.id]
    assert (mine.tally.seeded, mine.tally.finished, mine.tally.live) == (3, 2, 1)
    assert mine.state is BackfillState.RUNNING
    assert mine.progress.percent_finished == pytest.approx(200 / 3)
    assert mine.progress.total == 3 and mine.progress.finished == 2
    # its rate: its 3 hand-offs over the 5 minutes since its first event
    assert (mine.progress.handoffs, mine.progress.measured_over) == (3, 300.0)
    assert mine.progress.rate == pytest.approx(3 / 5)
    assert mine.progress.handoffs_left == 3  # the pending run
    assert mine.progress.eta == pytest.approx(3 / (3 / 5) * 60)
    assert alone == [mine]
    assert measured == mine.progress  # the filter of measure agrees with the grouped reads
    theirs = found[other.id]
    assert (theirs.tally.finished, theirs.tally.seeded) == (1, 2)
    assert theirs.progress.percent_finished == 50.0
    assert theirs.progress.handoffs == 0 and theirs.progress.rate is None
    assert theirs.progress.eta is None and theirs.progress.handoffs_left == 3
    # the store-wide reads are the sum of the backfills'
    assert left_all == 6 and handoffs_all.count == 3


async def test_progress_is_100_percent_exactly_when_no_run_is_live(engine: AsyncEngine) -> None:
    inc, _ = await two_backfills(engine)
    async with engine.connect() as conn:
        pending = await runs.get(conn, "r-pending")
    assert pending is not None
    async with engine.begin() as conn:
        await runs.append(conn, pending, [RunCancelled(at=at(4), reason="operator")])
    async with engine.connect() as conn:
        (mine,) = await summaries(conn, now=NOW, backfill_id=inc.id)
        live = await summaries(conn, now=NOW, live_only=True)
    assert mine.progress.percent_finished == 100.0  # a failed run does not hold it back
    assert mine.progress.percent_done == pytest.approx(100 / 3)
    assert (mine.state, mine.progress.eta) == (BackfillState.FINISHED, 0.0)
    assert [s.backfill.label for s in live] == ["other"]
    assert percent_finished(9_999, 10_000) == 99.99  # never rounds up to 100 while live
    assert percent_finished(0, 0) == 0.0


async def test_an_ident_names_a_backfill_by_id_prefix_or_label(engine: AsyncEngine) -> None:
    inc, other = await two_backfills(engine)
    twin = backfill("bbbbbb333333", "INC-123", 2)  # a second backfill with inc's label
    await seed(engine, twin, "r-twin")
    async with engine.connect() as conn:

        async def named(ident: str) -> list[str]:
            return [b.id for b in await backfills.find(conn, ident)]

        assert await named(inc.id) == [inc.id]
        assert await named("aaaaaa2") == [other.id]
        assert await named("aaaaaa") == [other.id, inc.id]  # an ambiguous prefix
        assert await named("aaaaa") == []  # under 6 characters: no prefix
        assert await named("other") == [other.id]
        assert await named("INC-123") == [twin.id, inc.id]  # an ambiguous label
        assert await named("INC-12") == []  # a label is matched whole
        assert await named("aaaaaa_%") == []  # no LIKE wildcards


async def test_pause_is_a_flag_on_the_row_read_once_per_tick(engine: AsyncEngine) -> None:
    inc, other = await two_backfills(engine)
    async with engine.begin() as conn:
        assert await backfills.set_paused(conn, inc.id, True)
        assert not await backfills.set_paused(conn, inc.id, True)  # already
    async with engine.connect() as conn:
        assert await backfills.paused_ids(conn) == {inc.id}
        assert await backfills.paused_live(conn) == {inc.id: ("INC-123", 1)}
        (mine,) = await summaries(conn, now=NOW, backfill_id=inc.id)
    assert mine.state is BackfillState.PAUSED
    async with engine.begin() as conn:
        assert await backfills.set_paused(conn, inc.id, False)
        await backfills.set_cancelled(conn, other.id, at(5))
        await backfills.set_cancelled(conn, other.id, at(6))  # the first instant stays
    async with engine.connect() as conn:
        # a cancel pauses too: runs a cancel has not reached yet start no job
        assert await backfills.paused_live(conn) == {other.id: ("other", 1)}
        cancelled = await backfills.get(conn, other.id)
    assert cancelled is not None and cancelled.cancelled_at == at(5) and cancelled.paused
    assert cancelled.state(live=1) is BackfillState.CANCELLED


async def test_a_paused_backfill_refuses_a_job_request_but_not_a_judgement(
    engine: AsyncEngine,
) -> None:
    inc, _ = await two_backfills(engine)
    async with engine.begin() as conn:
        await backfills.set_paused(conn, inc.id, True)
    async with engine.connect() as conn:
        pending = await runs.get(conn, "r-pending")
        analyzing = await runs.get(conn, "r-analyzing")
    assert pending is not None and analyzing is not None
    request = AnalysisRequested(at=at(5), job_id="analyze-retro-m-r-pending", attempt=1)
    with pytest.raises(runs.BackfillPaused) as refused:
        async with engine.begin() as conn:
            await runs.append(conn, pending, [request])
    assert (refused.value.run_id, refused.value.backfill_id) == ("r-pending", inc.id)
    assert isinstance(refused.value, runs.AppendRejected)
    async with engine.begin() as conn:  # the other backfill is not paused
        await runs.append(conn, analyzing, [AnalysisCompleted(at=at(5))])
        # a judgement or an end of the paused backfill's run is no start
        await runs.append(conn, pending, [RunCancelled(at=at(5), reason="operator")])
    async with engine.connect() as conn:
        assert (await runs.audit(conn)).ok
        assert [e.TYPE for e in await runs.events_of(conn, "r-pending")] == [
            "RunSeeded",
            "RunCancelled",
        ]


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_a_pause_waits_for_a_request_in_flight_and_the_next_one_sees_it(
    engine: AsyncEngine,
) -> None:
    """PostgreSQL: a daemon appending a job request holds the backfill's row
    ``FOR SHARE`` to its commit, so a pause committed after the request began waits
    for it; a request that begins while the pause is uncommitted waits for the
    pause and is refused. No request commits after a pause without seeing it."""
    inc, _ = await two_backfills(engine)
    async with engine.connect() as conn:
        pending = await runs.get(conn, "r-pending")
    assert pending is not None
    request = AnalysisRequested(at=at(5), job_id="analyze-retro-m-r-pending", attempt=1)

    async def pause() -> None:
        async with engine.begin() as conn:
            await backfills.set_paused(conn, inc.id, True)

    async with engine.begin() as daemon:
        requested = await runs.append(daemon, pending, [request])
        pausing = asyncio.create_task(pause())
        await asyncio.sleep(0.5)
        assert not pausing.done(), "the pause did not wait for the request in flight"
    await asyncio.wait_for(pausing, 10)  # it commits once the request did
    assert requested.job_id == "analyze-retro-m-r-pending"

    async with engine.begin() as conn:
        await backfills.set_paused(conn, inc.id, False)  # resumed (committed)
    async with engine.begin() as operator:  # a pause in progress, uncommitted
        assert await backfills.set_paused(operator, inc.id, True)
        async with engine.connect() as conn:
            again = await runs.get(conn, "r-failed")
        assert again is not None

        async def rearm_and_request() -> None:
            async with engine.begin() as conn:
                run = await runs.rearm(conn, again, now=at(6))
                await runs.append(
                    conn, run, [AnalysisRequested(at=at(6), job_id="analyze-x", attempt=1)]
                )

        racing = asyncio.create_task(rearm_and_request())
        await asyncio.sleep(0.5)
        assert not racing.done(), "the request did not wait for the pause in progress"
    with pytest.raises(runs.BackfillPaused):
        await asyncio.wait_for(racing, 10)
    async with engine.connect() as conn:
        assert (await runs.get(conn, "r-failed")) == again  # nothing of it was written
