"""The operator commands on a backfill as a unit (issue 11): ``listing``
(``retro backfills``), ``status`` of one (``retro status --backfill``),
``pause``/``resume``, ``cancel`` and ``retry`` (``--backfill`` of each), and
``resolve``: which backfill an operator's ``ID|LABEL`` names.

Each steering command records what it did in ``backfill_actions``
(:class:`retro.backfill.ActionType`), by the OS user, in the transaction of the
change it records. A pause is the ``backfills.paused`` flag: the daemon's tick
reads it (:attr:`retro.machine.Facts.backfill_paused`: no new job) and every
append of a job request checks it under the backfill's row lock
(:func:`retro.store.runs.refuse_if_paused`), so rival daemons respect it too.

Times come in as arguments (aware UTC).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from retro import commands
from retro.app import App
from retro.backfill import Action, ActionType, os_user
from retro.commands import CancelReport, Refused, StatusReport
from retro.config import mask
from retro.logs import run_fields
from retro.lookup import resolve_backfill as resolve
from retro.machine import LIVE, State, clip
from retro.progress import DEFAULT_WINDOW, BackfillSummary, summaries
from retro.store import backfills, runs

log = logging.getLogger("retro")


@dataclass(frozen=True)
class Listing:
    """``retro backfills``: the ``limit`` newest backfills (``summaries``, newest
    first) out of ``total`` stored."""

    summaries: list[BackfillSummary]
    total: int
    window: float


async def listing(
    app: App, *, now: datetime, window: float = DEFAULT_WINDOW, limit: int = 50
) -> Listing:
    """The ``limit`` newest backfills with their state, progress and ETA at ``now``
    (aware UTC; the ETA's rate over the last ``window`` seconds)."""
    async with app.engine.connect() as conn:
        found = await summaries(conn, now=now, window=window, limit=limit)
        total = await backfills.count(conn)
    return Listing(summaries=found, total=total, window=window)


async def status(
    app: App, ident: str, *, now: datetime, window: float = DEFAULT_WINDOW
) -> StatusReport:
    """``retro status --backfill ID|LABEL``: :func:`retro.commands.status` of that
    backfill's runs alone (its ``backfill`` set).

    Raises:
        BackfillNotFound, AmbiguousBackfill: see :func:`resolve`.
    """
    async with app.engine.connect() as conn:
        backfill = await resolve(conn, ident)
    return await commands.status(app, now=now, window=window, backfill_id=backfill.id)


@dataclass(frozen=True)
class Steered:
    """What a steering command did to a backfill.

    Attributes:
        action: what was asked (``BackfillPaused``, ``BackfillResumed``, …).
        summary: the backfill after it, with its runs and progress.
        changed: something changed (``False``: it already was so; nothing recorded).
        by: the OS user recorded; at: when (aware UTC).
        runs: the runs acted on (re-armed by a retry; empty for pause and resume).
        since: for an unchanged pause, the last ``BackfillPaused`` (who and when).
    """

    action: ActionType
    summary: BackfillSummary
    changed: bool
    by: str
    at: datetime
    runs: list[str] = field(default_factory=list)
    since: Action | None = None


async def pause(app: App, ident: str, *, now: datetime, by: str | None = None) -> Steered:
    """Pause the backfill ``ident`` names: its runs start no new job from the
    daemon's next tick (a job already queued or active finishes and is judged).
    Idempotent: pausing a paused backfill changes and records nothing.

    Raises:
        BackfillNotFound, AmbiguousBackfill: see :func:`resolve`.
        Refused: the backfill was cancelled.
    """
    return await _set_paused(app, ident, True, now=now, by=by or os_user())


async def resume(app: App, ident: str, *, now: datetime, by: str | None = None) -> Steered:
    """Resume the backfill ``ident`` names: its runs go on at the daemon's next tick,
    each taking a free ``max_in_flight`` slot first. Idempotent, as :func:`pause`.

    Raises:
        BackfillNotFound, AmbiguousBackfill: see :func:`resolve`.
    """
    return await _set_paused(app, ident, False, now=now, by=by or os_user())


async def _set_paused(app: App, ident: str, paused: bool, *, now: datetime, by: str) -> Steered:
    action = ActionType.PAUSED if paused else ActionType.RESUMED
    async with app.engine.begin() as conn:
        backfill = await resolve(conn, ident)
        if backfill.cancelled_at is not None:
            raise Refused(
                f"backfill {backfill.id} ({backfill.label!r}) was cancelled at "
                f"{backfill.cancelled_at:%Y-%m-%d %H:%M} UTC; there is nothing to "
                + (
                    "pause"
                    if paused
                    else "resume: `retro start --reprocess failed` seeds its gaps anew"
                )
            )
        changed = await backfills.set_paused(conn, backfill.id, paused)
        tally = (await backfills.tallies(conn, backfill_id=backfill.id)).get(backfill.id)
        live = 0 if tally is None else tally.live
        if changed:
            await backfills.record(
                conn, Action(backfill.id, action, by=by, at=now, data={"live_runs": live})
            )
        since = None
        if not changed and paused:
            done = await backfills.actions(conn, backfill.id)
            since = next((a for a in reversed(done) if a.type is action), None)
    if changed:
        log.info("%s backfill=%s by=%s live_runs=%d", action, backfill.id, by, live)
    return Steered(action, await _summary(app, backfill.id, now), changed, by, now, since=since)


async def _summary(app: App, backfill_id: str, now: datetime) -> BackfillSummary:
    async with app.engine.connect() as conn:
        (summary,) = await summaries(conn, now=now, backfill_id=backfill_id)
    return summary


@dataclass(frozen=True)
class BackfillCancel:
    """``retro cancel --backfill``: the backfill after it, and the runs cancelled
    (``report``) by ``by`` at ``at`` (aware UTC)."""

    summary: BackfillSummary
    report: CancelReport
    by: str
    at: datetime


async def cancel(
    app: App,
    ident: str,
    *,
    now: datetime,
    reason: str = commands.CANCEL_REASON,
    by: str | None = None,
) -> BackfillCancel:
    """Cancel the backfill ``ident`` names: mark it cancelled and record
    ``BackfillCancelled`` (one transaction), then cancel each of its live runs as
    ``retro cancel`` does (:func:`retro.commands.cancel_each`: unstarted jobs
    removed, active ones left to finish and ignored). Cancelling it again cancels
    the live runs left (e.g. after an interrupted cancel) and records nothing new
    when none is left. Needs Redis.

    Raises:
        BackfillNotFound, AmbiguousBackfill: see :func:`resolve`.
        Refused: it finished (no live run) without being cancelled, or the reason
            is empty.
    """
    by = by or os_user()
    reason = clip(" ".join(mask(reason).split()))
    if not reason:
        raise Refused("the cancel reason is empty")
    async with app.engine.begin() as conn:
        backfill = await resolve(conn, ident)
        live = await runs.list_runs(conn, states=LIVE, limit=1_000_000, backfill_id=backfill.id)
        if not live and backfill.cancelled_at is None:
            raise Refused(
                f"backfill {backfill.id} ({backfill.label!r}) has finished: no live run to cancel"
            )
        if live or backfill.cancelled_at is None:
            await backfills.set_cancelled(conn, backfill.id, now)
            await backfills.record(
                conn,
                Action(
                    backfill.id,
                    ActionType.CANCELLED,
                    by=by,
                    at=now,
                    data={"reason": reason, "live_runs": len(live)},
                ),
            )
    if live:
        log.info("BackfillCancelled backfill=%s by=%s live_runs=%d", backfill.id, by, len(live))
    report = await commands.cancel_each(app, sorted(r.id for r in live), now=now, reason=reason)
    return BackfillCancel(await _summary(app, backfill.id, now), report, by, now)


async def retry(app: App, ident: str, *, now: datetime, by: str | None = None) -> Steered:
    """Re-arm every failed run of the backfill ``ident`` names (``RunRearmed``) and
    record ``BackfillRetried`` with their ids, in one transaction: all or nothing,
    like ``retro retry``. Runs of a paused backfill are re-armed and wait, pending,
    for its resume. No failed run: nothing written (``changed`` is ``False``).

    Raises:
        BackfillNotFound, AmbiguousBackfill: see :func:`resolve`.
        Refused: the backfill was cancelled.
        RetryRefused: a run's match has another live run, a rival wrote to a run
            first, or the database refused an event; nothing is written.
    """
    by = by or os_user()
    async with app.engine.begin() as conn:
        backfill = await resolve(conn, ident)
        if backfill.cancelled_at is not None:
            raise Refused(
                f"backfill {backfill.id} ({backfill.label!r}) was cancelled; "
                "`retro start --reprocess failed` seeds its gaps in a new backfill"
            )
        failed = await runs.list_runs(
            conn, states=[State.FAILED], limit=1_000_000, backfill_id=backfill.id
        )
        rearmed = await commands.rearm_each(conn, sorted(failed, key=lambda r: r.id), now=now)
        ids = [run.id for run in rearmed]
        if ids:
            await backfills.record(
                conn, Action(backfill.id, ActionType.RETRIED, by=by, at=now, data={"runs": ids})
            )
    for run in rearmed:
        log.info("RunRearmed", extra=run_fields(run.id, run.match_id, None, "RunRearmed"))
    summary = await _summary(app, backfill.id, now)
    return Steered(ActionType.RETRIED, summary, bool(ids), by, now, runs=ids)
