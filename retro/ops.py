"""Operator commands on runs: ``retro history`` (a run's event timeline) and
``retro cancel`` (stop live runs, removing their queued jobs).

Both take an open :class:`~retro.app.App`; times come in as arguments (aware UTC).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from retro.app import App
from retro.config import mask
from retro.errors import UsageError
from retro.events import Phase, RunCancelled
from retro.logs import logfmt_value, run_fields
from retro.machine import LIVE, TERMINAL, Run, Step, clip
from retro.queue import UNSTARTED_STATES
from retro.store import runs
from retro.store.runs import EventRow

log = logging.getLogger("retro")

CANCEL_REASON = "cancelled by operator"
CANCEL_TRIES = 20
"""Times one run's cancel is re-decided after losing an append race to a daemon."""
UNSTARTED = frozenset(str(s) for s in UNSTARTED_STATES)
"""BullMQ job states a job can be removed in (a worker has not taken it)."""


class Refused(UsageError, ValueError):
    """An operator command cannot do what it was asked; nothing was written."""


# --- history ------------------------------------------------------------------


@dataclass(frozen=True)
class RunHistory:
    """One run and its stored events in seq order."""

    run: Run
    events: list[EventRow]


@dataclass(frozen=True)
class History:
    """``retro history ID``: ``resolved_as`` is ``"run"`` or ``"match"``; ``runs``
    holds one run for a run id, every run of the match (newest first) for a match id."""

    query: str
    resolved_as: str
    runs: list[RunHistory]


async def history(app: App, ident: str, *, of: str = "auto") -> History:
    """The event timeline of run ``ident``, or of every run of match ``ident``.

    ``of`` is ``"run"``, ``"match"`` or ``"auto"``: auto takes ``ident`` as a run
    id if a run has it, as a match id if runs of that match exist.

    Raises:
        Refused: no run and no match's run has that id, or (auto) it is both a
            run id and a match id.
    """
    async with app.engine.connect() as conn:
        as_run = await runs.get(conn, ident) if of in ("auto", "run") else None
        of_match = await runs.runs_of_match(conn, ident) if of in ("auto", "match") else []
        if as_run is not None and of_match:
            raise Refused(
                f"{ident!r} is both a run id and a match id; say which with --of run or --of match"
            )
        if as_run is None and not of_match:
            what = {"run": "no run", "match": "no run of match"}.get(of, "no run or match")
            raise Refused(f"{what} {ident!r}")
        chosen = [as_run] if as_run is not None else of_match
        return History(
            query=ident,
            resolved_as="run" if as_run is not None else "match",
            runs=[RunHistory(run, await runs.event_rows(conn, run.id)) for run in chosen],
        )


# --- cancel -------------------------------------------------------------------


@dataclass(frozen=True)
class Cancelled:
    """A run ``retro cancel`` cancelled.

    Attributes:
        run: the run as it was just before the cancel.
        job_state: BullMQ's state of its job when cancelled (``unknown`` if absent,
            ``None`` when the run had no job).
        job_removed: the job was waiting and is removed from its queue; an
            ``active`` job cannot be removed and is left to finish, its result ignored.
    """

    run: Run
    job_state: str | None
    job_removed: bool

    @property
    def phase(self) -> Phase | None:
        """The phase the run's job belongs to (``None`` without a job)."""
        return self.run.phase

    @property
    def job_id(self) -> str | None:
        """The run's job id (``None`` when it had none, e.g. pending)."""
        return self.run.job_id


@dataclass(frozen=True)
class CancelReport:
    """What ``retro cancel`` did: runs cancelled, and runs that ended by themselves
    (done, failed or cancelled by a daemon) before the cancel reached them."""

    cancelled: list[Cancelled]
    ended_first: list[Run]


