"""Gap detection on the host's tables (DESIGN §1, §5), and the facts of one match.

Host tables come from ``host_metadata.create_all`` (as the host's own pipeline
would have them), retro's from ``migrate.upgrade``; rows go in with SQLAlchemy
Core, in the host's own text forms (``kickoff_time`` as mixed ISO-8601 text).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.app import App
from retro.config import Settings
from retro.events import RunCancelled, RunFailed, RunSeeded
from retro.scheduler import Daemon
from retro.store import db, migrate, runs
from retro.store.facts import match_facts
from retro.store.gaps import Gap, GapKind, Scan, parse_kickoff, scan
from retro.store.schema import host_metadata, match_analysis, matches, models, predictions
from tests.conftest import Backend

NOW = datetime(2025, 5, 21, 12, 0, tzinfo=UTC)
DAYS = 3
SINCE = NOW - timedelta(days=DAYS)  # 2025-05-18T12:00:00Z
COOLDOWN = timedelta(hours=24)
ACTIVE = ("gpt", "claude", "llama")
A, P, U = GapKind.MISSING_ANALYSIS, GapKind.MISSING_PREDICTIONS, GapKind.UNSCORED


def iso(instant: datetime) -> str:
    """The host's usual form: ``2025-05-20T19:00:00.000Z``."""
    return instant.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[AsyncEngine]:
    """A fresh database with the host's tables, retro's tables, and the models.

    Models: three active (expected = 3), one retired (``active = false``) and one
    auto-disabled: the last two never count as expected or found.
    """
    engine = db.create_engine(backend.database_url)
    async with engine.begin() as conn:
        await conn.run_sync(host_metadata.create_all)
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(
            insert(models),  # active / auto_disabled from the host's server defaults
            [{"id": m, "provider": "p", "model_name": m, "display_name": m} for m in ACTIVE],
        )
        await conn.execute(insert(models).values(id="retired", model_name="old", active=False))
        await conn.execute(
            insert(models).values(id="flaky", model_name="flaky", auto_disabled=True)
        )
    yield engine
    await engine.dispose()


async def add_match(
    engine: AsyncEngine,
    match_id: str,
    kickoff: str | None,
    *,
    status: str = "finished",
    score: tuple[int, int] | None = (2, 1),
    favorite: str | None = "Home FC",
    analysis: bool = True,
    predicted: Sequence[str] = ACTIVE,
    prediction_status: str = "scored",
    extra: Sequence[tuple[str, str]] = (),
) -> None:
    """One host match with its analysis and predictions.

    ``predicted`` models get a prediction in ``prediction_status``; ``extra``
    adds ``(model_id, status)`` predictions on top.
    """
    home, away = score if score is not None else (None, None)
    async with engine.begin() as conn:
        await conn.execute(
            insert(matches).values(
                id=match_id,
                external_id=f"ext-{match_id}",
                competition_id="bl1",
                home_team="Home FC",
                away_team="Away FC",
                kickoff_time=kickoff,
                home_score=home,
                away_score=away,
                status=status,
            )
        )
        if analysis:
            await conn.execute(
                insert(match_analysis).values(
                    id=f"an-{match_id}", match_id=match_id, favorite_team_name=favorite
                )
            )
        rows = [(m, prediction_status) for m in predicted] + list(extra)
        if rows:
            await conn.execute(
                insert(predictions),
                [
                    {
                        "id": f"pr-{match_id}-{model}",
                        "match_id": match_id,
                        "model_id": model,
                        "predicted_home": 1,
                        "predicted_away": 0,
                        "predicted_result": "H",
                        "status": state,
                        "total_points": None if state == "pending" else 3,
                    }
                    for model, state in rows
                ],
            )


async def run_scan(
    engine: AsyncEngine,
    *,
    now: datetime = NOW,
    days: int = DAYS,
    cooldown: timedelta = COOLDOWN,
    expected_override: int | None = None,
) -> Scan:
    async with engine.connect() as conn:
        return await scan(
            conn, now=now, days=days, cooldown=cooldown, expected_override=expected_override
        )


