"""Row types and instants for the host tables (:mod:`retro.pipeline.host`).

Plain frozen dataclasses, so code outside :mod:`retro.store` can build and read
host rows without SQLAlchemy. Instants are timezone-aware UTC
:class:`~datetime.datetime` values in Python and ISO-8601 text in the host
tables (``2025-05-20T19:00:00.000Z``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

SETTLED_STATUSES = ("finished", "awarded")
"""Match statuses whose scores are final (the provider's ``awarded`` included)."""


class HostError(RuntimeError):
    """A host-table write cannot be done as asked; the message says why."""


class MatchNotFound(HostError):
    """No ``matches`` row has the given id."""


class ResultConflict(HostError):
    """A settlement's scores disagree with the scores already on the match."""


# --- rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRow:
    """One ``models`` row."""

    id: str
    provider: str
    model_name: str
    display_name: str
    active: bool = True
    auto_disabled: bool = False


@dataclass(frozen=True)
class MatchRow:
    """One ``matches`` row; ``kickoff_time`` is the host's ISO-8601 text as stored."""

    id: str
    external_id: str | None
    competition_id: str | None
    home_team: str
    away_team: str
    kickoff_time: str
    home_score: int | None
    away_score: int | None
    status: str

    @property
    def kickoff(self) -> datetime:
        """The kick-off as an aware UTC instant.

        Raises:
            ValueError: ``kickoff_time`` is not ISO-8601.
        """
        return parse_instant(self.kickoff_time)


@dataclass(frozen=True)
class PlayedMatch:
    """A match with a final result (``finished``/``awarded``, both scores set)."""

    home_team: str
    away_team: str
    kickoff: datetime
    home_score: int
    away_score: int


@dataclass(frozen=True)
class AnalysisRow:
    """The ``match_analysis`` columns the reference pipeline writes and reads."""

    match_id: str
    favorite_team_name: str | None
    home_win_pct: int | None = None
    draw_pct: int | None = None
    away_win_pct: int | None = None
    home_form: str | None = None
    away_form: str | None = None
    home_goals_avg: str | None = None
    away_goals_avg: str | None = None

    @property
    def id(self) -> str:
        """The deterministic row id, ``analysis-{match_id}``."""
        return f"analysis-{self.match_id}"


@dataclass(frozen=True)
class NewPrediction:
    """A prediction to write as ``pending``; ``created_at`` is an aware instant."""

    match_id: str
    model_id: str
    predicted_home: int
    predicted_away: int
    predicted_result: str
    created_at: datetime

    @property
    def id(self) -> str:
        """The deterministic row id, ``pred-{match_id}-{model_id}``."""
        return f"pred-{self.match_id}-{self.model_id}"


@dataclass(frozen=True)
class PredictionRow:
    """One ``predictions`` row as stored."""

    id: str
    match_id: str
    model_id: str
    predicted_home: int | None
    predicted_away: int | None
    predicted_result: str | None
    status: str
    tendency_points: int | None
    goal_diff_bonus: int | None
    exact_score_bonus: int | None
    total_points: int | None
    scored_at: str | None


@dataclass(frozen=True)
class ScoreSheet:
    """A scoring rule's verdict on a match's tips.

    ``quotas`` are the points for a right home/draw/away tendency; ``points``
    holds ``(tendency_points, goal_diff_bonus, exact_score_bonus, total_points)``
    per tip, in the order the tips were given.
    """

    quotas: tuple[int, int, int]
    points: Sequence[tuple[int, int, int, int]]


ScoringRule: TypeAlias = Callable[[Sequence[tuple[int, int]], tuple[int, int]], ScoreSheet]
"""``rule(tips, (home_score, away_score))``: every non-void tip of a match -> its sheet."""


@dataclass(frozen=True)
class Settlement:
    """A final result to settle: scores and the instant (aware) to stamp as ``scored_at``."""

    match_id: str
    home_score: int
    away_score: int
    scored_at: datetime
    status: str = "finished"


@dataclass(frozen=True)
class LeaderboardRow:
    """A model's standing: predictions scored, points and exact scores over all matches."""

    model_id: str
    display_name: str
    scored: int
    points: int
    exact: int


@dataclass(frozen=True)
class JobLogEntry:
    """One execution of a reference-worker job; ``job_timestamp`` is BullMQ's, in ms."""

    queue: str
    job_name: str
    job_id: str
    job_timestamp: int
    match_id: str | None
    attempts_made: int
    started_at: datetime
    outcome: str


# --- instants ----------------------------------------------------------------------


def iso_utc(instant: datetime) -> str:
    """``instant`` as the host writes it: ``2025-05-20T19:00:00.000Z`` (UTC, milliseconds).

    Raises:
        ValueError: ``instant`` is naive.
    """
    if instant.tzinfo is None:
        raise ValueError(f"naive datetime {instant!r}: expected an aware instant")
    text = instant.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


def parse_instant(text: str) -> datetime:
    """Parse the host's ISO-8601 text (``Z``, ``+00:00``, any offset, any precision) to UTC.

    Text without an offset is taken as UTC.

    Raises:
        ValueError: ``text`` is not ISO-8601.
    """
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
