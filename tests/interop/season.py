"""A small host pipeline with every kind of gap, for the Node interop tests.

Rows are dated from the real clock (``retro start --days 14`` scans up to now):
six teams with a month of played history outside the window, then gap matches
inside it. Five models: three expected (``m1`` to ``m3``), one retired (``m4``), one
auto-disabled (``m5``); a worker that predicts for the last two is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

from sqlalchemy import select

from retro.pipeline.host import pipeline_metadata
from retro.store import migrate
from retro.store.db import create_engine
from retro.store.schema import host_metadata, match_analysis, matches, models, predictions
from tests.e2e.hostdata import engine_for

EXPECTED = 3
"""Predictions expected per match: models active and not auto-disabled."""

TEAMS = ("Northbridge", "Eastport", "Westfield", "Southvale", "Highmoor", "Lowden")

Tip = tuple[int | None, int | None, str]
"""A seeded prediction: (home goals, away goals, status)."""


@dataclass(frozen=True)
class GapMatch:
    """One seeded gap match: what it lacks, and how the Node workers treat it."""

    match_id: str
    days_ago: float
    kickoff_form: str  # "ms_z", "z", "utc_offset", "plus2", "minus5"
    status: str
    score: tuple[int, int] | None
    analysis: str | bool | None  # False: no row; None: a row without a favourite
    tips: dict[str, Tip]
    kinds: tuple[str, ...]

    @property
    def settleable(self) -> bool:
        """Finished (or awarded) with a score: settlement must score it."""
        return self.status in ("finished", "awarded") and self.score is not None


A, P, U = "missing_analysis", "missing_predictions", "unscored"

GAPS: tuple[GapMatch, ...] = (
    GapMatch("n-all", 1, "ms_z", "finished", (2, 1), False, {}, (A, P)),
    GapMatch(
        "n-nullfav",
        2,
        "utc_offset",
        "finished",
        (0, 0),
        None,
        {"m1": (0, 0, "pending"), "m2": (1, 0, "pending"), "m3": (0, 2, "pending")},
        (A, U),
    ),
    GapMatch("n-live", 0.1, "z", "live", None, False, {}, (A, P)),
    GapMatch("n-short", 3, "plus2", "finished", (1, 3), "home", {"m1": (0, 2, "pending")}, (P, U)),
    GapMatch("n-nopreds", 4, "z", "scheduled", None, "away", {}, (P,)),
    GapMatch(
        "n-void",
        5,
        "minus5",
        "finished",
        (2, 2),
        "home",
        {"m1": (1, 1, "pending"), "m2": (None, None, "pending")},
        (P, U),
    ),
    GapMatch(
        "n-unscored",
        6,
        "z",
        "finished",
        (3, 0),
        "home",
        {"m1": (2, 0, "pending"), "m2": (1, 1, "pending"), "m3": (3, 0, "pending")},
        (U,),
    ),
    GapMatch(
        "n-awarded",
        7,
        "ms_z",
        "awarded",
        (3, 0),
        "home",
        {"m1": (1, 0, "scored"), "m2": (0, 1, "pending"), "m3": (2, 1, "pending")},
        (U,),
    ),
    GapMatch("f-analysis", 8, "z", "finished", (1, 1), False, {}, (A, P)),
    GapMatch("f-predict", 8.5, "ms_z", "finished", (0, 1), "away", {}, (P,)),
    GapMatch(
        "f-settle",
        9,
        "utc_offset",
        "finished",
        (2, 0),
        "home",
        {"m1": (1, 0, "pending"), "m2": (2, 0, "pending"), "m3": (0, 0, "pending")},
        (U,),
    ),
    GapMatch("s-short", 9.5, "z", "finished", (1, 2), "away", {}, (P,)),
    GapMatch("epl:2024:123", 1.5, "z", "finished", (2, 2), False, {}, (A, P)),
    GapMatch("n-all:logs", 2.5, "ms_z", "finished", (0, 1), False, {}, (A, P)),
)
"""The gap matches. ``f-*`` fail once in the named stage, ``s-short`` writes one
prediction on its first predictions job (see the test's worker settings).
``epl:2024:123`` holds ``:`` (Node bullmq refuses such a custom job id) and
``n-all:logs`` would, as a raw job id, be the logs list of ``n-all``'s job: retro
encodes both into their job ids (docs/config.md, "Job-id formats")."""
COLON_IDS = ("epl:2024:123", "n-all:logs")

NOT_GAPS = ("c-complete", "x-upcoming", "x-postponed")


def _kickoff(at: datetime, form: str) -> str:
    at = at.astimezone(UTC).replace(microsecond=0)
    if form == "ms_z":
        return at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if form == "z":
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == "utc_offset":
        return at.isoformat()
    hours = {"plus2": 2, "minus5": -5}[form]
    return at.astimezone(timezone(timedelta(hours=hours))).isoformat()


async def seed(database_url: str, *, only: tuple[str, ...] | None = None) -> list[GapMatch]:
    """Create the host tables, retro's tables and ``pipeline_job_log``; fill the host's.

    Args:
        database_url: a ``postgresql+psycopg://`` (or SQLite) URL of an empty database.
        only: seed just these gap match ids (history and non-gaps always).

    Returns:
        The gap matches seeded.
    """
    now = datetime.now(UTC)
    day = timedelta(days=1)
    chosen = [g for g in GAPS if only is None or g.match_id in only]
    teams = iter(pairwise((*TEAMS, *TEAMS, *TEAMS)))
    model_rows = [
        {"id": m, "provider": "interop", "model_name": m, "display_name": m.upper(),
         "active": active, "auto_disabled": disabled}
        for m, active, disabled in [
            ("m1", True, False),
            ("m2", True, False),
            ("m3", True, False),
            ("m4", False, False),
            ("m5", True, True),
        ]
    ]  # fmt: skip
    match_rows: list[dict[str, object]] = []
    analysis_rows: list[dict[str, object]] = []
    prediction_rows: list[dict[str, object]] = []
    for i, (home, away) in enumerate(pairwise(TEAMS * 3)):  # a month of history
        match_rows.append(
            {"id": f"h-{i:02d}", "external_id": f"ext-h-{i:02d}", "competition_id": "ix.1",
             "home_team": home, "away_team": away,
             "kickoff_time": _kickoff(now - (20 + 2 * i) * day, "z"),
             "home_score": (i * 7) % 4, "away_score": (i * 5) % 3, "status": "finished"}
        )  # fmt: skip

    def add(
        match_id: str,
        kickoff: str,
        status: str,
        score: tuple[int, int] | None,
        analysis: str | bool | None,
        tips: dict[str, Tip],
    ) -> None:
        home, away = next(teams)
        match_rows.append(
            {"id": match_id, "external_id": f"ext-{match_id}", "competition_id": "ix.1",
             "home_team": home, "away_team": away, "kickoff_time": kickoff,
             "home_score": score[0] if score else None,
             "away_score": score[1] if score else None, "status": status}
        )  # fmt: skip
        if analysis is not False:
            favourite = {"home": home, "away": away, None: None}[analysis]  # type: ignore[index]
            analysis_rows.append(
                {"id": f"a-{match_id}", "match_id": match_id, "favorite_team_name": favourite,
                 "home_win_pct": 45, "draw_pct": 27, "away_win_pct": 28}
            )  # fmt: skip
        for model_id, (h, a, state) in tips.items():
            scored = state == "scored"
            prediction_rows.append(
                {"id": f"p-{match_id}-{model_id}", "match_id": match_id, "model_id": model_id,
                 "predicted_home": h, "predicted_away": a,
                 "predicted_result": None if h is None or a is None else
                 ("H" if h > a else "A" if h < a else "D"),
                 "tendency_points": 2 if scored else None,
                 "goal_diff_bonus": 0 if scored else None,
                 "exact_score_bonus": 0 if scored else None,
                 "total_points": 2 if scored else None, "status": state,
                 "created_at": _kickoff(now - 10 * day, "ms_z"),
                 "scored_at": _kickoff(now - day, "ms_z") if scored else None}
            )  # fmt: skip

    for gap in chosen:
        add(
            gap.match_id,
            _kickoff(now - gap.days_ago * day, gap.kickoff_form),
            gap.status,
            gap.score,
            gap.analysis,
            gap.tips,
        )
    everyone = {m: (1, 0, "scored") for m in ("m1", "m2", "m3")}
    add("c-complete", _kickoff(now - 2 * day, "z"), "finished", (1, 0), "home", everyone)
    add("x-upcoming", _kickoff(now + day, "z"), "scheduled", None, False, {})
    add("x-postponed", _kickoff(now - 3 * day, "z"), "postponed", None, False, {})

    engine = engine_for(database_url)
    try:
        host_metadata.create_all(engine)
        pipeline_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(models.insert(), model_rows)
            conn.execute(matches.insert(), match_rows)
            if analysis_rows:
                conn.execute(match_analysis.insert(), analysis_rows)
            if prediction_rows:
                conn.execute(predictions.insert(), prediction_rows)
            assert len(conn.execute(select(matches.c.id)).all()) == len(match_rows)
    finally:
        engine.dispose()
    retro_engine = create_engine(database_url)
    try:
        await migrate.upgrade(retro_engine)
    finally:
        await retro_engine.dispose()
    return chosen