def by_id(result: Scan) -> dict[str, Gap]:
    return {gap.match_id: gap for gap in result.gaps}


# --- the window ---------------------------------------------------------------------


async def test_window_is_inclusive_and_excludes_upcoming_matches(engine: AsyncEngine) -> None:
    gap = {"analysis": False, "predicted": ()}
    await add_match(engine, "at-since", iso(SINCE), **gap)
    await add_match(engine, "at-now", iso(NOW), status="live", score=None, **gap)
    await add_match(engine, "inside", iso(NOW - timedelta(days=1)), **gap)
    await add_match(engine, "before-since", iso(SINCE - timedelta(seconds=1)), **gap)
    await add_match(engine, "old", iso(NOW - timedelta(days=30)), **gap)
    await add_match(
        engine, "upcoming", iso(NOW + timedelta(seconds=1)), status="scheduled", score=None, **gap
    )
    await add_match(
        engine, "next-week", iso(NOW + timedelta(days=7)), status="scheduled", score=None, **gap
    )
    result = await run_scan(engine)
    assert [g.match_id for g in result.gaps] == ["at-since", "inside", "at-now"]
    assert (result.since, result.until) == (SINCE, NOW)
    assert result.expected == 3
    assert result.skipped == []
    assert (result.complete, result.blocked) == (0, 0)
    assert by_id(result)["at-since"].kickoff == SINCE
    assert by_id(result)["at-now"].kickoff == NOW
    # A zero-day window holds only what kicked off at exactly ``now``.
    assert [g.match_id for g in (await run_scan(engine, days=0)).gaps] == ["at-now"]


async def test_kickoff_forms_are_parsed_to_the_same_instant(engine: AsyncEngine) -> None:
    forms = {
        "ms-z": "2025-05-20T19:00:00.000Z",
        "z": "2025-05-20T19:00:00Z",
        "utc-offset": "2025-05-20T19:00:00+00:00",
        "cest": "2025-05-20T21:00:00+02:00",
    }
    instant = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)
    for value in forms.values():
        parsed = parse_kickoff(value)
        assert parsed == instant
        assert parsed.utcoffset() == timedelta(0)
    for match_id, value in forms.items():
        await add_match(engine, match_id, value, analysis=False)
    result = await run_scan(engine)
    assert {g.match_id: g.kickoff for g in result.gaps} == dict.fromkeys(forms, instant)
    assert result.skipped == []


@pytest.mark.parametrize("value", ["2025-05-20T19:00+00:60", "2025-05-20T19:00+0075"])
def test_an_offset_with_60_minutes_or_more_is_unreadable(value: str) -> None:
    """Python reads ``+00:60`` as ``+01:00``; the scan's SQL rule (offset minutes
    00-59) calls it unreadable, and the reason given must say why, not guess."""
    with pytest.raises(ValueError, match="not ISO-8601"):
        parse_kickoff(value)


async def test_offset_kickoffs_near_the_edges_are_classified_by_their_instant(
    engine: AsyncEngine,
) -> None:
    now = datetime(2025, 5, 20, 18, 30, tzinfo=UTC)  # since = 2025-05-19T18:30Z
    gap = {"analysis": False}
    # Read as wall-clock text these would land on the wrong side of an edge.
    await add_match(engine, "evening-past", "2025-05-20T20:00:00+02:00", **gap)  # 18:00Z: in
    await add_match(
        engine, "evening-upcoming", "2025-05-20T20:45:00+02:00", status="scheduled", **gap
    )  # 18:45Z: upcoming, out
    await add_match(engine, "early-edge", "2025-05-19T20:00:00+02:00", **gap)  # 18:00Z: out
    await add_match(engine, "west-edge", "2025-05-19T15:00:00-04:00", **gap)  # 19:00Z: in
    await add_match(engine, "exact-edge", "2025-05-19T20:30:00+02:00", **gap)  # 18:30Z: in
    result = await run_scan(engine, now=now, days=1)
    assert {g.match_id: g.kickoff for g in result.gaps} == {
        "exact-edge": datetime(2025, 5, 19, 18, 30, tzinfo=UTC),
        "west-edge": datetime(2025, 5, 19, 19, 0, tzinfo=UTC),
        "evening-past": datetime(2025, 5, 20, 18, 0, tzinfo=UTC),
    }


