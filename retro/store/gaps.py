"""Gap detection (DESIGN §5): which recent matches miss a stage's data.

A gap match kicked off inside ``[now - days, now]``, has a playable status and
lacks analysis with a favourite, has fewer predictions than expected (counted
by expected model, not by rows), or is finished with unscored predictions.
Matches with a live run, or whose last run ended inside the cooldown, are left
out. ``kickoff_time`` is host text in mixed ISO-8601 forms (:data:`KICKOFF_FORM`).

Every text is classified once, on every backend and collation: readable
(:data:`READABLE_KICKOFF_SQL`, the same rule as :func:`parse_kickoff`) or not.
Readable rows are narrowed by a text range on the date prefix (index-friendly:
for ASCII digits in fixed places, text order is date order under any collation),
then parsed as instants; unreadable rows are read by the complement predicate
alone (:data:`UNREADABLE_KICKOFF_SQL`) and reported, never fatal.
"""

from __future__ import annotations

import re
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
    """One gap match: its kinds, and predictions found vs expected; ``external_id``
    as the host stores it (``None``: NULL)."""

    match_id: str
    home_team: str | None
    away_team: str | None
    kickoff: datetime
    status: str
    kinds: tuple[GapKind, ...]
    found: int
    expected: int
    external_id: str | None = None


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


KICKOFF_FORM = re.compile(
    r"[12][0-9]{3}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-5][0-9])?)?)?"  # offset minutes 00-59, as the SQL rule reads
)
"""The readable ``kickoff_time`` forms (whole text, ASCII digits, no spaces around):
``YYYY-MM-DD``, optionally ``T`` or a space, ``HH:MM``, optional ``:SS`` with 1-6
fraction digits, optional ``Z`` or an offset ``±HH:MM``, ``±HHMM`` or ``±HH`` (the
last is PostgreSQL's own ``timestamptz`` text, e.g. ``2025-05-20 19:00:00+00``).
The values must make a real date and time (year 1000-2999, month 01-12, a day the
month has, hour 00-23, minute and second 00-59, offset below 24 h).
:data:`READABLE_KICKOFF_SQL` states the same rule in SQL."""


