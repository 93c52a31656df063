"""The bundled openfootball season: time zones, counts, statuses."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from retro.demo.fixtures import LEAGUES, load_fixtures, load_league, local_to_utc

PER_LEAGUE = {"de.1": 306, "en.1": 380, "es.1": 380, "fr.1": 306, "it.1": 380}


def test_london_summer_time() -> None:
    # Manchester United v Fulham, Friday 16 August 2024, 20:00 BST.
    first = load_league("en.1")[0]
    assert (first.home_team, first.away_team) == ("Manchester United FC", "Fulham FC")
    assert first.kickoff == datetime(2024, 8, 16, 19, 0, tzinfo=UTC)
    assert first.kickoff.tzinfo is UTC
    assert first.match_id == "m-en1-001"
    assert first.external_id == "en.1-2024-25-001"
    assert first.competition_id == "en.1"
    assert (first.home_score, first.away_score, first.status) == (1, 0, "finished")


def test_winter_and_summer_offsets() -> None:
    assert local_to_utc("2025-01-18", "15:30", "Europe/Berlin") == datetime(
        2025, 1, 18, 14, 30, tzinfo=UTC
    )
    assert local_to_utc("2025-05-17", "15:30", "Europe/Berlin") == datetime(
        2025, 5, 17, 13, 30, tzinfo=UTC
    )
    assert local_to_utc("2025-01-18", "15:00", "Europe/London") == datetime(
        2025, 1, 18, 15, 0, tzinfo=UTC
    )


def test_counts_per_league() -> None:
    fixtures = load_fixtures()
    assert Counter(f.competition_id for f in fixtures) == PER_LEAGUE
    assert set(LEAGUES) == set(PER_LEAGUE)
    assert len({f.match_id for f in fixtures}) == len(fixtures)
    assert len({f.external_id for f in fixtures}) == len(fixtures)
    assert [f.kickoff for f in fixtures] == sorted(f.kickoff for f in fixtures)


def test_awarded_and_unplayed_are_kept() -> None:
    fixtures = load_fixtures()
    statuses = Counter(f.status for f in fixtures)
    assert statuses["awarded"] == 2
    assert statuses["scheduled"] == 20  # last-day matches without a score (es.1, it.1)
    awarded = next(f for f in fixtures if f.competition_id == "de.1" and f.status == "awarded")
    assert (awarded.home_team, awarded.home_score, awarded.away_score) == (
        "1. FC Union Berlin",
        0,
        2,
    )
    for f in fixtures:
        assert (f.home_score is None) == (f.status == "scheduled")
        assert (f.away_score is None) == (f.status == "scheduled")


def test_local_kickoff_round_trips() -> None:
    fixture = load_league("es.1")[-1]
    assert fixture.local_kickoff.strftime("%Y-%m-%d %H:%M") == "2025-05-25 21:00"
    assert fixture.status == "scheduled"
