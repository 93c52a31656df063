"""A small host pipeline (DESIGN §1) for the CLI tests, dated from the real clock.

``retro start --days N`` scans ``[now - N, now]`` with the real clock, so these
rows kick off a few days before the moment they are written. Kick-off times use
every ISO-8601 form the host writes. The expected outcome of a 14-day scan is
recorded in :class:`HostData` next to the rows, so a test reads what to expect
from the same place the data comes from.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import URL, Engine, make_url

from retro.store import db as retro_db
from retro.store import migrate
from retro.store.schema import host_metadata, match_analysis, matches, models, predictions

EXPECTED = 3
"""Active, not auto-disabled models: predictions expected per match."""

MISSING_ANALYSIS = "missing_analysis"
MISSING_PREDICTIONS = "missing_predictions"
UNSCORED = "unscored"


@dataclass
class HostData:
    """What a 14-day scan of the seeded rows must report.

    ``gaps`` maps a gap match id to its kinds; ``complete`` are in the window
    without a gap; ``ignored`` are outside the window or called off (neither
    listed nor reported); ``skipped`` maps an unreadable row's id to a word its
    reason must contain.
    """

    gaps: dict[str, tuple[str, ...]] = field(default_factory=dict)
    complete: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def by_kind(self) -> dict[str, int]:
        """Gap matches per kind (a match may count under several)."""
        counts = dict.fromkeys((MISSING_ANALYSIS, MISSING_PREDICTIONS, UNSCORED), 0)
        for kinds in self.gaps.values():
            for kind in kinds:
                counts[kind] += 1
        return counts


def sync_url(url: str) -> URL:
    """The synchronous twin of a retro database URL (``sqlite`` / ``postgresql+psycopg``)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite")
    return parsed


def engine_for(url: str) -> Engine:
    """A synchronous engine on ``url``; dispose it after use."""
    return create_engine(sync_url(url))


def table_names(url: str) -> set[str]:
    """The tables in ``url``'s database."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def row_counts(url: str) -> dict[str, int]:
    """Rows per table in ``url``'s database (every table, host's and retro's)."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            return {
                name: int(conn.exec_driver_sql(f'SELECT count(*) FROM "{name}"').scalar_one())
                for name in names
            }
    finally:
        engine.dispose()


