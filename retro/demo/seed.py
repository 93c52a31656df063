"""Seed a host database with the bundled season and an outage's damage.

Every match that kicked off before ``now - outage_days`` went through the
normal pipeline: analysed from the results before it (T-1 day), predicted by
all 42 baseline models (T-30 min) and, when it has a final score, settled with
the Kicktipp quota rule (T+2 h). The pure pipeline functions run in process
and the rows go in through :mod:`retro.pipeline.host` in bulk, so the whole season
takes seconds on SQLite.

Matches inside the outage window ``[now - outage_days, now]`` are left damaged,
deterministically, by their position in kick-off order: some have no analysis
(half of those a stub row whose favourite is NULL, "never really fetched"),
some an analysis but no predictions, some part of the predictions, some every
prediction but no settlement, and some are fine. Matches after ``now`` stay
``scheduled`` without scores, untouched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from retro.demo.fixtures import Fixture, load_fixtures
from retro.pipeline import host
from retro.pipeline.analysis import analyze
from retro.pipeline.host_rows import (
    AnalysisRow,
    MatchRow,
    ModelRow,
    NewPrediction,
    PlayedMatch,
    Settlement,
    iso_utc,
)
from retro.pipeline.host_settlement import settle_matches
from retro.pipeline.models import MODELS
from retro.pipeline.stages import analysis_from_row, analysis_row, kicktipp, new_predictions

PREDICTED_BEFORE = timedelta(minutes=30)
SETTLED_AFTER = timedelta(hours=2)

DAMAGE_CYCLE = (
    "no_analysis",
    "no_predictions",
    "partial_predictions",
    "unscored",
    "complete",
    "partial_predictions",
    "no_analysis",
    "unscored",
    "no_predictions",
    "complete",
)
"""Damage by position in the outage window, repeating."""


@dataclass(frozen=True)
class DemoSeed:
    """What :func:`seed_demo` wrote. Window counts are by kind of damage.

    ``complete`` includes window matches with no result yet (``unplayed``):
    every prediction is there and pending, which is not a gap.
    """

    now: datetime
    window_start: datetime
    models: int
    matches: int
    before_window: int
    upcoming: int
    no_analysis: int
    stub_analysis: int
    no_predictions: int
    partial_predictions: int
    unscored: int
    complete: int
    unplayed: int

    @property
    def gaps(self) -> int:
        """Window matches a gap scan should find (all but ``complete``)."""
        return self.no_analysis + self.no_predictions + self.partial_predictions + self.unscored


def kickoff_text(fixture: Fixture, index: int) -> str:
    """The kick-off as the host might have written it; mostly ``…T19:00:00.000Z``.

    Every 20 rows, one is written without milliseconds, one with ``+00:00`` and
    one with the league's local offset (``+02:00`` in May), as DESIGN §1 warns.
    """
    style = index % 20
    if style == 3:
        return fixture.kickoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style == 9:
        return fixture.kickoff.isoformat()
    if style == 15:
        return fixture.local_kickoff.isoformat()
    return iso_utc(fixture.kickoff)


def _match_row(fixture: Fixture, index: int, now: datetime) -> MatchRow:
    played = fixture.kickoff <= now and fixture.home_score is not None
    return MatchRow(
        id=fixture.match_id,
        external_id=fixture.external_id,
        competition_id=fixture.competition_id,
        home_team=fixture.home_team,
        away_team=fixture.away_team,
        kickoff_time=kickoff_text(fixture, index),
        home_score=fixture.home_score if played else None,
        away_score=fixture.away_score if played else None,
        status=fixture.status if played else "scheduled",
    )


def _history(fixtures: Sequence[Fixture], now: datetime) -> dict[str, list[PlayedMatch]]:
    by_team: dict[str, list[PlayedMatch]] = defaultdict(list)
    for f in fixtures:
        if f.kickoff <= now and f.home_score is not None and f.away_score is not None:
            played = PlayedMatch(f.home_team, f.away_team, f.kickoff, f.home_score, f.away_score)
            by_team[f.home_team].append(played)
            by_team[f.away_team].append(played)
    return by_team


async def seed_demo(
    engine: host.HostEngine,
    *,
    now: datetime,
    outage_days: int = 14,
    competitions: Collection[str] | None = None,
) -> DemoSeed:
    """Create the host tables and fill them with the season as of ``now``, outage included.

    Args:
        engine: an empty (or already seeded: writes are idempotent) host database.
        now: the demo's present, an aware instant (the demo uses 2025-05-26T12:00Z).
        outage_days: length of the outage window ending at ``now``, in days.
        competitions: seed only these competition ids (default: all five leagues).

    Returns:
        Counts of what was written, by kind.

    Raises:
        ValueError: ``now`` is naive or ``outage_days`` is negative.
    """
    if now.tzinfo is None:
        raise ValueError("now must be an aware instant")
    if outage_days < 0:
        raise ValueError(f"outage_days must be >= 0, got {outage_days}")
    window_start = now - timedelta(days=outage_days)
    fixtures = [
        f for f in load_fixtures() if competitions is None or f.competition_id in competitions
    ]
    await host.create_host_tables(engine)
    await host.insert_models(
        engine, [ModelRow(m.id, m.provider, m.model_name, m.display_name) for m in MODELS]
    )
    await host.insert_matches(engine, [_match_row(f, i, now) for i, f in enumerate(fixtures)])

    history = _history(fixtures, now)
    model_ids = [m.id for m in MODELS]
    analyses: list[AnalysisRow] = []
    tips: list[NewPrediction] = []
    settlements: list[Settlement] = []
    counts: dict[str, int] = defaultdict(int)
    in_window = 0
    for f in fixtures:
        if f.kickoff > now:
            counts["upcoming"] += 1
            continue
        played = f.home_score is not None and f.away_score is not None
        if f.kickoff < window_start:
            kind = "healthy"
        else:
            kind = DAMAGE_CYCLE[in_window % len(DAMAGE_CYCLE)]
            if kind == "unscored" and not played:
                kind = "complete"
            counts["unplayed"] += not played
            in_window += 1
        counts[kind] += 1
        if kind == "no_analysis":
            if counts[kind] % 2 == 0:
                analyses.append(AnalysisRow(f.match_id, None))
                counts["stub_analysis"] += 1
            continue
        past = history[f.home_team] + history[f.away_team]
        row = analysis_row(f.match_id, analyze(f.home_team, f.away_team, f.kickoff, past))
        analyses.append(row)
        if kind == "no_predictions":
            continue
        chosen = model_ids
        if kind == "partial_predictions":
            chosen = model_ids[: 5 + (in_window * 13) % 30]
        analysis = analysis_from_row(row, f.home_team, f.away_team)
        created = f.kickoff - PREDICTED_BEFORE
        tips.extend(new_predictions(f.match_id, analysis, chosen, created_at=created))
        if kind in ("healthy", "complete") and played:
            assert f.home_score is not None and f.away_score is not None
            settlements.append(
                Settlement(
                    f.match_id, f.home_score, f.away_score, f.kickoff + SETTLED_AFTER, f.status
                )
            )

    await host.upsert_analyses(engine, analyses)
    await host.insert_predictions(engine, tips)
    await settle_matches(engine, settlements, kicktipp)
    return DemoSeed(
        now=now,
        window_start=window_start,
        models=len(MODELS),
        matches=len(fixtures),
        before_window=counts["healthy"],
        upcoming=counts["upcoming"],
        no_analysis=counts["no_analysis"],
        stub_analysis=counts["stub_analysis"],
        no_predictions=counts["no_predictions"],
        partial_predictions=counts["partial_predictions"],
        unscored=counts["unscored"],
        complete=counts["complete"],
        unplayed=counts["unplayed"],
    )
