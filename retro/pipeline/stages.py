"""Each stage's database work, shared by the BullMQ workers and the demo seeder.

A stage function reads what it needs from the host tables, calls the pure
pipeline (analysis, models, scoring) and writes the result idempotently: run it
twice and the second run writes nothing. ``now`` comes in as an argument (the
worker shell reads the clock once per job).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from retro.pipeline import host
from retro.pipeline.analysis import PRIOR_GOALS, Analysis, analyze
from retro.pipeline.host_rows import (
    SETTLED_STATUSES,
    AnalysisRow,
    HostError,
    MatchRow,
    NewPrediction,
    ScoreSheet,
    Settlement,
    iso_utc,
)
from retro.pipeline.host_settlement import settle_match
from retro.pipeline.models import model_for, predict
from retro.pipeline.scoring import settle, tendency


class StageError(RuntimeError):
    """A stage cannot run for this match; the one-line message says why."""


# --- conversions (pure) ---------------------------------------------------------------


def analysis_row(match_id: str, analysis: Analysis) -> AnalysisRow:
    """The ``match_analysis`` row for ``analysis``; goal columns hold ``"scored/conceded"``."""
    return AnalysisRow(
        match_id=match_id,
        favorite_team_name=analysis.favorite_team_name,
        home_win_pct=analysis.home_win_pct,
        draw_pct=analysis.draw_pct,
        away_win_pct=analysis.away_win_pct,
        home_form=analysis.home_form,
        away_form=analysis.away_form,
        home_goals_avg=f"{analysis.home_scored_avg:.2f}/{analysis.home_conceded_avg:.2f}",
        away_goals_avg=f"{analysis.away_scored_avg:.2f}/{analysis.away_conceded_avg:.2f}",
    )


def _goals(text: str | None) -> tuple[float, float]:
    """``"1.60/0.80"`` -> (1.6, 0.8); a bare number is the scored average; junk -> the prior."""
    parts = (text or "").split("/")
    try:
        scored = float(parts[0])
        conceded = float(parts[1]) if len(parts) > 1 else PRIOR_GOALS
    except ValueError:
        return PRIOR_GOALS, PRIOR_GOALS
    return scored, conceded


def analysis_from_row(row: AnalysisRow, home_team: str, away_team: str) -> Analysis:
    """Rebuild an :class:`Analysis` from a stored row, tolerating a host's sparse rows.

    Missing percentages default to 45/27/28 in the favourite's favour; missing
    goal averages to the league prior.
    """
    favourite = row.favorite_team_name or home_team
    home_pct, draw_pct, away_pct = (
        (row.home_win_pct, row.draw_pct, row.away_win_pct)
        if None not in (row.home_win_pct, row.draw_pct, row.away_win_pct)
        else ((45, 27, 28) if favourite != away_team else (28, 27, 45))
    )
    home_scored, home_conceded = _goals(row.home_goals_avg)
    away_scored, away_conceded = _goals(row.away_goals_avg)
    return Analysis(
        home_team=home_team,
        away_team=away_team,
        favorite_team_name=favourite,
        home_win_pct=int(home_pct or 0),
        draw_pct=int(draw_pct or 0),
        away_win_pct=int(away_pct or 0),
        home_form=row.home_form or "",
        away_form=row.away_form or "",
        home_scored_avg=home_scored,
        home_conceded_avg=home_conceded,
        away_scored_avg=away_scored,
        away_conceded_avg=away_conceded,
    )


def new_predictions(
    match_id: str, analysis: Analysis, model_ids: Iterable[str], *, created_at: datetime
) -> list[NewPrediction]:
    """One pending prediction per model id (see :func:`retro.pipeline.models.model_for`)."""
    made: list[NewPrediction] = []
    for model_id in model_ids:
        home, away = predict(model_for(model_id), analysis)
        made.append(NewPrediction(match_id, model_id, home, away, tendency(home, away), created_at))
    return made


def kicktipp(tips: Sequence[tuple[int, int]], result: tuple[int, int]) -> ScoreSheet:
    """The Kicktipp quota rule as a :data:`retro.pipeline.host_rows.ScoringRule`."""
    quotas, points = settle(tips, result)
    return ScoreSheet(
        quotas=(quotas.home, quotas.draw, quotas.away),
        points=[
            (p.tendency_points, p.goal_diff_bonus, p.exact_score_bonus, p.total_points)
            for p in points
        ],
    )


# --- stages (database) ---------------------------------------------------------------


async def _match(engine: host.HostEngine, match_id: str) -> tuple[MatchRow, datetime]:
    match = await host.get_match(engine, match_id)
    if match is None:
        raise StageError(f"match {match_id} not found")
    try:
        return match, match.kickoff
    except ValueError:
        raise StageError(
            f"match {match_id} has an unreadable kickoff_time {match.kickoff_time!r}"
        ) from None


def _check_retroactive(match_id: str, kickoff: datetime, now: datetime, allowed: bool) -> None:
    if kickoff <= now and not allowed:
        raise StageError(
            f"match {match_id} kicked off at {iso_utc(kickoff)}; allowRetroactive is not set"
        )


async def run_analysis(
    engine: host.HostEngine,
    match_id: str,
    *,
    now: datetime,
    allow_retroactive: bool = False,
    teams: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """Analyse ``match_id`` from the results before its kick-off, unless already analysed.

    Args:
        engine: the host database.
        match_id: ``matches.id``.
        now: the current instant (aware, UTC).
        allow_retroactive: analyse a match that has already kicked off.
        teams: the payload's (homeTeam, awayTeam); checked against the match when given.

    Returns:
        ``{"written": 0 or 1, "favorite": name}``.

    Raises:
        StageError: unknown match, unreadable kick-off, teams disagree, or the
            match kicked off and retroactive analysis is not allowed.
    """
    match, kickoff = await _match(engine, match_id)
    for given, stored in zip(teams, (match.home_team, match.away_team), strict=True):
        if given is not None and given != stored:
            raise StageError(f"payload team {given!r} is not in match {match_id} ({stored!r})")
    present = await host.get_analysis(engine, match_id)
    if present is not None and present.favorite_team_name is not None:
        return {"written": 0, "favorite": present.favorite_team_name}
    _check_retroactive(match_id, kickoff, now, allow_retroactive)
    history = await host.team_history(engine, [match.home_team, match.away_team], before=kickoff)
    result = analyze(match.home_team, match.away_team, kickoff, history)
    await host.upsert_analysis(engine, analysis_row(match_id, result))
    return {"written": 1, "favorite": result.favorite_team_name}


async def run_predictions(
    engine: host.HostEngine, match_id: str, *, now: datetime, allow_retroactive: bool = False
) -> dict[str, Any]:
    """Write a prediction for every active, not auto-disabled model that lacks one.

    Args:
        engine: the host database.
        match_id: ``matches.id``.
        now: the current instant (aware, UTC); stamped as ``created_at``.
        allow_retroactive: predict a match that has already kicked off.

    Returns:
        ``{"written": n, "expected": models}``.

    Raises:
        StageError: unknown match, no analysis with a favourite, or a kicked-off
            match without ``allow_retroactive``.
    """
    match, kickoff = await _match(engine, match_id)
    row = await host.get_analysis(engine, match_id)
    if row is None or row.favorite_team_name is None:
        raise StageError(f"match {match_id} has no analysis (no favourite): analyse it first")
    expected = [m.id for m in await host.active_models(engine)]
    done = await host.predicted_model_ids(engine, match_id)
    missing = [model_id for model_id in expected if model_id not in done]
    if not missing:
        return {"written": 0, "expected": len(expected)}
    _check_retroactive(match_id, kickoff, now, allow_retroactive)
    analysis = analysis_from_row(row, match.home_team, match.away_team)
    made = new_predictions(match_id, analysis, missing, created_at=now)
    written = await host.insert_predictions(engine, made)
    return {"written": written, "expected": len(expected)}


async def run_settlement(
    engine: host.HostEngine,
    match_id: str,
    *,
    home_score: int | None,
    away_score: int | None,
    status: str,
    now: datetime,
) -> dict[str, Any]:
    """Score the match's pending predictions with the Kicktipp quota rule.

    Args:
        engine: the host database.
        match_id: ``matches.id``.
        home_score: final home goals (required).
        away_score: final away goals (required).
        status: must be ``finished`` or ``awarded``.
        now: the current instant (aware, UTC); stamped as ``scored_at``.

    Returns:
        ``{"written": predictions scored}`` (0 when all were scored already).

    Raises:
        StageError: the match is not final, a score is missing, the match is
            unknown or holds different scores.
    """
    if status not in SETTLED_STATUSES:
        raise StageError(f"match {match_id} is {status!r}, not finished: nothing to settle")
    if home_score is None or away_score is None:
        raise StageError(f"match {match_id} has no final score: nothing to settle")
    item = Settlement(match_id, home_score, away_score, now, status)
    try:
        scored = await settle_match(engine, item, kicktipp)
    except HostError as exc:
        raise StageError(str(exc)) from None
    return {"written": scored}
