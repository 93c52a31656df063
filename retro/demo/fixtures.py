"""The bundled 2024/25 fixtures of five European leagues (openfootball, CC0).

The JSON files give local kick-off dates and times without a zone; each league's
time zone turns them into UTC instants. Matches keep the data's realism: a few
are ``awarded``, and some last-day matches have no score (``scheduled``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

SEASON = "2024-25"

LEAGUES: dict[str, str] = {
    "de.1": "Europe/Berlin",
    "en.1": "Europe/London",
    "es.1": "Europe/Madrid",
    "fr.1": "Europe/Paris",
    "it.1": "Europe/Rome",
}
"""Competition id -> the IANA time zone of its local kick-off times."""


class FixtureError(ValueError):
    """A bundled fixture file is malformed; the message names the file and match."""


@dataclass(frozen=True)
class Fixture:
    """One match of the bundled season.

    ``kickoff`` is an aware UTC instant; ``status`` is ``finished``, ``awarded``
    or ``scheduled`` (no score in the data); scores are None when unplayed.
    """

    match_id: str
    external_id: str
    competition_id: str
    round: str
    home_team: str
    away_team: str
    kickoff: datetime
    time_zone: str
    home_score: int | None
    away_score: int | None
    status: str

    @property
    def local_kickoff(self) -> datetime:
        """The kick-off in the league's own time zone."""
        return self.kickoff.astimezone(ZoneInfo(self.time_zone))


def local_to_utc(date: str, time: str, time_zone: str) -> datetime:
    """``2024-08-16`` ``20:00`` in ``time_zone`` as an aware UTC instant.

    Raises:
        ValueError: the date or time does not parse.
        zoneinfo.ZoneInfoNotFoundError: no time zone data (install ``tzdata``).
    """
    local = datetime.fromisoformat(f"{date}T{time}").replace(tzinfo=ZoneInfo(time_zone))
    return local.astimezone(UTC)


def _fixture(competition_id: str, number: int, raw: dict[str, Any]) -> Fixture:
    time_zone = LEAGUES[competition_id]
    score = raw.get("score") or {}
    full_time = score.get("ft")
    home_score: int | None = None
    away_score: int | None = None
    if full_time:
        home_score, away_score = int(full_time[0]), int(full_time[1])
        status = "awarded" if raw.get("status") == "awarded" else "finished"
    else:
        status = "scheduled"
    return Fixture(
        match_id=f"m-{competition_id.replace('.', '')}-{number:03d}",
        external_id=f"{competition_id}-{SEASON}-{number:03d}",
        competition_id=competition_id,
        round=str(raw.get("round", "")),
        home_team=str(raw["team1"]),
        away_team=str(raw["team2"]),
        kickoff=local_to_utc(str(raw["date"]), str(raw.get("time") or "15:00"), time_zone),
        time_zone=time_zone,
        home_score=home_score,
        away_score=away_score,
        status=status,
    )


def load_league(competition_id: str) -> tuple[Fixture, ...]:
    """One league's matches, numbered in the file's order (``m-en1-001`` …).

    Raises:
        KeyError: unknown competition id.
        FixtureError: the bundled file is malformed.
    """
    if competition_id not in LEAGUES:
        raise KeyError(f"unknown competition {competition_id!r}; known: {', '.join(LEAGUES)}")
    name = f"{SEASON}-{competition_id}.json"
    text = resources.files("retro.demo").joinpath("data", name).read_text(encoding="utf-8")
    try:
        raw_matches = json.loads(text)["matches"]
        return tuple(
            _fixture(competition_id, number, raw) for number, raw in enumerate(raw_matches, start=1)
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FixtureError(f"{name}: malformed fixture data ({exc!r})") from None


@cache
def load_fixtures() -> tuple[Fixture, ...]:
    """Every bundled match of the five leagues, by kick-off then match id.

    Raises:
        FixtureError: a bundled file is malformed.
    """
    every = [f for competition_id in LEAGUES for f in load_league(competition_id)]
    return tuple(sorted(every, key=lambda f: (f.kickoff, f.match_id)))
