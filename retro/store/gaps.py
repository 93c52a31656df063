"""Gap detection (DESIGN §5): which recent matches miss a stage's data.

A gap match kicked off inside ``[now - days, now]``, has a playable status and
lacks analysis with a favourite, has fewer predictions than expected (counted
by expected model, not by rows), or is finished with unscored predictions.
Matches with a live run, or whose last run ended inside the cooldown, are left
out. ``kickoff_time`` is host text in mixed ISO-8601 forms: rows are narrowed
by a text range on the date prefix (index-friendly), then parsed as instants;
an unparseable row is reported and skipped, never fatal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, exists, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import ColumnElement, Exists, ScalarSelect, Select

from retro.machine import CALLED_OFF_STATUSES, PLAYABLE_STATUSES, SETTLED_STATUSES
from retro.store.runs import blocking_run_clause
from retro.store.schema import backfill_runs, match_analysis, matches, models, predictions


class GapKind(StrEnum):
    """What a gap match is missing."""

    MISSING_ANALYSIS = "missing_analysis"
    MISSING_PREDICTIONS = "missing_predictions"
    UNSCORED = "unscored"


@dataclass(frozen=True)
class Gap:
    """One gap match: its kinds, and predictions found vs expected."""

    match_id: str
    home_team: str | None
    away_team: str | None
    kickoff: datetime
    status: str
    kinds: tuple[GapKind, ...]
    found: int
    expected: int


@dataclass(frozen=True)
class SkippedRow:
    """A match row the scan could not use, and why (one line)."""

    match_id: str
    reason: str


@dataclass(frozen=True)
class Scan:
    """Result of one gap scan over ``[since, until]`` (aware UTC)."""

    since: datetime
    until: datetime
    expected: int
    gaps: list[Gap] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    complete: int = 0  # matches in the window with no gap
    blocked: int = 0  # gap matches with a live run, or a run ended inside the cooldown

    def by_kind(self) -> dict[GapKind, int]:
        """How many gap matches show each kind (a match may show several)."""
        counts = dict.fromkeys(GapKind, 0)
        for gap in self.gaps:
            for kind in gap.kinds:
                counts[kind] += 1
        return counts


def parse_kickoff(value: str | None) -> datetime:
    """The instant of a host ``kickoff_time`` (ISO-8601 text), aware UTC.

    Accepts ``…T19:00:00.000Z``, ``…T19:00:00Z``, ``…+00:00`` and other offsets.
    A value without an offset is read as UTC.

    Raises:
        ValueError: ``value`` is empty or not ISO-8601.
    """
    if not value or not value.strip():
        raise ValueError("kickoff_time is empty")
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


async def expected_models(conn: AsyncConnection, override: int | None = None) -> int:
    """Predictions expected per match: active, not auto-disabled models (or ``override``)."""
    if override is not None:
        return override
    return int(await conn.scalar(expected_models_query()) or 0)


def expected_models_query() -> Select[int]:
    """``SELECT count(*)`` of expected models: ``active AND NOT auto_disabled``."""
    return select(func.count()).where(models.c.active.is_(True), models.c.auto_disabled.is_(False))


def has_analysis() -> Exists:
    """EXISTS: the ``matches`` row has an analysis with a favourite (DESIGN §3 guard)."""
    return exists().where(
        match_analysis.c.match_id == matches.c.id,
        match_analysis.c.favorite_team_name.is_not(None),
    )


def pending_prediction() -> ColumnElement[bool]:
    """WHERE clause: a ``pending`` (unscored) prediction of the ``matches`` row."""
    return and_(predictions.c.match_id == matches.c.id, predictions.c.status == "pending")


def found_predictions() -> ScalarSelect[int]:
    """Scalar subquery: expected models (active, not auto-disabled) with a prediction
    for the ``matches`` row, counted by model, not by rows."""
    return (
        select(func.count())
        .select_from(predictions.join(models, models.c.id == predictions.c.model_id))
        .where(
            predictions.c.match_id == matches.c.id,
            models.c.active.is_(True),
            models.c.auto_disabled.is_(False),
        )
        .scalar_subquery()
    )


async def scan(
    conn: AsyncConnection,
    *,
    now: datetime,
    days: int,
    cooldown: timedelta,
    expected_override: int | None = None,
    clock: datetime | None = None,
    reprocess: Sequence[str] = (),
) -> Scan:
    """Find gap matches that kicked off in ``[now - days, now]``.

    Args:
        now: aware UTC instant the window ends at.
        days: window length in days (>= 0).
        cooldown: how long a finished run keeps its match from being seeded again.
        expected_override: predictions expected per match instead of the model count.
        clock: the current instant the cooldown counts back from (default ``now``;
            differs only when replaying a past window, as the demo does).
        reprocess: terminal run states that do not hold a match in cooldown
            (``failed``), or ``all`` to ignore the cooldown.
    """
    since = now - timedelta(days=days)
    expected = await expected_models(conn, expected_override)
    # ISO text sorts by its date prefix; a day of margin covers any UTC offset.
    lo = (since - timedelta(days=1)).strftime("%Y-%m-%d")
    hi = (now + timedelta(days=2)).strftime("%Y-%m-%d")
    has_pending = exists().where(pending_prediction())
    blocked = exists().where(
        backfill_runs.c.match_id == matches.c.id,
        blocking_run_clause((clock or now) - cooldown, reprocess=reprocess),
    )
    query = (
        select(
            matches.c.id,
            matches.c.home_team,
            matches.c.away_team,
            matches.c.kickoff_time,
            matches.c.status,
            has_analysis().label("has_analysis"),
            found_predictions().label("found"),
            has_pending.label("has_pending"),
            blocked.label("blocked"),
        )
        .where(and_(matches.c.kickoff_time >= lo, matches.c.kickoff_time < hi))
        .order_by(matches.c.kickoff_time, matches.c.id)
    )
    gaps: list[Gap] = []
    skipped = await _unreadable_kickoffs(conn)
    complete = blocked_count = 0
    for row in (await conn.execute(query)).mappings():
        try:
            kickoff = parse_kickoff(row["kickoff_time"])
        except (ValueError, TypeError) as exc:
            skipped.append(
                SkippedRow(row["id"], f"unparseable kickoff_time {row['kickoff_time']!r}: {exc}")
            )
            continue
        if not since <= kickoff <= now:
            continue
        status = row["status"]
        if status not in PLAYABLE_STATUSES:
            if status not in CALLED_OFF_STATUSES:
                skipped.append(SkippedRow(row["id"], f"unknown status {status!r}"))
            continue
        kinds = _kinds(
            has_analysis=bool(row["has_analysis"]),
            found=int(row["found"]),
            expected=expected,
            settled=status in SETTLED_STATUSES,
            has_pending=bool(row["has_pending"]),
        )
        if not kinds:
            complete += 1
            continue
        if row["blocked"]:
            blocked_count += 1
            continue
        gaps.append(
            Gap(
                match_id=row["id"],
                home_team=row["home_team"],
                away_team=row["away_team"],
                kickoff=kickoff,
                status=status,
                kinds=kinds,
                found=int(row["found"]),
                expected=expected,
            )
        )
    gaps.sort(key=lambda gap: (gap.kickoff, gap.match_id))
    return Scan(
        since=since,
        until=now,
        expected=expected,
        gaps=gaps,
        skipped=skipped,
        complete=complete,
        blocked=blocked_count,
    )


UNREADABLE_REPORT_LIMIT = 100
"""Most unreadable-kickoff rows one scan reports."""


UNREADABLE_KICKOFF_SQL = "(kickoff_time IS NULL OR kickoff_time NOT LIKE '____-__-__%')"
"""Rows the window's text range cannot see. A literal, so that the optional partial
index ``ix_matches_unreadable_kickoff`` (README, "Indexes"; same predicate) serves it."""


async def _unreadable_kickoffs(conn: AsyncConnection) -> list[SkippedRow]:
    """Playable matches whose ``kickoff_time`` is NULL or does not start with an
    ISO date: the window's text range cannot see them, so report them here.

    Without the optional partial index this reads all of ``matches`` (about 6 ms
    per 100,000 rows on PostgreSQL, bench/gaps.py); with it, only those rows.
    """
    query = (
        select(matches.c.id, matches.c.kickoff_time)
        .where(matches.c.status.in_(sorted(PLAYABLE_STATUSES)), text(UNREADABLE_KICKOFF_SQL))
        .order_by(matches.c.id)
        .limit(UNREADABLE_REPORT_LIMIT)
    )
    return [
        SkippedRow(match_id, f"unparseable kickoff_time {kickoff!r}: not ISO-8601")
        for match_id, kickoff in await conn.execute(query)
    ]


def _kinds(
    *, has_analysis: bool, found: int, expected: int, settled: bool, has_pending: bool
) -> tuple[GapKind, ...]:
    kinds: list[GapKind] = []
    if not has_analysis:
        kinds.append(GapKind.MISSING_ANALYSIS)
    if found < expected:
        kinds.append(GapKind.MISSING_PREDICTIONS)
    if settled and has_pending:
        kinds.append(GapKind.UNSCORED)
    return tuple(kinds)