async def cancel(
    app: App,
    run_ids: list[str],
    *,
    every_live: bool,
    now: datetime,
    reason: str = CANCEL_REASON,
) -> CancelReport:
    """Cancel live runs: the given ids, or every live run (``every_live``).

    For each run, under its row lock (PostgreSQL ``FOR UPDATE``; SQLite serialises
    writers) and guarded by its version as every append is: remove its job if it
    has not started, then append ``RunCancelled(reason)``. A lost race with a
    running daemon re-reads the run and decides again. A run that ended on its own
    in the meantime is reported in ``ended_first``, not cancelled.

    The reason is stored on one line, passwords masked, clipped to 500 characters.
    A job requested moments before the cancel may not be in BullMQ yet (a daemon
    enqueues after its commit): cancel watches for it for up to
    :data:`LATE_ENQUEUE_SECONDS` and removes it when it arrives.

    An ``active`` job cannot be removed: it is left running. When it finishes, the
    daemon ignores it, as it never advances a terminal run; the finished job stays
    in BullMQ until a later run of the match removes it as stale.

    Named ids are checked first, all or nothing, like ``retry``.

    Raises:
        Refused: an id is unknown, or a named run is already done, failed or
            cancelled; nothing is written.
    """
    assert app.queues is not None, "cancel needs Redis"
    reason = clip(" ".join(mask(reason).split()))  # one line, no password, bounded
    if not reason:
        raise Refused("the cancel reason is empty")
    async with app.engine.connect() as conn:
        if every_live:
            targets = await runs.list_runs(conn, states=LIVE, limit=1_000_000)
        else:
            targets = []
            for run_id in dict.fromkeys(run_ids):
                run = await runs.get(conn, run_id)
                if run is None:
                    raise Refused(f"no run {run_id!r}")
                if run.state in TERMINAL:
                    raise Refused(
                        f"run {run_id} is already {run.state}; only live runs "
                        "(pending, analyzing, predicting, settling) can be cancelled"
                    )
                targets.append(run)
    report = CancelReport(cancelled=[], ended_first=[])
    for target in targets:
        done = await _cancel_one(app, target.id, now=now, reason=reason)
        if isinstance(done, Cancelled):
            report.cancelled.append(done)
        else:
            report.ended_first.append(done)
    return report


async def _cancel_one(app: App, run_id: str, *, now: datetime, reason: str) -> Cancelled | Run:
    """Cancel one run; return what was done, or the run if it ended first."""
    assert app.queues is not None
    for _ in range(CANCEL_TRIES):
        try:
            async with app.engine.begin() as conn:
                run = await runs.get(conn, run_id, wait=True)
                assert run is not None, f"run {run_id} vanished"
                if run.state in TERMINAL:
                    return run
                state, removed = None, False
                if run.job_id is not None and run.phase is not None:
                    state, removed = await _remove_job(app, run.phase, run.job_id)
                await runs.append(conn, run, [RunCancelled(at=now, reason=reason)])
        except runs.ConcurrencyError:
            log.info("run moved while being cancelled; deciding again", extra=run_fields(run_id))
            continue
        if run.job_id is not None and run.phase is not None:
            # A daemon that read the run before the cancel may have (re-)enqueued the
            # job since; remove it once more now that the run is terminal.
            again, removed_again = await _remove_job(app, run.phase, run.job_id)
            if not removed and again == "unknown" and _request_just_committed(run, now):
                again, removed_again = await _remove_late_job(app, run.phase, run.job_id)
            state = state if removed else again
            removed = removed or removed_again
        log.info(
            "RunCancelled reason=%s job_state=%s job_removed=%s",
            logfmt_value(reason),
            state,
            removed,
            extra=run_fields(run.id, run.match_id, run.job_id, "RunCancelled"),
        )
        return Cancelled(run, state, removed)
    raise RuntimeError(f"run {run_id} kept moving; cancel it again")


async def _remove_job(app: App, phase: Phase, job_id: str) -> tuple[str, bool]:
    """``(state seen, removed)``: remove ``job_id`` if no worker has taken it, or if
    it is an orphaned hash (``unknown``, in no state list: BullMQ issue 1644), which
    would make BullMQ ignore every later add of that id."""
    assert app.queues is not None
    view = await app.queues.job_view(phase, job_id)
    state = str(view.state)
    if state not in UNSTARTED and not view.orphaned:
        return state, False
    if await app.queues.remove_unstarted(phase, job_id):
        return state, True
    return (await app.queues.job_view(phase, job_id)).state, False  # a worker took it


LATE_ENQUEUE_SECONDS = 3.0
"""How long cancel watches for the job of a request committed just before it."""
RECENT_REQUEST_SECONDS = 60.0


def _request_just_committed(run: Run, now: datetime) -> bool:
    """The run's job was requested moments ago and BullMQ does not hold it yet: a
    daemon commits the request, releases the run, then enqueues (DESIGN §4), so the
    job may still be on its way."""
    return (
        run.step is Step.JOB
        and run.requested_at is not None
        and (now - run.requested_at).total_seconds() < RECENT_REQUEST_SECONDS
    )


async def _remove_late_job(app: App, phase: Phase, job_id: str) -> tuple[str, bool]:
    """Watch ``job_id`` for :data:`LATE_ENQUEUE_SECONDS`, removing it if it arrives
    unstarted; ``(last state seen, removed)``. A daemon that crashed between its
    commit and the enqueue never adds it, and a cancelled run is never recovered."""
    deadline = time.monotonic() + LATE_ENQUEUE_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        state, removed = await _remove_job(app, phase, job_id)
        if state != "unknown":
            return state, removed
    return "unknown", False