def parse_kickoff(value: str | None) -> datetime:
    """The instant of a host ``kickoff_time`` (:data:`KICKOFF_FORM`), aware UTC.

    Accepts ``…T19:00:00.000Z``, ``…T19:00:00Z``, ``…+00:00`` and other offsets.
    A value without an offset is read as UTC.

    Raises:
        ValueError: ``value`` is empty, not one of the readable forms, or not a
            real date and time.
    """
    if not value:
        raise ValueError("kickoff_time is empty")
    if KICKOFF_FORM.fullmatch(value) is None:
        raise ValueError("not ISO-8601 (YYYY-MM-DD[THH:MM[:SS[.ffffff]][Z|±HH[:MM]]])")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _readable_sql(column: str) -> str:
    """:data:`KICKOFF_FORM` and its value ranges as one SQL condition on ``column``,
    in functions SQLite and PostgreSQL share (``replace``, ``substr``, ``length``,
    ``IN`` over literals): exact character tests, no collation, no ``LIKE``."""

    def among(expr: str, values: Sequence[str]) -> str:
        return f"{expr} IN ({', '.join(repr(v) for v in values)})"

    def two(lo: int, hi: int) -> list[str]:
        return [f"{n:02d}" for n in range(lo, hi + 1)]

    def at(start: int, length: int) -> str:
        return f"substr({column}, {start}, {length})"

    # The shape: every digit as 0, an offset's sign as '-', the date/time separator
    # as 'T' (a '+', '-' or space anywhere else then matches no shape). Fewer
    # shapes keep the partial index's predicate under PostgreSQL's row size.
    mask = column
    for digit in "123456789":
        mask = f"replace({mask}, '{digit}', '0')"
    mask = f"replace(replace({mask}, '+', '-'), ' ', 'T')"
    times = ["00:00", "00:00:00"] + ["00:00:00." + "0" * n for n in range(1, 7)]
    masks = ["0000-00-00"] + [
        f"0000-00-00T{time}{offset}"
        for time in times
        for offset in ("", "Z", "-00:00", "-0000", "-00")
    ]
    month, day = at(6, 2), at(9, 2)

    def offset_ok(sign_back: int, shortest: int) -> str:
        """The offset whose sign stands ``sign_back`` characters before the end, in
        texts of at least ``shortest`` characters (shorter ones cannot hold it):
        hours 00-23 and, when it has minutes, their tens 0-5."""
        sign = f"length({column}) - {sign_back}"
        minutes = (
            f" AND {among(f'substr({column}, length({column}) - 1, 1)', list('012345'))}"
            if sign_back > 2
            else ""
        )
        return (
            f"(length({column}) < {shortest} OR substr({column}, {sign}, 1) NOT IN ('+', '-')"
            f" OR ({among(f'substr({column}, {sign} + 1, 2)', two(0, 23))}{minutes}))"
        )

    leap = (
        f"({among(at(3, 2), [f'{n:02d}' for n in range(4, 100, 4)])}"
        f" OR ({at(3, 2)} = '00' AND {among(at(1, 2), [f'{n:02d}' for n in range(0, 100, 4)])}))"
    )
    day_ok = (
        f"({among(day, two(1, 28))}"
        f" OR ({among(day, ['29', '30'])} AND {month} <> '02')"
        f" OR ({day} = '31' AND {among(month, ['01', '03', '05', '07', '08', '10', '12'])})"
        f" OR ({at(6, 5)} = '02-29' AND {leap}))"
    )
    conditions = [
        among(mask, masks),
        f"{at(5, 1)} = '-' AND {at(8, 1)} = '-'",  # the mask took a '+' there for '-'
        among(at(1, 1), ["1", "2"]),
        among(month, two(1, 12)),
        day_ok,
        f"(length({column}) = 10 OR {among(at(12, 2), two(0, 23))})",
        f"(length({column}) = 10 OR {among(at(15, 1), list('012345'))})",
        f"({at(17, 1)} <> ':' OR {among(at(18, 1), list('012345'))})",
        offset_ok(5, 22),  # ±HH:MM
        offset_ok(4, 21),  # ±HHMM
        offset_ok(2, 19),  # ±HH
    ]
    return "(" + " AND ".join(conditions) + ")"


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
            matches.c.external_id,
            matches.c.home_team,
            matches.c.away_team,
            matches.c.kickoff_time,
            matches.c.status,
            has_analysis().label("has_analysis"),
            found_predictions().label("found"),
            has_pending.label("has_pending"),
            blocked.label("blocked"),
        )
        .where(
            and_(
                matches.c.kickoff_time >= lo,
                matches.c.kickoff_time < hi,
                text(READABLE_KICKOFF_SQL),  # the unreadable rest: _unreadable_kickoffs
            )
        )
        .order_by(matches.c.kickoff_time, matches.c.id)
    )
    gaps: list[Gap] = []
    skipped = await _unreadable_kickoffs(conn)
    complete = blocked_count = 0
    for row in (await conn.execute(query)).mappings():
        try:
            kickoff = parse_kickoff(row["kickoff_time"])
        except (ValueError, TypeError):  # SQL said readable: a disagreement, still once
            skipped.append(_unreadable(row["id"], row["kickoff_time"]))
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
                external_id=row["external_id"],
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


READABLE_KICKOFF_SQL = _readable_sql("kickoff_time")
"""A ``kickoff_time`` that :func:`parse_kickoff` reads, as SQL; false for NULL."""

UNREADABLE_KICKOFF_SQL = f"(kickoff_time IS NULL OR NOT {READABLE_KICKOFF_SQL})"
"""Every row the scan cannot read: the exact complement of :data:`READABLE_KICKOFF_SQL`.
A literal, so that the optional partial index ``ix_matches_unreadable_kickoff``
(docs/production.md, "Optional indexes"; same predicate) serves it."""


async def _unreadable_kickoffs(conn: AsyncConnection) -> list[SkippedRow]:
    """Playable matches whose ``kickoff_time`` is NULL or not readable (the window's
    query sees only readable rows), each with why :func:`parse_kickoff` refuses it.

    Without the optional partial index this reads all of ``matches`` (about 6 ms
    per 100,000 rows on PostgreSQL, bench/gaps.py); with it, only those rows.
    """
    query = (
        select(matches.c.id, matches.c.kickoff_time)
        .where(matches.c.status.in_(sorted(PLAYABLE_STATUSES)), text(UNREADABLE_KICKOFF_SQL))
        .order_by(matches.c.id)
        .limit(UNREADABLE_REPORT_LIMIT)
    )
    return [_unreadable(match_id, kickoff) for match_id, kickoff in await conn.execute(query)]


def _unreadable(match_id: str, kickoff: str | None) -> SkippedRow:
    try:
        parse_kickoff(kickoff)
        why = "not ISO-8601"  # only if the SQL rule and parse_kickoff disagree
    except (ValueError, TypeError) as exc:
        why = str(exc)
    return SkippedRow(match_id, f"unparseable kickoff_time {kickoff!r}: {why}")


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