async def test_unparseable_kickoff_is_reported_and_the_scan_goes_on(
    engine: AsyncEngine,
) -> None:
    await add_match(engine, "before", iso(NOW - timedelta(days=2)), analysis=False)
    await add_match(engine, "bad", "2025-05-20T25:99", analysis=False)
    await add_match(engine, "after", iso(NOW - timedelta(hours=1)), analysis=False)
    await add_match(engine, "fine", iso(NOW - timedelta(hours=2)))
    result = await run_scan(engine)
    assert [g.match_id for g in result.gaps] == ["before", "after"]
    assert [s.match_id for s in result.skipped] == ["bad"]
    assert "2025-05-20T25:99" in result.skipped[0].reason
    assert result.complete == 1


async def test_null_and_non_iso_kickoffs_are_reported_too(engine: AsyncEngine) -> None:
    """Rows the window's text range cannot see are still reported, never fatal."""
    await add_match(engine, "null", None, analysis=False)
    await add_match(engine, "tbd", "TBD", analysis=False)
    await add_match(engine, "local", "20/05/2025 19:00", analysis=False)
    await add_match(engine, "ok", iso(NOW - timedelta(hours=3)), analysis=False)
    result = await run_scan(engine)
    assert [g.match_id for g in result.gaps] == ["ok"]
    assert sorted(s.match_id for s in result.skipped) == ["local", "null", "tbd"]
    assert all("unparseable kickoff_time" in s.reason for s in result.skipped)


