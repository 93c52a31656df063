"""Finding runs: ``retro runs`` (a filtered list, newest first) and the one resolver
that turns what an operator typed into runs, for ``cancel``, ``retry`` and
``history`` (issue 11).

What an id names (:func:`find`), with ``--of auto`` (the default), in this order:

1. **A run id**: the run with exactly that id (a full id is never also read as a
   prefix). If the text is also a match id (some run is of a match with that id),
   it is ambiguous: exit 2 naming both.
2. **A match id**: the runs of that match. ``cancel`` takes its live run (a match
   has at most one), ``retry`` its latest failed run, ``history`` every run. A text
   that is both a match id and a run-id prefix is exit 2 naming both.
3. **A run-id prefix** of at least :data:`MIN_PREFIX` characters naming exactly one
   run. A prefix that several runs start with is exit 2 listing them (id, match,
   state, created). A shorter prefix is exit 2 saying it is too short.

``--of run`` reads the text only as a run id or a run-id prefix, ``--of match``
only as a match id; that is how an ambiguity is settled. Match ids are host text
and may look like run ids, so nothing is guessed: an ambiguity is never resolved
by preference. Nothing here writes.

``--backfill`` (:func:`resolve_backfill`, for every command that takes one) takes
a backfill id, a unique id prefix of 6 or more characters, or a label naming
exactly one backfill. ``--since`` (:func:`parse_since`) takes an ISO-8601 instant or
date, or a duration back from now.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from retro.app import App
from retro.backfill import Backfill
from retro.errors import UsageError
from retro.machine import LIVE, TERMINAL, Run, State
from retro.store import backfills, runs
from retro.store.listing import Listed, find_runs, runs_with_prefix
from retro.text import escape

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

MIN_PREFIX = 6
"""Fewest characters a run-id prefix may have (run ids have 12)."""
DEFAULT_LIMIT = 50
"""Runs ``retro runs`` shows unless ``--limit`` says otherwise."""
MAX_LIMIT = 10_000
"""Most runs one ``retro runs`` shows (``--json`` included)."""
CANDIDATES = 10
"""Runs or backfills an ambiguity error names (it says how many more there are)."""
LIVE_WORD = "live"
"""``--state live``: every live state (pending, analyzing, predicting, settling)."""
MAX_SINCE = timedelta(days=36_500)
"""How far back a relative ``--since`` may reach."""

_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


class Unresolved(UsageError, LookupError):
    """What the operator typed names no run or backfill, or more than one, or a run
    in the wrong state for the command (exit 2; nothing was written)."""


class Of(StrEnum):
    """How :func:`find` reads an id: as either (``auto``), as a run id or run-id
    prefix only (``run``), or as a match id only (``match``)."""

    AUTO = "auto"
    RUN = "run"
    MATCH = "match"


# --- parsing options ------------------------------------------------------------


def parse_since(text: str, *, now: datetime) -> datetime:
    """The instant (aware UTC) ``--since`` names.

    Accepted: a duration back from ``now`` (aware UTC): digits and one unit, ``s``,
    ``m``, ``h``, ``d`` or ``w`` (``30m``, ``2h``, ``7d``; at most 100 years); or an
    ISO-8601 date or instant (``datetime.fromisoformat``: ``2025-05-26``,
    ``2025-05-26T12:00``, ``2025-05-26T12:00:00+02:00``, ``…Z``). A date means its
    midnight; an instant without an offset is UTC.

    Raises:
        UsageError: anything else (one line, naming the text).
    """
    value = text.strip()
    relative = _DURATION.fullmatch(value)
    if relative is not None:
        back = timedelta(seconds=int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)])
        if back > MAX_SINCE:
            raise UsageError(f"{text!r} reaches back more than 100 years")
        return now - back
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{text!r} is neither an ISO-8601 date or instant (2025-05-26, "
            "2025-05-26T12:00Z) nor a duration back from now (30m, 2h, 7d, 2w)"
        ) from None
    if instant.tzinfo is None:
        return instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def parse_states(values: Iterable[str]) -> tuple[State, ...] | None:
    """The run states ``--state`` names: each value is a state or ``live``, several
    separated by commas or given as repeated options; ``None`` when none is given.

    Raises:
        UsageError: a value that is no state (one line, listing the valid ones).
    """
    chosen: dict[State, None] = {}
    for value in values:
        for word in value.split(","):
            name = word.strip().lower()
            if name == LIVE_WORD:
                chosen.update(dict.fromkeys(LIVE))
                continue
            try:
                chosen[State(name)] = None
            except ValueError:
                valid = ", ".join([*(str(s) for s in State), LIVE_WORD])
                raise UsageError(f"{word.strip()!r} is no run state; one of {valid}") from None
    if not chosen:
        return None
    return tuple(s for s in State if s in chosen)


# --- backfills ----------------------------------------------------------------


CANDIDATES_SHOWN = 10
"""Candidates an ambiguous ``ID|LABEL`` error names (the rest are counted)."""


class BackfillNotFound(Unresolved):
    """No backfill has that id, id prefix or label (exit 2)."""


class AmbiguousBackfill(Unresolved):
    """Several backfills match an ``ID|LABEL`` (exit 2); the message lists them."""


async def resolve_backfill(conn: AsyncConnection, ident: str) -> Backfill:
    """The one backfill ``ident`` names: its exact id, a unique id prefix of at
    least 6 characters, or a label that names exactly one backfill
    (:func:`retro.store.backfills.find`).

    Raises:
        BackfillNotFound: nothing matches.
        AmbiguousBackfill: several match; the one-line message lists them (id,
            label, created), newest first, at most :data:`CANDIDATES_SHOWN`.
    """
    found = await backfills.find(conn, ident)
    if not found:
        raise BackfillNotFound(
            f"no backfill {ident!r} (give an id, an id prefix of 6 or more characters, "
            "or a label; `retro backfills` lists them)"
        )
    if len(found) > 1:
        shown = "; ".join(
            f"{b.id} ({b.label!r}, created {b.created_at:%Y-%m-%d %H:%M} UTC)"
            for b in found[:CANDIDATES_SHOWN]
        )
        more = len(found) - CANDIDATES_SHOWN
        raise AmbiguousBackfill(
            f"{ident!r} names {len(found)} backfills: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + "; give the id"
        )
    return found[0]


# --- retro runs ------------------------------------------------------------------


@dataclass(frozen=True)
class RunFilter:
    """What ``retro runs`` lists: runs in one of ``states``, of the backfill
    ``backfill`` (an id or a label, as typed), of match ``match_id``, created at or
    after ``since`` (aware UTC); ``None`` does not filter. At most ``limit`` runs."""

    states: tuple[State, ...] | None = None
    backfill: str | None = None
    match_id: str | None = None
    since: datetime | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True)
class RunList:
    """``retro runs``: the runs shown (newest first), the backfill ``--backfill``
    resolved to, and how many runs pass the filters in all."""

    filters: RunFilter
    backfill: Backfill | None
    runs: list[Listed]
    total: int

    @property
    def more(self) -> int:
        """Runs that pass the filters but are not shown (``--limit``)."""
        return self.total - len(self.runs)


async def list_runs(app: App, filters: RunFilter) -> RunList:
    """The runs ``filters`` pick, newest (``created_at``) first, at most
    ``filters.limit`` of them, with how many pass the filters in all.

    Raises:
        BackfillNotFound, AmbiguousBackfill: ``filters.backfill`` names no
            backfill, or several.
    """
    async with app.engine.connect() as conn:
        backfill = None
        if filters.backfill is not None:
            backfill = await resolve_backfill(conn, filters.backfill)
        listed, total = await find_runs(
            conn,
            states=filters.states,
            backfill_id=None if backfill is None else backfill.id,
            match_id=filters.match_id,
            since=filters.since,
            limit=filters.limit,
        )
    return RunList(filters=filters, backfill=backfill, runs=listed, total=total)


# --- cancel, retry, history: what an id names ------------------------------------


@dataclass(frozen=True)
class Found:
    """What :func:`find` resolved an id to: ``resolved_as`` is ``"run"`` (``runs``
    holds that one run; given by its id or a prefix of it) or ``"match"`` (``runs``
    holds every run of the match, newest first)."""

    query: str
    resolved_as: str
    runs: list[Run]


async def find(conn: AsyncConnection, ident: str, *, of: Of = Of.AUTO) -> Found:
    """The run or match ``ident`` names (module docstring: the order and the rules).

    Raises:
        Unresolved: ``ident`` names nothing, is too short for a prefix, or is
            ambiguous (several runs start with it, or it is both a run id or
            prefix and a match id); the message lists the candidates.
    """
    as_run = await runs.get(conn, ident) if of is not Of.MATCH else None
    of_match = await runs.runs_of_match(conn, ident) if of is not Of.RUN else []
    if as_run is not None and of_match:
        raise Unresolved(
            f"{ident!r} is both a run id ({_describe(as_run)}) and a match id "
            f"({_counted(of_match, len(of_match))}); say which with --of run or --of match"
        )
    if as_run is not None:
        return Found(ident, "run", [as_run])
    prefixed: list[Run] = []
    count = 0
    if of is not Of.MATCH:
        prefixed, count = await runs_with_prefix(conn, ident, limit=CANDIDATES + 1)
    if of_match and count:
        raise Unresolved(
            f"{ident!r} is both a match id ({_counted(of_match, len(of_match))}) and a "
            f"run-id prefix ({_counted(prefixed, count)}); say which with --of match or --of run"
        )
    if of_match:
        return Found(ident, "match", of_match)
    if count and len(ident) < MIN_PREFIX:
        raise Unresolved(
            f"run-id prefix {ident!r} is too short: give at least {MIN_PREFIX} characters "
            f"({count} run{'s start' if count != 1 else ' starts'} with it)"
        )
    if count == 1:
        return Found(ident, "run", prefixed)
    if count > 1:
        raise Unresolved(
            f"run-id prefix {ident!r} is ambiguous: {count} runs start with it: "
            f"{_listing(prefixed, count)}; give more characters"
        )
    what = {Of.RUN: "no run", Of.MATCH: "no run of match"}.get(of, "no run or match")
    short = ""
    if of is not Of.MATCH and len(ident) < MIN_PREFIX:
        short = f" (a run-id prefix needs at least {MIN_PREFIX} characters)"
    raise Unresolved(f"{what} {ident!r}{short}")


async def live_run(conn: AsyncConnection, ident: str, *, of: Of = Of.AUTO) -> Run:
    """The live run ``ident`` names for ``retro cancel``: the run, or the live run of
    the match.

    Raises:
        Unresolved: as :func:`find`; or the run has ended, or the match has no live run.
    """
    found = await find(conn, ident, of=of)
    if found.resolved_as == "match":
        live = [run for run in found.runs if run.state not in TERMINAL]
        if not live:
            latest = found.runs[0]
            raise Unresolved(
                f"match {ident!r} has no live run to cancel (its latest run {latest.id} "
                f"is {latest.state})"
            )
        return live[0]
    (run,) = found.runs
    if run.state in TERMINAL:
        raise Unresolved(
            f"run {run.id} is already {run.state}; only live runs "
            "(pending, analyzing, predicting, settling) can be cancelled"
        )
    return run


async def failed_run(conn: AsyncConnection, ident: str, *, of: Of = Of.AUTO) -> Run:
    """The failed run ``ident`` names for ``retro retry``: the run, or the latest
    failed run of the match.

    Raises:
        Unresolved: as :func:`find`; or the run is not failed, or the match has no
            failed run.
    """
    found = await find(conn, ident, of=of)
    if found.resolved_as == "match":
        failed = [run for run in found.runs if run.state is State.FAILED]
        if not failed:
            latest = found.runs[0]
            raise Unresolved(
                f"match {ident!r} has no failed run (its latest run {latest.id} is {latest.state})"
            )
        return failed[0]
    (run,) = found.runs
    if run.state is not State.FAILED:
        raise Unresolved(f"run {run.id} is {run.state}, not failed")
    return run


async def each_run(
    conn: AsyncConnection,
    idents: Iterable[str],
    pick: Callable[[AsyncConnection, str], Awaitable[Run]],
) -> list[Run]:
    """The runs ``idents`` name, each once, in the order first named: ``pick`` (e.g.
    :func:`live_run`, :func:`failed_run`) reads each id; two ids naming one run
    give it once.

    Raises:
        Unresolved: from ``pick``, for the first id it refuses (all or nothing).
    """
    chosen: dict[str, Run] = {}
    for ident in idents:
        run = await pick(conn, ident)
        chosen.setdefault(run.id, run)
    return list(chosen.values())


def _when(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe(run: Run) -> str:
    """``3f2a9c1b4d5e (match m-1, done, created 2025-05-26 12:00:00 UTC)``."""
    match = escape(run.match_id)  # host text: a newline in it stays visible, one line
    return f"{escape(run.id)} (match {match}, {run.state}, created {_when(run.created_at)})"


def _listing(found: Sequence[Run], total: int) -> str:
    """The first :data:`CANDIDATES` of ``total`` runs described, and how many more."""
    named = ", ".join(_describe(run) for run in found[:CANDIDATES])
    return named + (f", and {total - CANDIDATES} more" if total > CANDIDATES else "")


def _counted(found: Sequence[Run], total: int) -> str:
    """``2 runs: <described>, <described>``."""
    return f"{total} run{'s' if total != 1 else ''}: {_listing(found, total)}"