def files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative path -> size in bytes)."""
    return {
        str(path.relative_to(folder)): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def upgrade_retro(url: str) -> None:
    """Create retro's own tables in ``url``'s database (as ``retro db upgrade`` does)."""

    async def go() -> None:
        engine = retro_db.create_engine(url)
        try:
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(go())


def _ms_z(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _z(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_offset(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="seconds")


def _offset(at: datetime, hours: int) -> str:
    return at.astimezone(timezone(timedelta(hours=hours))).isoformat(timespec="seconds")


def seed_host(url: str, *, now: datetime | None = None, bad_rows: bool = False) -> HostData:
    """Create the host tables in ``url``'s database and fill them.

    Args:
        url: a retro database URL (``sqlite+aiosqlite:///…`` or ``postgresql+psycopg://…``).
        now: aware UTC instant the kick-offs count back from (default: the real clock).
        bad_rows: also add one row with an unparseable ``kickoff_time`` and one
            with an unknown ``status``.

    Returns:
        What a 14-day scan must find.
    """
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    day = timedelta(days=1)
    expect = HostData()
    model_rows = [
        {
            "id": model_id,
            "provider": "e2e",
            "model_name": model_id,
            "display_name": model_id.upper(),
            "active": active,
            "auto_disabled": disabled,
        }
        for model_id, active, disabled in [
            ("m1", True, False),
            ("m2", True, False),
            ("m3", True, False),
            ("m4", False, False),  # retired
            ("m5", True, True),  # auto-disabled
        ]
    ]
    match_rows: list[dict[str, object]] = []
    analysis_rows: list[dict[str, object]] = []
    prediction_rows: list[dict[str, object]] = []

    def match(
        match_id: str,
        kickoff: str,
        status: str,
        score: tuple[int, int] | None = None,
        *,
        favourite: str | bool | None = False,
        predicted: dict[str, str] | None = None,
    ) -> None:
        """One match; ``favourite`` False means no analysis row; ``predicted`` model -> status."""
        match_rows.append(
            {
                "id": match_id,
                "external_id": f"ext-{match_id}",
                "competition_id": "e2e.1",
                "home_team": f"{match_id} Home",
                "away_team": f"{match_id} Away",
                "kickoff_time": kickoff,
                "home_score": score[0] if score else None,
                "away_score": score[1] if score else None,
                "status": status,
            }
        )
        if favourite is not False:
            analysis_rows.append(
                {"id": f"a-{match_id}", "match_id": match_id, "favorite_team_name": favourite}
            )
        for model_id, state in (predicted or {}).items():
            scored = state == "scored"
            prediction_rows.append(
                {
                    "id": f"p-{match_id}-{model_id}",
                    "match_id": match_id,
                    "model_id": model_id,
                    "predicted_home": 1,
                    "predicted_away": 0,
                    "predicted_result": "H",
                    "total_points": 2 if scored else None,
                    "status": state,
                    "created_at": _ms_z(now - 3 * day),
                    "scored_at": _ms_z(now - day) if scored else None,
                }
            )

    all_scored = {"m1": "scored", "m2": "scored", "m3": "scored"}
    all_pending = {"m1": "pending", "m2": "pending", "m3": "pending"}

    match("g-complete", _z(now - 2 * day), "finished", (2, 1), favourite="H", predicted=all_scored)
    expect.complete.append("g-complete")

    match("g-no-analysis", _ms_z(now - 2 * day), "finished", (1, 0), predicted=all_scored)
    expect.gaps["g-no-analysis"] = (MISSING_ANALYSIS,)

    match("g-null-fav", _utc_offset(now - day), "live", favourite=None, predicted=all_pending)
    expect.gaps["g-null-fav"] = (MISSING_ANALYSIS,)

    # m4 is retired: its prediction does not stand in for an active model's.
    match(
        "g-partial",
        _offset(now - 3 * day, 2),
        "finished",
        (0, 0),
        favourite="D",
        predicted={"m1": "scored", "m4": "scored"},
    )
    expect.gaps["g-partial"] = (MISSING_PREDICTIONS,)

    match(
        "g-unscored",
        _offset(now - 4 * day, -5),
        "finished",
        (3, 2),
        favourite="H",
        predicted=all_pending,
    )
    expect.gaps["g-unscored"] = (UNSCORED,)

    match("g-no-preds", _z(now - 5 * day), "scheduled", favourite="A")
    expect.gaps["g-no-preds"] = (MISSING_PREDICTIONS,)

    match("g-all", _ms_z(now - 6 * day), "finished", (1, 1), predicted={"m2": "pending"})
    expect.gaps["g-all"] = (MISSING_ANALYSIS, MISSING_PREDICTIONS, UNSCORED)

    match("x-old", _z(now - 20 * day), "finished", (1, 0))
    match("x-upcoming", _z(now + day), "scheduled")
    match("x-postponed", _z(now - 2 * day), "postponed")
    match("x-cancelled", _ms_z(now - 3 * day), "cancelled")
    expect.ignored += ["x-old", "x-upcoming", "x-postponed", "x-cancelled"]

    if bad_rows:
        # Inside the window by its date prefix, but no valid instant.
        match("b-kickoff", f"{(now - 2 * day):%Y-%m-%d}T25:61:00Z", "finished", (1, 0))
        expect.skipped["b-kickoff"] = "kickoff_time"
        match("b-status", _z(now - 2 * day), "abandoned-by-referee")
        expect.skipped["b-status"] = "status"

    engine = engine_for(url)
    try:
        host_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(models.insert(), model_rows)
            conn.execute(matches.insert(), match_rows)
            conn.execute(match_analysis.insert(), analysis_rows)
            conn.execute(predictions.insert(), prediction_rows)
            assert conn.scalar(select(func.count()).select_from(matches)) == len(match_rows)
    finally:
        engine.dispose()
    return expect
