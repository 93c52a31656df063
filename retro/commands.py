"""The operator commands over an open :class:`~retro.app.App` (its engine and
queues): ``start`` (scan and seed gap runs), ``retry`` (re-arm failed runs),
``verify`` (replay every run), ``status`` (where every run stands), ``history``
(a run's event timeline) and ``cancel`` (stop live runs, removing their queued
jobs). The daemon's tick is :mod:`retro.tick`; the app itself only opens and
closes what these read and write.

Times come in as arguments (aware UTC); run ids come from ``app.new_id``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncConnection

from retro import lookup
from retro.app import App
from retro.backfill import SCAN_LABEL, Backfill, os_user
from retro.config import mask
from retro.errors import UsageError
from retro.events import Phase, RunCancelled, RunSeeded
from retro.logs import logfmt_value, run_fields
from retro.lookup import Of
from retro.machine import (
    LIVE,
    TERMINAL,
    JobMeaning,
    Run,
    State,
    Step,
    Waiting,
    cannot_heal,
    clip,
    has_external_id,
)
from retro.progress import DEFAULT_WINDOW, BackfillSummary, Progress, measure, summaries
from retro.queue import UNSTARTED_STATES
from retro.store import backfills, gaps, runs
from retro.store.facts import match_facts
from retro.store.runs import EventRow
from retro.tick import wait_of

log = logging.getLogger("retro")

CANCEL_REASON = "cancelled by operator"
CANCEL_TRIES = 20
"""Times one run's cancel is re-decided after losing an append race to a daemon."""
UNSTARTED = frozenset(str(s) for s in UNSTARTED_STATES)
"""BullMQ job states a job can be removed in (a worker has not taken it)."""


REPROCESS: dict[str, tuple[str, ...]] = {
    "missing": (),
    "failed": ("failed",),
    "all": ("all",),
}
"""``retro start --reprocess`` choices and the run states they lift the cooldown for."""


class RetryRefused(UsageError, ValueError):
    """``retro retry`` cannot re-arm what it was asked to; nothing was written."""


@dataclass(frozen=True)
class SeedReport:
    """What ``start`` found and seeded. ``cannot_heal`` maps a gap match's id to why
    its run could never heal (:func:`retro.machine.cannot_heal`); a real ``start``
    seeds it all the same, and the run fails at its first tick with the reason."""

    scan: gaps.Scan
    seeded: list[str]
    dry_run: bool
    cannot_heal: dict[str, str] = field(default_factory=dict)
    backfill: Backfill | None = None
    """The backfill the seeded runs belong to; ``None`` when nothing was seeded."""


@dataclass(frozen=True)
class InFlight:
    """An in-flight run for ``status``; ``waiting_for_worker`` names an idle queue;
    ``waiting`` says how long and why its job waits for a worker (schedule-to-start);
    ``backfill_paused``: its backfill is paused (it starts no new job)."""

    run: Run
    home_team: str | None
    away_team: str | None
    job_state: str | None
    waiting_for_worker: str | None
    waiting: Waiting | None = None
    backfill_paused: bool = False

    @property
    def held(self) -> bool:
        """The run rests with no job because its backfill is paused: it entered a
        phase, or sleeps out a back-off, and requests nothing until resumed."""
        return self.backfill_paused and self.run.job_id is None


@dataclass(frozen=True)
class StatusReport:
    """Counts by state, in-flight runs, failed runs, workers per queue."""

    counts: dict[str, int]
    in_flight: list[InFlight]
    failed: list[Run]
    workers: dict[str, int | None]
    """Workers per queue; ``None`` where Redis will not list its clients."""
    redis_error: str | None = None
    progress: Progress | None = None
    """Percent done and ETA; only when ``status`` was given ``now``."""
    backfills: list[BackfillSummary] = field(default_factory=list)
    """With ``now``: the backfills with a live run (or the one asked for), newest
    first, each with its own progress and ETA."""
    backfill: BackfillSummary | None = None
    """The backfill ``status`` was narrowed to (``retro status --backfill``): counts,
    progress and runs above are then its alone."""

    @property
    def holding(self) -> list[InFlight]:
        """The ``in_flight`` runs at work on a phase, not in back-off and not held by
        a paused backfill: each holds a ``max_in_flight`` slot (as does a back-off
        after a timeout, listed in :attr:`backoff`)."""
        return [
            item
            for item in self.in_flight
            if item.run.step is not Step.BACKOFF and not (item.held and item.run.step is Step.ENTER)
        ]

    @property
    def held(self) -> list[InFlight]:
        """The ``in_flight`` runs resting at the entry of a phase, with no job,
        because their backfill is paused (they hold no slot)."""
        return [item for item in self.in_flight if item.held and item.run.step is Step.ENTER]

    @property
    def backoff(self) -> list[InFlight]:
        """The ``in_flight`` runs sleeping out a retry back-off, earliest retry
        (``run.not_before``, aware UTC) first. They hold no slot, unless the last
        attempt timed out (``run.timed_out``: its job may still run;
        :attr:`Run.holds_slot`)."""
        asleep = [item for item in self.in_flight if item.run.step is Step.BACKOFF]
        return sorted(asleep, key=lambda item: item.run.not_before or item.run.updated_at)


