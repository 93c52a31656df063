"""The host-table SQL of the reference pipeline, on every database backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from retro.pipeline import host
from retro.pipeline.host_rows import (
    AnalysisRow,
    JobLogEntry,
    MatchNotFound,
    MatchRow,
    ModelRow,
    NewPrediction,
    ResultConflict,
    Settlement,
    iso_utc,
    parse_instant,
)
from retro.pipeline.host_settlement import settle_match
from retro.pipeline.stages import kicktipp
from retro.store.db import create_engine
from tests.conftest import Backend

NOW = datetime(2025, 5, 26, 12, tzinfo=UTC)


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[host.HostEngine]:
    engine = create_engine(backend.database_url)
    await host.create_host_tables(engine)
    await host.insert_models(
        engine,
        [
            ModelRow("a", "p", "a", "Model A"),
            ModelRow("b", "p", "b", "Model B"),
            ModelRow("c", "p", "c", "Model C", auto_disabled=True),
            ModelRow("d", "p", "d", "Model D", active=False),
        ],
    )
    await host.insert_matches(
        engine,
        [
            MatchRow(
                "m1", "e1", "x", "Reds", "Blues", "2025-05-20T19:00:00.000Z", 1, 1, "finished"
            ),
            MatchRow("m2", "e2", "x", "Blues", "Reds", "2025-05-13T19:00:00Z", 0, 2, "awarded"),
            MatchRow(
                "m3", "e3", "x", "Reds", "Greens", "2025-05-06T21:00:00+02:00", 3, 0, "finished"
            ),
            MatchRow("m4", "e4", "x", "Reds", "Whites", "garbage", 9, 9, "finished"),
            MatchRow(
                "m5",
                None,
                "x",
                "Reds",
                "Blacks",
                "2025-05-30T19:00:00+00:00",
                None,
                None,
                "scheduled",
            ),
        ],
    )
    yield engine
    await engine.dispose()


def test_instants() -> None:
    moment = datetime(2025, 5, 20, 19, tzinfo=UTC)
    assert iso_utc(moment) == "2025-05-20T19:00:00.000Z"
    for text in [
        "2025-05-20T19:00:00.000Z",
        "2025-05-20T19:00:00Z",
        "2025-05-20T19:00:00+00:00",
        "2025-05-20T21:00:00+02:00",
        "2025-05-20T19:00:00",
    ]:
        assert parse_instant(text) == moment
    with pytest.raises(ValueError):
        parse_instant("20 May")
    with pytest.raises(ValueError):
        iso_utc(datetime(2025, 5, 20, 19))


async def test_models_and_matches(engine: host.HostEngine) -> None:
    assert [m.id for m in await host.active_models(engine)] == ["a", "b"]
    assert await host.insert_models(engine, [ModelRow("a", "p", "a", "Model A")]) == 0
    match = await host.get_match(engine, "m3")
    assert match is not None and match.kickoff == datetime(2025, 5, 6, 19, tzinfo=UTC)
    assert await host.get_match(engine, "nope") is None


async def test_team_history_is_strict_and_skips_bad_rows(engine: host.HostEngine) -> None:
    history = await host.team_history(
        engine, ["Reds"], before=datetime(2025, 5, 20, 19, tzinfo=UTC)
    )
    assert [(m.home_team, m.away_team) for m in history] == [("Reds", "Greens"), ("Blues", "Reds")]
    assert history[1].kickoff == datetime(2025, 5, 13, 19, tzinfo=UTC)


async def test_upsert_analysis_keeps_one_row(engine: host.HostEngine) -> None:
    await host.upsert_analysis(engine, AnalysisRow("m1", None))
    row = AnalysisRow("m1", "Reds", 50, 25, 25, "WDW", "LLD", "1.50/0.90", "1.10/1.60")
    await host.upsert_analysis(engine, row)
    await host.upsert_analysis(engine, row)
    assert await host.get_analysis(engine, "m1") == row
    assert await host.upsert_analyses(engine, [row, AnalysisRow("m2", "Reds")]) == 2
    assert (await host.get_analysis(engine, "m2")) == AnalysisRow("m2", "Reds")


async def test_predictions_are_written_once_per_model(engine: host.HostEngine) -> None:
    tips = [
        NewPrediction("m1", "a", 1, 1, "D", NOW),
        NewPrediction("m1", "b", 2, 0, "H", NOW),
    ]
    assert await host.insert_predictions(engine, tips) == 2
    assert (
        await host.insert_predictions(engine, [*tips, NewPrediction("m1", "c", 0, 1, "A", NOW)])
        == 1
    )
    assert await host.predicted_model_ids(engine, "m1") == {"a", "b", "c"}
    stored = await host.match_predictions(engine, "m1")
    assert [(p.id, p.status, p.total_points) for p in stored] == [
        ("pred-m1-a", "pending", None),
        ("pred-m1-b", "pending", None),
        ("pred-m1-c", "pending", None),
    ]


async def test_settlement_scores_pending_once(engine: host.HostEngine) -> None:
    await host.insert_predictions(
        engine,
        [
            NewPrediction("m1", "a", 1, 1, "D", NOW),
            NewPrediction("m1", "b", 2, 0, "H", NOW),
        ],
    )
    item = Settlement("m1", 1, 1, NOW)
    assert await settle_match(engine, item, kicktipp) == 2
    first = await host.match_predictions(engine, "m1")
    # D and H each have half the tips: quota 3; A nobody: 6.
    assert [
        (p.status, p.tendency_points, p.goal_diff_bonus, p.exact_score_bonus, p.total_points)
        for p in first
    ] == [
        ("scored", 3, 1, 3, 7),
        ("scored", 0, 0, 0, 0),
    ]
    assert first[0].scored_at == iso_utc(NOW)
    later = Settlement("m1", 1, 1, datetime(2025, 6, 1, tzinfo=UTC))
    assert await settle_match(engine, later, kicktipp) == 0
    assert await host.match_predictions(engine, "m1") == first

    with pytest.raises(ResultConflict):
        await settle_match(engine, Settlement("m1", 2, 1, NOW), kicktipp)
    with pytest.raises(MatchNotFound):
        await settle_match(engine, Settlement("zz", 2, 1, NOW), kicktipp)


async def test_settlement_fills_a_missing_result(engine: host.HostEngine) -> None:
    await host.insert_predictions(engine, [NewPrediction("m5", "a", 0, 1, "A", NOW)])
    assert await settle_match(engine, Settlement("m5", 0, 1, NOW), kicktipp) == 1
    match = await host.get_match(engine, "m5")
    assert match is not None
    assert (match.home_score, match.away_score, match.status) == (0, 1, "finished")


async def test_leaderboard_and_journal(engine: host.HostEngine) -> None:
    await host.insert_predictions(
        engine,
        [NewPrediction("m1", "a", 1, 1, "D", NOW), NewPrediction("m1", "b", 2, 0, "H", NOW)],
    )
    await settle_match(engine, Settlement("m1", 1, 1, NOW), kicktipp)
    board = await host.leaderboard(engine)
    assert [(r.model_id, r.scored, r.points, r.exact) for r in board] == [
        ("a", 1, 7, 1),
        ("b", 1, 0, 0),
        ("c", 0, 0, 0),
        ("d", 0, 0, 0),
    ]
    entry = JobLogEntry("analysis-queue", "analyze-match", "j1", 1748000000000, "m1", 0, NOW, "ok")
    await host.log_job(engine, entry)
    assert await host.job_log(engine) == [entry]
    assert await host.job_log(engine, match_id="m2") == []
