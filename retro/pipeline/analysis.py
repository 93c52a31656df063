"""Pre-match analysis from past results. Pure and deterministic.

Only matches that kicked off strictly before the analysed match count. Each
team gets a record: its form (last five results, oldest first, ``W``/``D``/``L``)
and its goals scored and conceded per match, shrunk towards a league prior so
that a team with one match is not rated on that match alone. A simple Poisson
rating turns the four averages into expected goals (home advantage included)
and those into home-win/draw/away-win percentages. The favourite is the side
with the larger win percentage, the home team on a tie — so a match with no
history at all still has a favourite: the home team, by home advantage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

FORM_LENGTH = 5
PRIOR_GOALS = 1.4
"""Prior goals per team per match (a typical top-flight average)."""
PRIOR_WEIGHT = 3.0
"""How many matches' worth of the prior the averages carry."""
HOME_ADVANTAGE = 1.15
"""Factor on the home side's expected goals (its inverse on the away side's)."""
MAX_GOALS = 10
"""Score lines up to this many goals per side enter the outcome probabilities."""


class PlayedMatch(Protocol):
    """A match with a final result (``kickoff`` is an aware instant)."""

    @property
    def home_team(self) -> str: ...
    @property
    def away_team(self) -> str: ...
    @property
    def kickoff(self) -> datetime: ...
    @property
    def home_score(self) -> int: ...
    @property
    def away_score(self) -> int: ...


@dataclass(frozen=True)
class TeamRecord:
    """A team's results before a match: count, form string, shrunk goal averages."""

    played: int
    form: str
    scored_avg: float
    conceded_avg: float


@dataclass(frozen=True)
class Analysis:
    """The pre-match analysis of one match; averages are goals per match, 2 decimals."""

    home_team: str
    away_team: str
    favorite_team_name: str
    home_win_pct: int
    draw_pct: int
    away_win_pct: int
    home_form: str
    away_form: str
    home_scored_avg: float
    home_conceded_avg: float
    away_scored_avg: float
    away_conceded_avg: float

    def expected_goals(self, home_advantage: float = HOME_ADVANTAGE) -> tuple[float, float]:
        """Expected (home, away) goals under the Poisson rating, for a home-advantage factor."""
        return expected_goals(
            self.home_scored_avg,
            self.home_conceded_avg,
            self.away_scored_avg,
            self.away_conceded_avg,
            home_advantage,
        )


def team_record(team: str, before: datetime, history: Iterable[PlayedMatch]) -> TeamRecord:
    """``team``'s record from the matches of ``history`` that kicked off strictly before ``before``.

    Args:
        team: the team's name.
        before: an aware instant (the analysed match's kick-off).
        history: any played matches; others' and later ones are ignored.
    """
    mine = sorted(
        (m for m in history if m.kickoff < before and team in (m.home_team, m.away_team)),
        key=lambda m: m.kickoff,
    )
    results: list[str] = []
    scored = conceded = 0
    for m in mine:
        own, other = (
            (m.home_score, m.away_score) if m.home_team == team else (m.away_score, m.home_score)
        )
        scored += own
        conceded += other
        results.append("W" if own > other else "L" if own < other else "D")
    weight = len(mine) + PRIOR_WEIGHT
    return TeamRecord(
        played=len(mine),
        form="".join(results[-FORM_LENGTH:]),
        scored_avg=round((scored + PRIOR_GOALS * PRIOR_WEIGHT) / weight, 2),
        conceded_avg=round((conceded + PRIOR_GOALS * PRIOR_WEIGHT) / weight, 2),
    )


def expected_goals(
    home_scored: float,
    home_conceded: float,
    away_scored: float,
    away_conceded: float,
    home_advantage: float = HOME_ADVANTAGE,
) -> tuple[float, float]:
    """Expected (home, away) goals: attack and opposing defence averaged, times home advantage."""
    home = (home_scored + away_conceded) / 2 * home_advantage
    away = (away_scored + home_conceded) / 2 / home_advantage
    return home, away


def poisson(k: int, lam: float) -> float:
    """P(X = k) for X ~ Poisson(lam)."""
    return math.exp(-lam) * lam**k / math.factorial(k)


def outcome_probabilities(home_goals: float, away_goals: float) -> tuple[float, float, float]:
    """P(home win), P(draw), P(away win) for independent Poisson goals, normalised."""
    home_p = [poisson(k, home_goals) for k in range(MAX_GOALS + 1)]
    away_p = [poisson(k, away_goals) for k in range(MAX_GOALS + 1)]
    win = draw = loss = 0.0
    for h, ph in enumerate(home_p):
        for a, pa in enumerate(away_p):
            if h > a:
                win += ph * pa
            elif h == a:
                draw += ph * pa
            else:
                loss += ph * pa
    total = win + draw + loss
    return win / total, draw / total, loss / total


def percentages(probabilities: tuple[float, float, float]) -> tuple[int, int, int]:
    """Whole percentages summing to 100 (largest remainder; ties to the earlier outcome)."""
    raw = [p * 100 for p in probabilities]
    floors = [math.floor(r) for r in raw]
    short = 100 - sum(floors)
    order = sorted(range(3), key=lambda i: (-(raw[i] - floors[i]), i))
    for i in order[:short]:
        floors[i] += 1
    return floors[0], floors[1], floors[2]


def analyze(
    home_team: str, away_team: str, kickoff: datetime, history: Iterable[PlayedMatch]
) -> Analysis:
    """Analyse a match from the results that came strictly before its kick-off.

    Args:
        home_team: the home side.
        away_team: the away side.
        kickoff: the match's kick-off, an aware instant.
        history: played matches (any teams, any dates; filtered here).

    Returns:
        Form, goal averages, outcome percentages and a favourite, always set.
    """
    played = list(history)
    home = team_record(home_team, kickoff, played)
    away = team_record(away_team, kickoff, played)
    lam_home, lam_away = expected_goals(
        home.scored_avg, home.conceded_avg, away.scored_avg, away.conceded_avg
    )
    home_pct, draw_pct, away_pct = percentages(outcome_probabilities(lam_home, lam_away))
    return Analysis(
        home_team=home_team,
        away_team=away_team,
        favorite_team_name=away_team if away_pct > home_pct else home_team,
        home_win_pct=home_pct,
        draw_pct=draw_pct,
        away_win_pct=away_pct,
        home_form=home.form,
        away_form=away.form,
        home_scored_avg=home.scored_avg,
        home_conceded_avg=home.conceded_avg,
        away_scored_avg=away.scored_avg,
        away_conceded_avg=away.conceded_avg,
    )