class Refused(UsageError, ValueError):
    """An operator command cannot do what it was asked; nothing was written."""


# --- start, retry, verify, status --------------------


async def start(
    app: App,
    *,
    days: int,
    now: datetime,
    dry_run: bool = False,
    until: datetime | None = None,
    reprocess: str = "missing",
    label: str | None = None,
    created_by: str | None = None,
) -> SeedReport:
    """Scan ``[until - days, until]`` for gap matches and seed one run per match,
    as one backfill (:mod:`retro.backfill`).

    ``now`` (aware UTC) stamps the events and measures the cooldown;
    ``until`` ends the window (default ``now``; the demo replays 2025).
    Seeding is idempotent: a match with a live run, or whose run ended
    inside the cooldown, is not seeded again. ``reprocess`` widens that:
    ``missing`` (default) seeds gaps only; ``failed`` also seeds gap matches
    whose last run failed inside the cooldown; ``all`` ignores the cooldown.

    The backfill (``label``, default ``"<from>..<to>"`` of the window in days;
    ``created_by``, default the OS user) is written in the transaction of its
    first ``RunSeeded``: a start that seeds nothing creates no backfill.

    Raises:
        Refused: ``label`` (other than the periodic scan's) already names a
            backfill, by label or as its id or id prefix (``retro status
            --backfill LABEL`` must name one backfill); nothing is written.
    """
    scan_started = time.perf_counter()
    if label is not None and label != SCAN_LABEL:
        async with app.engine.connect() as conn:
            taken = await backfills.find(conn, label)
        if taken:
            first = taken[0]
            raise Refused(
                f"the label {label!r} already names backfill {first.id} ({first.label!r}, "
                f"created {first.created_at:%Y-%m-%d %H:%M} UTC); choose another label"
            )
    async with app.engine.begin() as conn:
        scan = await gaps.scan(
            conn,
            now=until or now,
            clock=now,
            days=days,
            cooldown=timedelta(seconds=app.settings.cooldown),
            expected_override=app.settings.expected_predictions,
            reprocess=REPROCESS[reprocess],
        )
    app.metrics.scanned(scan, time.perf_counter() - scan_started)
    seeded: list[str] = []
    backfill = Backfill(
        id=app.new_id(),
        label=label or f"{scan.since:%Y-%m-%d}..{scan.until:%Y-%m-%d}",
        window_from=scan.since,
        window_to=scan.until,
        created_at=now,
        created_by=created_by or os_user(),
        options={"reprocess": reprocess, "days": days},
        gap_counts={str(kind): n for kind, n in scan.by_kind().items()},
    )
    if not dry_run:
        for gap in scan.gaps:
            event = RunSeeded(
                at=now,
                run_id=app.new_id(),
                match_id=gap.match_id,
                gaps=tuple(str(k) for k in gap.kinds),
                found=gap.found,
                expected=gap.expected,
                backfill_id=backfill.id,
            )
            try:
                async with app.engine.begin() as conn:
                    if not seeded:
                        await backfills.create(conn, backfill)
                    await runs.append(conn, None, [event])
            except runs.LiveRunExists:
                log.info(
                    "match %s already has a live run; not seeded",
                    gap.match_id,
                    extra=run_fields(None, gap.match_id),
                )
                continue
            except runs.AppendRejected as exc:
                log.error(
                    "match %s not seeded: %s",
                    gap.match_id,
                    clip(exc.cause),
                    extra=run_fields(event.run_id, gap.match_id, None, event.TYPE),
                )
                continue
            seeded.append(event.run_id)
            app.metrics.appended(event.run_id, event)
            log.info(
                "RunSeeded gaps=%s",
                ",".join(event.gaps),
                extra=run_fields(event.run_id, gap.match_id, None, event.TYPE),
            )
    doomed = {
        gap.match_id: why
        for gap in scan.gaps
        if (
            why := cannot_heal(
                has_analysis=gaps.GapKind.MISSING_ANALYSIS not in gap.kinds,
                external_id=has_external_id(gap.external_id),
                policy=app.policy,
            )
        )
    }
    return SeedReport(
        scan=scan,
        seeded=seeded,
        dry_run=dry_run,
        cannot_heal=doomed,
        backfill=backfill if seeded else None,
    )


