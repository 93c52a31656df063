"""The demo's seeded season: the normal pipeline up to the outage, then the damage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from retro.demo import load_fixtures, seed_demo
from retro.pipeline import host
from retro.pipeline.analysis import analyze
from retro.pipeline.host_rows import PlayedMatch
from retro.pipeline.models import MODELS
from retro.pipeline.stages import analysis_row, run_analysis, run_predictions, run_settlement
from retro.store.db import create_engine
from tests.conftest import Backend

NOW = datetime(2025, 5, 26, 12, tzinfo=UTC)


async def test_full_season_seeds_every_kind_of_damage(backend: Backend) -> None:
    engine = create_engine(backend.database_url)
    try:
        seed = await seed_demo(engine, now=NOW)
        assert seed.matches == 1752
        assert seed.models == 42
        assert seed.upcoming == 0
        window = (
            seed.no_analysis
            + seed.no_predictions
            + seed.partial_predictions
            + seed.unscored
            + seed.complete
        )
        assert seed.before_window + window == seed.matches
        for kind in ("no_analysis", "no_predictions", "partial_predictions", "unscored"):
            assert getattr(seed, kind) > 0, kind
        assert 0 < seed.stub_analysis < seed.no_analysis
        assert seed.unplayed == 20  # last-day matches without a score, past kick-off
        assert seed.gaps == window - seed.complete

        board = await host.leaderboard(engine)
        assert len(board) == 42
        assert len({row.points for row in board}) > 10  # the models really differ
        assert all(row.scored > 1500 for row in board)

        # Idempotent: a second run writes nothing new.
        before = await host.leaderboard(engine)
        again = await seed_demo(engine, now=NOW)
        assert again == seed
        assert await host.leaderboard(engine) == before
    finally:
        await engine.dispose()


async def test_window_damage_matches_the_counts(backend: Backend) -> None:
    engine = create_engine(backend.database_url)
    try:
        seed = await seed_demo(engine, now=NOW, competitions={"en.1"})
        assert seed.matches == 380
        expected = len(MODELS)
        kinds = {"no_analysis": 0, "no_predictions": 0, "partial": 0, "unscored": 0}
        for number in range(1, 381):
            match_id = f"m-en1-{number:03d}"
            match = await host.get_match(engine, match_id)
            assert match is not None
            if match.kickoff < seed.window_start:
                continue
            analysis = await host.get_analysis(engine, match_id)
            tips = await host.match_predictions(engine, match_id)
            if analysis is None or analysis.favorite_team_name is None:
                kinds["no_analysis"] += 1
                assert tips == []
            elif not tips:
                kinds["no_predictions"] += 1
            elif len(tips) < expected:
                kinds["partial"] += 1
            elif all(p.status == "pending" for p in tips) and match.status == "finished":
                kinds["unscored"] += 1
        assert kinds == {
            "no_analysis": seed.no_analysis,
            "no_predictions": seed.no_predictions,
            "partial": seed.partial_predictions,
            "unscored": seed.unscored,
        }
    finally:
        await engine.dispose()


async def test_healing_a_damaged_match_matches_the_normal_pipeline(backend: Backend) -> None:
    engine = create_engine(backend.database_url)
    try:
        seed = await seed_demo(engine, now=NOW, competitions={"en.1"})
        fixtures = [f for f in load_fixtures() if f.competition_id == "en.1"]
        damaged = None
        for f in fixtures:
            if seed.window_start <= f.kickoff <= NOW and f.status == "finished":
                row = await host.get_analysis(engine, f.match_id)
                if row is None:
                    damaged = f
                    break
        assert damaged is not None
        played = [
            PlayedMatch(f.home_team, f.away_team, f.kickoff, f.home_score, f.away_score)
            for f in fixtures
            if f.home_score is not None and f.away_score is not None
        ]
        expected = analysis_row(
            damaged.match_id,
            analyze(damaged.home_team, damaged.away_team, damaged.kickoff, played),
        )
        now = NOW + timedelta(minutes=5)
        result = await run_analysis(engine, damaged.match_id, now=now, allow_retroactive=True)
        assert result["written"] == 1
        # The history read back from mixed ISO kick-off texts is the fixtures' history.
        assert await host.get_analysis(engine, damaged.match_id) == expected
        assert (await run_predictions(engine, damaged.match_id, now=now, allow_retroactive=True))[
            "written"
        ] == 42
        settled = await run_settlement(
            engine,
            damaged.match_id,
            home_score=damaged.home_score,
            away_score=damaged.away_score,
            status="finished",
            now=now,
        )
        assert settled == {"written": 42}
    finally:
        await engine.dispose()