async def test_the_daemons_scan_reports_unreadable_rows_in_its_log(
    engine: AsyncEngine, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Every periodic scan names the rows it cannot read, as ``retro start`` does,
    escaped (host text never forges a log line)."""
    await add_match(engine, "tbd\nFAKE LINE", "TBD", analysis=False)
    await add_match(engine, "ok", iso(NOW - timedelta(hours=3)), analysis=False)
    settings = Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
    )
    async with App(settings, redis=False) as app:
        with caplog.at_level(logging.WARNING, logger="retro"):
            await Daemon(app, clock=lambda: NOW, scan_days=DAYS).scan()
    said = [r.getMessage() for r in caplog.records if "scan skipped" in r.getMessage()]
    assert len(said) == 1, said
    assert "unparseable kickoff_time 'TBD'" in said[0] and "\n" not in said[0], said


async def test_gaps_are_listed_by_instant_not_by_text(engine: AsyncEngine) -> None:
    """Mixed text forms sort wrongly as text; the scan orders by the real instant."""
    late = NOW - timedelta(hours=2)  # 10:00Z, written with a -05:00 offset: "05:00-05:00"
    early = NOW - timedelta(hours=5)  # 07:00Z, written as Z
    await add_match(
        engine, "late", late.astimezone(timezone(timedelta(hours=-5))).isoformat(), analysis=False
    )
    await add_match(engine, "early", iso(early), analysis=False)
    result = await run_scan(engine)
    assert [g.match_id for g in result.gaps] == ["early", "late"]


async def test_unknown_status_is_reported_called_off_matches_are_skipped_quietly(
    engine: AsyncEngine,
) -> None:
    kickoff = iso(NOW - timedelta(days=1))
    gap = {"analysis": False, "predicted": ()}
    await add_match(engine, "abandoned", kickoff, status="abandoned", **gap)
    await add_match(engine, "postponed", kickoff, status="postponed", score=None, **gap)
    await add_match(engine, "cancelled", kickoff, status="cancelled", score=None, **gap)
    await add_match(engine, "real-gap", kickoff, **gap)
    result = await run_scan(engine)
    assert [g.match_id for g in result.gaps] == ["real-gap"]
    assert [s.match_id for s in result.skipped] == ["abandoned"]
    assert "abandoned" in result.skipped[0].reason
    assert (result.complete, result.blocked) == (0, 0)


# --- the three kinds ------------------------------------------------------------------


async def add_kinds_fixture(engine: AsyncEngine) -> None:
    """Matches showing each kind of gap, alone and together, and complete ones."""
    k = iso(NOW - timedelta(days=1))
    await add_match(engine, "no-analysis-row", k, analysis=False)
    await add_match(engine, "null-favorite", k, favorite=None)
    # Four prediction rows, but only two from expected models.
    await add_match(
        engine,
        "short",
        k,
        predicted=("gpt", "claude"),
        extra=(("retired", "scored"), ("flaky", "scored")),
    )
    await add_match(engine, "unscored", k, extra=(), prediction_status="pending")
    await add_match(
        engine,
        "awarded-unscored",
        k,
        status="awarded",
        predicted=("gpt", "claude"),
        extra=(("llama", "pending"),),
    )
    await add_match(engine, "everything", k, analysis=False, predicted=())
    await add_match(
        engine,
        "short-and-unscored",
        k,
        favorite=None,
        predicted=("gpt",),
        extra=(("retired", "pending"),),
    )
    # Not gaps: pending predictions of a match that is not finished stay with the
    # live pipeline; scored or void predictions of a finished match are settled.
    await add_match(engine, "live-pending", k, status="live", prediction_status="pending")
    await add_match(
        engine, "scheduled-pending", k, status="scheduled", score=None, prediction_status="pending"
    )
    await add_match(engine, "complete", k, predicted=("gpt", "claude"), extra=(("llama", "void"),))


async def test_each_kind_of_gap(engine: AsyncEngine) -> None:
    await add_kinds_fixture(engine)
    result = await run_scan(engine)
    gaps = by_id(result)
    assert {match_id: gap.kinds for match_id, gap in gaps.items()} == {
        "no-analysis-row": (A,),
        "null-favorite": (A,),
        "short": (P,),
        "unscored": (U,),
        "awarded-unscored": (U,),
        "everything": (A, P),
        "short-and-unscored": (A, P, U),
    }
    assert {match_id: (g.found, g.expected) for match_id, g in gaps.items()} == {
        "no-analysis-row": (3, 3),
        "null-favorite": (3, 3),
        "short": (2, 3),
        "unscored": (3, 3),
        "awarded-unscored": (3, 3),
        "everything": (0, 3),
        "short-and-unscored": (1, 3),
    }
    assert result.complete == 3
    assert result.by_kind() == {A: 4, P: 3, U: 3}
    assert gaps["awarded-unscored"].status == "awarded"
    assert (gaps["short"].home_team, gaps["short"].away_team) == ("Home FC", "Away FC")


async def test_a_retired_models_prediction_does_not_stand_in(engine: AsyncEngine) -> None:
    k = iso(NOW - timedelta(hours=5))
    await add_match(engine, "m1", k, predicted=("gpt", "claude"), extra=(("retired", "scored"),))
    assert by_id(await run_scan(engine))["m1"].kinds == (P,)
    # Re-activating the retired model and disabling one that predicted changes the count.
    async with engine.begin() as conn:
        await conn.execute(models.update().where(models.c.id == "retired").values(active=True))
        await conn.execute(
            models.update().where(models.c.id == "claude").values(auto_disabled=True)
        )
    result = await run_scan(engine)
    assert result.expected == 3
    assert result.gaps[0].found == 2  # gpt + retired; claude no longer counts


async def test_expected_override(engine: AsyncEngine) -> None:
    k = iso(NOW - timedelta(days=1))
    await add_match(engine, "two", k, predicted=("gpt", "claude"), extra=(("retired", "scored"),))
    await add_match(engine, "three", k)
    assert {g.match_id for g in (await run_scan(engine)).gaps} == {"two"}
    low = await run_scan(engine, expected_override=2)
    assert (low.expected, low.gaps, low.complete) == (2, [], 2)
    high = await run_scan(engine, expected_override=4)
    assert high.expected == 4
    assert {g.match_id: (g.kinds, g.found, g.expected) for g in high.gaps} == {
        "two": ((P,), 2, 4),
        "three": ((P,), 3, 4),
    }


# --- runs that block a match ----------------------------------------------------------


async def seed(engine: AsyncEngine, run_id: str, match_id: str, at: datetime) -> runs.Run:
    async with engine.begin() as conn:
        return await runs.append(
            conn,
            None,
            [
                RunSeeded(
                    at=at,
                    run_id=run_id,
                    match_id=match_id,
                    gaps=("missing_analysis",),
                    found=3,
                    expected=3,
                )
            ],
        )


async def test_live_run_and_cooldown_block_a_match(engine: AsyncEngine) -> None:
    k = iso(NOW - timedelta(days=1))
    for match_id in ("live-run", "cooling", "cooled", "free"):
        await add_match(engine, match_id, k, analysis=False)
    await add_match(engine, "complete-with-run", k)
    await seed(engine, "r-live", "live-run", NOW - timedelta(hours=2))
    await seed(engine, "r-complete", "complete-with-run", NOW - timedelta(hours=2))
    cooling = await seed(engine, "r-cooling", "cooling", NOW - timedelta(hours=3))
    cooled = await seed(engine, "r-cooled", "cooled", NOW - timedelta(hours=30))
    async with engine.begin() as conn:
        await runs.append(conn, cooling, [RunCancelled(at=NOW - timedelta(hours=1), reason="x")])
        await runs.append(
            conn, cooled, [RunFailed(at=NOW - COOLDOWN - timedelta(seconds=1), reason="x")]
        )
    result = await run_scan(engine)
    assert [g.match_id for g in result.gaps] == ["cooled", "free"]
    assert result.blocked == 2
    assert result.complete == 1
    # Past the cooldown the finished run no longer blocks.
    later = await run_scan(engine, now=NOW + timedelta(days=1))
    assert [g.match_id for g in later.gaps] == ["cooled", "cooling", "free"]
    assert later.blocked == 1
    # A zero cooldown blocks only live runs.
    assert (await run_scan(engine, cooldown=timedelta(0))).blocked == 1


# --- the facts of one match -------------------------------------------------------------


async def test_match_facts_agree_with_the_scan(engine: AsyncEngine) -> None:
    await add_kinds_fixture(engine)
    result = await run_scan(engine)
    async with engine.connect() as conn:
        for gap in result.gaps:
            facts = await match_facts(conn, gap.match_id)
            assert facts is not None
            assert facts.match_id == gap.match_id
            assert facts.found == gap.found
            assert facts.expected == gap.expected == 3
            assert facts.has_analysis is (A not in gap.kinds)
            assert facts.status == gap.status
            assert (facts.unscored > 0) is (U in gap.kinds), gap.match_id
        short = await match_facts(conn, "short-and-unscored")
        assert short is not None
        assert (short.found, short.expected, short.unscored) == (1, 3, 1)
        assert (short.home_score, short.away_score) == (2, 1)
        assert (short.external_id, short.home_team, short.away_team) == (
            "ext-short-and-unscored",
            "Home FC",
            "Away FC",
        )
        live = await match_facts(conn, "live-pending")
        assert live is not None
        assert (live.has_analysis, live.found, live.unscored) == (True, 3, 3)
        scheduled = await match_facts(conn, "scheduled-pending", expected_override=5)
        assert scheduled is not None
        assert (scheduled.found, scheduled.expected) == (3, 5)
        assert (scheduled.home_score, scheduled.away_score) == (None, None)
        assert await match_facts(conn, "no-such-match") is None