async def retry(
    app: App, run_ids: list[str], *, failed: bool, now: datetime, of: Of = Of.AUTO
) -> list[Run]:
    """Re-arm failed runs (``RunRearmed``): the runs the given ids name, or every
    failed run.

    Each id is a run id, a run-id prefix or a match id (its latest failed run), read
    as :func:`retro.lookup.find` says (``of``). All or nothing: every id must name a
    ``failed`` run. A run of a cancelled backfill is never re-armed (its backfill's
    cancel would hold it for ever): ``failed`` leaves it out, an id naming it is
    refused.

    Raises:
        RetryRefused: an id names no run, is ambiguous, names a run that is not
            failed or whose backfill was cancelled; the run's match has another
            live run, a rival wrote to it first, or the database refused the event;
            nothing is written.
    """
    async with app.engine.begin() as conn:
        if failed:
            targets = await runs.list_runs(conn, states=[State.FAILED], limit=1_000_000)
        else:
            try:
                targets = await lookup.each_run(conn, run_ids, partial(lookup.failed_run, of=of))
            except lookup.Unresolved as exc:
                raise RetryRefused(str(exc)) from None
        cancelled = await backfills.cancelled_ids(conn)
        if failed:  # their backfill's cancel holds them: re-armed, they would wait for ever
            targets = [run for run in targets if run.backfill_id not in cancelled]
        for run in targets:
            if run.backfill_id in cancelled:
                raise RetryRefused(
                    f"run {run.id} belongs to backfill {run.backfill_id}, which was cancelled; "
                    "`retro start --reprocess failed` seeds its match in a new backfill"
                )
        rearmed = await rearm_each(conn, targets, now=now)
    for run in rearmed:
        log.info("RunRearmed", extra=run_fields(run.id, run.match_id, None, "RunRearmed"))
    return rearmed


async def rearm_each(conn: AsyncConnection, targets: list[Run], *, now: datetime) -> list[Run]:
    """Append ``RunRearmed`` to each of ``targets`` (failed runs) in ``conn``'s
    transaction, in order; the runs as re-armed.

    Raises:
        RetryRefused: a run's match has another live run, a rival wrote to the run
            first, or the database refused the event; the caller rolls back, so
            nothing is written.
    """
    rearmed = []
    for run in targets:
        try:
            rearmed.append(await runs.rearm(conn, run, now=now))
        except runs.LiveRunExists:
            raise RetryRefused(
                f"run {run.id}: match {run.match_id} already has a live run"
            ) from None
        except runs.ConcurrencyError:
            raise RetryRefused(f"run {run.id} changed while being re-armed; look again") from None
        except runs.AppendRejected as exc:
            raise RetryRefused(f"run {run.id}: {clip(exc.cause)}") from None
    return rearmed


async def verify(app: App) -> runs.Audit:
    """Rebuild every run from its events and compare with the stored projection."""
    async with app.engine.connect() as conn:
        return await runs.audit(conn)


async def counts(app: App) -> dict[str, int]:
    """Runs by state (one query; :func:`status` also reads jobs and workers)."""
    async with app.engine.connect() as conn:
        return {str(state): n for state, n in (await runs.counts_by_state(conn)).items()}


async def status(
    app: App,
    *,
    now: datetime | None = None,
    window: float = DEFAULT_WINDOW,
    backfill_id: str | None = None,
) -> StatusReport:
    """Where every run stands, and which queues have workers. With ``now`` (aware
    UTC) also the progress: percent done and an ETA from the hand-off rate of the
    last ``window`` seconds (:mod:`retro.progress`), and each backfill with a live
    run, with its own progress and ETA. With ``backfill_id``, the runs of that
    backfill alone (``retro status --backfill``)."""
    async with app.engine.connect() as conn:
        counts = await runs.counts_by_state(conn, backfill_id=backfill_id)
        progress = None
        summarised: list[BackfillSummary] = []
        if now is not None:
            progress = await measure(
                conn, counts=counts, now=now, window=window, backfill_id=backfill_id
            )
            summarised = await summaries(
                conn,
                now=now,
                window=window,
                live_only=backfill_id is None,
                backfill_id=backfill_id,
            )
        held_by = await backfills.paused_ids(conn)  # paused backfills
        live = await runs.list_runs(
            conn,
            states=[State.ANALYZING, State.PREDICTING, State.SETTLING],
            backfill_id=backfill_id,
        )
        failed = await runs.list_runs(
            conn, states=[State.FAILED], limit=50, backfill_id=backfill_id
        )
        teams = {}
        for run in live:
            facts = await match_facts(conn, run.match_id)
            teams[run.id] = (facts.home_team, facts.away_team) if facts else (None, None)
    workers: dict[str, int | None] = {}
    in_flight: list[InFlight] = []
    if app.queues is not None:
        paused: dict[str, bool] = {}
        for phase in Phase:
            name = app.queues.names[phase]
            workers[name] = await app.queues.worker_count(phase)
            paused[name] = await app.queues.is_paused(phase)
        for run in live:
            job_state = None
            idle_queue = None
            waiting = None
            if run.job_id and run.phase:
                view = await app.queues.job_view(run.phase, run.job_id)
                queue_now = await app.clocks.queue.now(app.queues.server_time)
                view = app.clocks.job.measure(run.job_id, view, queue_now)
                job_state = str(view.state)
                name = app.queues.names[run.phase]
                if view.meaning is JobMeaning.WAITING and workers.get(name) == 0:
                    idle_queue = name
                if now is not None:
                    waiting = wait_of(
                        run, view, workers[name], paused[name], app.queues, app.policy
                    )
            home, away = teams[run.id]
            in_flight.append(
                InFlight(
                    run,
                    home,
                    away,
                    job_state,
                    idle_queue,
                    waiting,
                    backfill_paused=run.backfill_id in held_by,
                )
            )
    else:
        in_flight = [
            InFlight(r, *teams[r.id], None, None, backfill_paused=r.backfill_id in held_by)
            for r in live
        ]
    return StatusReport(
        counts=counts,
        in_flight=in_flight,
        failed=failed,
        workers=workers,
        redis_error=app.redis_error,
        progress=progress,
        backfills=summarised,
        backfill=summarised[0] if backfill_id is not None and summarised else None,
    )


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
    """The event timeline of the run ``ident`` names (its id or a run-id prefix), or
    of every run of match ``ident``.

    ``of`` is ``"run"``, ``"match"`` or ``"auto"``, read as :func:`retro.lookup.find`
    says: auto takes ``ident`` as a run id, a match id or a run-id prefix, and refuses
    a text that is two of these.

    Raises:
        Refused: ``ident`` names no run and no match's run, is ambiguous, or is a
            prefix shorter than :data:`retro.lookup.MIN_PREFIX`.
    """
    async with app.engine.connect() as conn:
        try:
            found = await lookup.find(conn, ident, of=Of(of))
        except lookup.Unresolved as exc:
            raise Refused(str(exc)) from None
        return History(
            query=ident,
            resolved_as=found.resolved_as,
            runs=[RunHistory(run, await runs.event_rows(conn, run.id)) for run in found.runs],
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
    of: Of = Of.AUTO,
) -> CancelReport:
    """Cancel live runs: the runs the given ids name, or every live run (``every_live``).

    Each id is a run id, a run-id prefix or a match id (its live run), read as
    :func:`retro.lookup.find` says (``of``).

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
        Refused: an id names no run or is ambiguous, or a named run is already
            done, failed or cancelled (a match has no live run); nothing is written.
    """
    assert app.queues is not None, "cancel needs Redis"
    reason = clip(" ".join(mask(reason).split()))  # one line, no password, bounded
    if not reason:
        raise Refused("the cancel reason is empty")
    async with app.engine.connect() as conn:
        if every_live:
            targets = await runs.list_runs(conn, states=LIVE, limit=1_000_000)
        else:
            try:
                targets = await lookup.each_run(conn, run_ids, partial(lookup.live_run, of=of))
            except lookup.Unresolved as exc:
                raise Refused(str(exc)) from None
    return await cancel_each(app, [target.id for target in targets], now=now, reason=reason)


async def cancel_each(app: App, run_ids: list[str], *, now: datetime, reason: str) -> CancelReport:
    """Cancel each of ``run_ids`` in turn as :func:`cancel` does (its job removed if
    unstarted, ``RunCancelled(reason)``, a lost race decided again); a run that
    ended meanwhile goes to ``ended_first``. ``reason`` is stored as given (the
    caller has made it one masked line). Needs Redis."""
    report = CancelReport(cancelled=[], ended_first=[])
    for run_id in run_ids:
        done = await _cancel_one(app, run_id, now=now, reason=reason)
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
