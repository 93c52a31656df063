"""One tick (DESIGN §2 to §4): every due run, each in the same steps, in this order.

For each run, :meth:`Ticker._advance` does, visibly in order:

1. **lock** the run (``FOR UPDATE SKIP LOCKED``; a rival daemon holds it: skip);
2. **gather** the facts: BullMQ's view of its job, then the host's data;
3. **plan**: :func:`retro.machine.plan`, pure, every event the facts allow;
4. **prepare** the effects (step 1 of DESIGN §4): adopt or clear a job with the
   deterministic id before a request, remove an unstarted job left behind;
5. **append** the plan's events and projections in one transaction (step 2: intent);
6. **effect**: enqueue the job a request asked for (step 3).

The crash points ``before_append``/``after_append``/``before_enqueue``/
``after_enqueue`` (:mod:`retro.crashpoints`) sit between these steps, and
``after_notify_commit`` right after an append that recorded a notification
(``notify_url``: :mod:`retro.store.outbox`) committed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from retro.clock import Clocks
from retro.config import Settings
from retro.crashpoints import CrashPoints
from retro.events import Event, JobReenqueued, Phase, Requested, RunFailed
from retro.logs import logfmt_value, run_fields
from retro.machine import (
    TERMINAL,
    Facts,
    JobMeaning,
    JobState,
    JobView,
    Plan,
    Policy,
    Run,
    Waiting,
    clip,
    has_external_id,
    held_by_pause,
    is_stale,
    plan,
    why_waiting,
)
from retro.metrics import Metrics
from retro.queue import FINISHED_STATES, Queues
from retro.queue import is_unreachable as queue_is_unreachable
from retro.stages import STAGES
from retro.store import backfills, db, outbox, runs
from retro.store.facts import MatchFacts, match_facts

log = logging.getLogger("retro")

REFILL_PASSES = 4
"""Times one tick offers the slots of runs that ended during it to the next starters."""

RUN_FAILURE_LIMIT = 5
"""Ticks in a row one run may fail to advance (an error that is neither a lost race
nor an unreachable dependency) before the daemon gives up on it: it appends
``RunFailed`` with the cause, or, if even that is refused, skips the run until it
restarts (docs/production.md, "When an append fails")."""


@dataclass
class TickReport:
    """What one tick did: runs looked at and events appended."""

    looked_at: int = 0
    events: list[tuple[str, Event]] = field(default_factory=list)
    freed: int = 0
    """Runs that reached a terminal state in the tick (each frees a slot)."""
    released: int = 0
    """Runs that began a retry back-off in the tick (each frees its slot too)."""
    started: int = 0
    """Runs the tick gave a slot: pending runs started, back-offs resumed."""
    again: bool = False
    """A run stopped short of an event it may take at once (a retry without backoff),
    or slots were still freeing when the tick's refill passes ran out."""
    next_backoff_end: datetime | None = None
    """The earliest end of a retry back-off still to come (aware UTC), or ``None``:
    the daemon ticks then if that comes before its ``tick_interval``."""
    notified: int = 0
    """Notifications the tick's appends recorded (``notify_url``): the daemon wakes
    its sender for them."""


class Ticker:
    """The tick of one daemon over ``engine`` and ``queues``, with what it remembers
    between ticks (what it has logged, runs failing in a row, runs given up).

    Args:
        settings: the daemon's settings (``max_in_flight``, ``tick_interval``, …).
        policy: the machine's policy (from ``settings``).
        engine: the database.
        queues: BullMQ's queues on Redis.
        metrics: where appended events, waits and ticks are counted.
        clocks: the job clock and the queue's clock, shared with ``status``.
        crash: crash points (tests kill the process at one).
    """

    def __init__(
        self,
        *,
        settings: Settings,
        policy: Policy,
        engine: AsyncEngine,
        queues: Queues,
        metrics: Metrics,
        clocks: Clocks,
        crash: CrashPoints,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.engine = engine
        self.queues = queues
        self.metrics = metrics
        self.clocks = clocks
        self.crash = crash
        self._warned: set[tuple[str, str | None, int]] = set()
        self._wait_said: dict[str, tuple[str | None, str]] = {}
        """Run id -> (job id, wait reason) last logged: one line per change."""
        self._unrecognized_said: set[tuple[str, str]] = set()
        self._waits: dict[str, Waiting] = {}
        """Run id -> its job's wait, as seen in the current tick (for the metrics)."""
        self._failures: dict[str, int] = {}
        """Consecutive ticks each run failed to advance (cleared when it advances)."""
        self.given_up: dict[str, str] = {}
        """Runs this process stopped trying (even ``RunFailed`` was refused): the cause."""
        self.recorder = outbox.recorder_of(engine)
        """Counts the notifications appends record (``None``: ``notify_url`` unset)."""
        self.paused: frozenset[str] = frozenset()
        """The paused backfills, as read at the start of the current tick (plus any
        an append found paused since): their runs start no job."""
        self._paused_said: dict[str, int] = {}
        """Paused backfill id -> its live runs, as last logged: one line per change."""
        self.held: set[str] = set()
        """Runs of a paused backfill that hold a slot but, as last looked at, move
        only by starting a job (:func:`retro.machine.held_by_pause`): a lost job, or
        a retry due after a timeout. Only a resume moves them, so they do not keep
        ``--until-idle`` from ending (:meth:`retro.app.App.idle`)."""

    def _recorded(self) -> int:
        return 0 if self.recorder is None else self.recorder.recorded

    def _notified(self, mark: int, report: TickReport) -> None:
        """After a committed append: if it recorded notifications (the count moved
        past ``mark``), reach ``after_notify_commit`` and count them in ``report``."""
        recorded = self._recorded() - mark
        if recorded > 0:
            self.crash.reach("after_notify_commit")
            report.notified += recorded

    async def tick(self, *, now: datetime) -> TickReport:
        """Advance every due run as far as the facts allow (DESIGN §2, one tick).

        A run that ends, or begins a retry back-off, frees its ``max_in_flight``
        slot: the tick then offers it itself (one query, at most
        :data:`REFILL_PASSES` times) to the next run whose back-off is over, or else
        the next pending run, instead of leaving it to another tick. A refill never
        takes a run this tick has already looked at: a retry due at once (no
        back-off) comes in a later transaction than its judgement (``again``).
        """
        report = TickReport()
        self._waits = {}
        async with self.engine.connect() as conn:
            paused = await backfills.paused_live(conn)
            due = await runs.due(
                conn, now=now, max_in_flight=self.settings.max_in_flight, policy=self.policy
            )
        self.paused = frozenset(paused)
        # A held run holds a slot: one that no longer does was moved by a rival or an
        # operator, and is judged afresh when it is looked at.
        self.held &= set(due.in_flight)
        self._say_paused(paused)
        starting = due.resuming + due.pending  # each takes a free slot first
        work = [(r, False) for r in due.in_flight] + [(r, True) for r in starting]
        await self._work(work, now, report)
        looked = {run_id for run_id, _ in work}
        refilled = 0  # slots freed so far that a refill pass has offered to starters
        for _ in range(REFILL_PASSES):
            freed = report.freed + report.released
            free = freed - refilled
            if not free:
                break
            refilled = freed
            async with self.engine.connect() as conn:
                listed = await runs.starters(
                    conn, now=now, limit=free + len(looked), policy=self.policy
                )
            starters = [r for r in listed if r not in looked][:free]
            looked.update(starters)
            await self._work([(r, True) for r in starters], now, report)
        else:
            freed = report.freed + report.released
            report.again = report.again or freed > refilled  # still freeing: look again
        async with self.engine.connect() as conn:
            report.next_backoff_end = await runs.next_backoff_end(conn, now=now)
        for gone in set(self._wait_said) - set(self._waits):
            del self._wait_said[gone]  # ended, or no longer waiting: said again if it recurs
        self.metrics.waited(self._waits.values(), self.queues.names.values())
        self.metrics.ticked()
        return report

    def _say_paused(self, paused: dict[str, tuple[str, int]]) -> None:
        """Log once per change that a backfill is paused, with its live runs held
        (``paused``: id -> (label, live runs)), and once that it no longer is."""
        for backfill_id, (label, live) in sorted(paused.items()):
            if self._paused_said.get(backfill_id) == live:
                continue
            self._paused_said[backfill_id] = live
            log.info(
                "backfill %s (%s) is paused: %d live run%s held; its queued or active jobs "
                "finish and are judged, no new job starts until `retro resume --backfill %s`",
                backfill_id,
                logfmt_value(label),
                live,
                "" if live == 1 else "s",
                backfill_id,
            )
        for gone in sorted(set(self._paused_said) - set(paused)):
            del self._paused_said[gone]
            log.info("backfill %s is no longer paused", gone)

    async def _work(self, work: list[tuple[str, bool]], now: datetime, report: TickReport) -> None:
        """Advance each ``(run id, starting)`` in turn; one run's trouble is logged
        at ERROR, not raised, unless a dependency is unreachable. A run that fails
        :data:`RUN_FAILURE_LIMIT` ticks in a row is given up (:meth:`_give_up`)."""
        for run_id, starting in work:
            if run_id in self.given_up:
                continue  # said so once, when it was given up
            report.looked_at += 1
            try:
                await self._advance(run_id, now, report, starting=starting)
            except Exception as exc:  # one run's trouble must not hold up the others
                if unreachable(exc):
                    raise  # a dependency is down: every run would fail alike
                failures = self._failures.get(run_id, 0) + 1
                if failures >= RUN_FAILURE_LIMIT:
                    self._failures.pop(run_id, None)
                    await self._give_up(run_id, _cause(exc), failures, now, report)
                    continue
                self._failures[run_id] = failures
                log.error(
                    "run %s could not be advanced (%d of %d failures in a row; "
                    "the next tick retries): %s",
                    run_id,
                    failures,
                    RUN_FAILURE_LIMIT,
                    _cause(exc),
                    exc_info=not isinstance(exc, runs.AppendRejected),
                    extra=run_fields(run_id),
                )
            else:
                self._failures.pop(run_id, None)

    async def _give_up(
        self, run_id: str, cause: str, failures: int, now: datetime, report: TickReport
    ) -> None:
        """Stop trying ``run_id`` after ``failures`` failed ticks in a row: append
        ``RunFailed`` with ``cause`` (``status`` shows it; ``retro retry`` re-arms
        it), or, when the database refuses that too, skip the run in this process
        until it restarts. Either way one ERROR line names the run and the cause."""
        reason = clip(f"retro gave up after {failures} failed ticks in a row: {cause}")
        event = RunFailed(at=now, reason=reason)
        mark = self._recorded()
        try:
            async with self.engine.begin() as conn:
                run = await runs.get(conn, run_id, wait=True)
                if run is None or run.state in TERMINAL:
                    return  # it ended meanwhile (a rival, an operator)
                new = await runs.append(conn, run, [event])
        except runs.ConcurrencyError:
            return  # a rival moved it: it is advancing after all
        except Exception as exc:
            if unreachable(exc):
                raise
            self.given_up[run_id] = cause
            log.error(
                "run %s given up after %d failed ticks in a row: %s; marking it failed "
                "was refused too (%s), so this daemon skips it until it restarts",
                run_id,
                failures,
                cause,
                _cause(exc),
                extra=run_fields(run_id),
            )
            return
        self._notified(mark, report)
        report.events.append((run_id, event))
        report.freed += 1
        self.metrics.appended(new.id, event)
        log.error(
            "run %s given up after %d failed ticks in a row: RunFailed %s",
            run_id,
            failures,
            _describe(event),
            extra=run_fields(new.id, new.match_id, run.job_id, event.TYPE),
        )

    async def _advance(
        self, run_id: str, now: datetime, report: TickReport, *, starting: bool
    ) -> None:
        """Take one run as far as one reading of the facts allows: lock, gather,
        plan, prepare (step 1), append the plan in one transaction (step 2: intent),
        then effect (step 3: enqueue). The plan's rules (where it stops, what it
        drops) are :func:`retro.machine.plan`'s; its ``again`` asks for another look.

        A run read without a ``max_in_flight`` slot (pending, or in back-off) goes
        on only if it takes a free one (:func:`runs.slot_free`), whichever list
        it came from: a rival may have put a run in back-off since it was listed.
        ``starting`` says it came from the starters (for ``report.started``).
        """
        mark = self._recorded()
        self.held.discard(run_id)
        try:
            async with self.engine.begin() as conn:
                run = await runs.get(conn, run_id, lock=True)  # lock
                if run is None or run.state in TERMINAL:
                    return  # gone, finished, or a rival daemon holds it
                if not run.holds_slot and not await runs.slot_free(
                    conn, self.settings.max_in_flight
                ):
                    return  # pending, or its back-off is over: no slot free yet
                facts, match = await self._gather(run, now)  # gather facts
                planned = plan(run, facts, now=now, policy=self.policy)  # plan
                report.again = report.again or planned.again
                if not planned.events:
                    if held_by_pause(run, facts, now=now, policy=self.policy):
                        self.held.add(run.id)  # only a resume moves it
                    job = facts.job
                    if job is not None and match is not None and is_stale(run, job):
                        if facts.backfill_paused:
                            return  # its recovery enqueues anew: not while paused
                        await runs.refuse_if_paused(conn, run.id, run.backfill_id)
                        await self._recover_job(run, job, match)
                    return
                planned = await self._prepare(planned, facts.job)  # prepare effects (step 1)
                self.crash.reach("before_append")
                await runs.append(conn, run, planned.events, projected=planned.runs)  # step 2
        except runs.ConcurrencyError:
            log.info(
                "run %s lost an append race to a rival daemon", run_id, extra=run_fields(run_id)
            )
            return
        except runs.BackfillPaused as exc:  # paused since this tick read the flag: not now
            self.paused |= {exc.backfill_id}
            log.debug(
                "run %s not advanced: backfill %s was paused meanwhile",
                run_id,
                exc.backfill_id,
                extra=run_fields(run_id),
            )
            return
        self.crash.reach("after_append")
        self._notified(mark, report)
        self._record(planned, report, starting=starting)
        await self._effect(planned.events[-1], match)  # effect (step 3)

    def _record(self, planned: Plan, report: TickReport, *, starting: bool) -> None:
        """Count and log the events of ``planned`` once committed (no evolve: the
        plan's projections say where the run went)."""
        for before, event, after in planned.steps():
            if isinstance(event, Requested | JobReenqueued):
                self.clocks.job.requested(event.job_id)  # a new job: its wait starts now
            report.events.append((after.id, event))
            self.metrics.appended(after.id, event)
            log.log(
                logging.WARNING if isinstance(event, RunFailed) else logging.INFO,
                "%s",
                f"{event.TYPE} {_describe(event)}".rstrip(),
                extra=run_fields(
                    after.id, after.match_id, after.job_id or before.job_id, event.TYPE
                ),
            )
        if planned.final.state in TERMINAL:
            report.freed += 1
        elif starting:
            report.started += 1
        elif planned.run.holds_slot and not planned.final.holds_slot:
            report.released += 1  # it backs off: this tick offers its slot at once

    async def _gather(self, run: Run, now: datetime) -> tuple[Facts, MatchFacts | None]:
        """The facts of ``run`` at ``now``: BullMQ's view of its job first, then the data.

        Workers are counted (``CLIENT LIST``) for an active job, whose timeout
        depends on it, and for a job queued a tick interval or longer, to warn
        when no worker consumes its queue.

        The data is read after the job state, on a fresh snapshot: a worker commits
        its data before BullMQ marks the job finished, so a finished job is never
        paired with data from before it ran. The job's own data (timestamps, failure
        reason) is also read after its state, at the same time as the match's.
        """
        queues = self.queues

        async def data() -> MatchFacts | None:
            async with self.engine.connect() as fresh:
                return await match_facts(
                    fresh, run.match_id, expected_override=self.settings.expected_predictions
                )

        job = workers = paused = None
        if run.job_id is not None and run.phase is not None:
            phase, job_id = run.phase, run.job_id
            state = await queues.job_state(phase, job_id)
            (job, queue_now), match = await asyncio.gather(
                asyncio.gather(queues.job_view_in(phase, job_id, state), self._queue_now()),
                data(),
            )
            job = self.clocks.job.measure(job_id, job, queue_now)  # never the wall clock
            waited = job.waiting_for or 0.0
            if job.meaning is JobMeaning.PROGRESSING or (
                job.meaning is JobMeaning.WAITING and waited >= self.settings.tick_interval
            ):  # CLIENT LIST only where it matters, not on every fresh hand-off
                workers = await queues.worker_count(phase)
                if job.meaning is JobMeaning.WAITING:
                    paused = await queues.is_paused(phase)
            self._note_job(run, job, workers, paused)
        else:
            match = await data()
        self._warn_if_unconsumed(run, job, workers)
        self.metrics.job_seen(run, job)
        facts = _facts(match, job, workers)
        held = run.backfill_id in self.paused
        return replace(facts, queue_paused=paused, backfill_paused=held), match

    def _note_job(self, run: Run, job: JobView, workers: int | None, paused: bool | None) -> None:
        """Say once per run that BullMQ gave a state retro does not know, and once per
        change why its job waits (schedule-to-start); keep the wait for the metrics."""
        assert run.phase is not None
        fields = run_fields(run.id, run.match_id, run.job_id)
        if job.unrecognized and (run.id, job.unrecognized) not in self._unrecognized_said:
            self._unrecognized_said.add((run.id, job.unrecognized))
            log.warning(
                "job %s has a BullMQ state retro does not know (%r): treated as waiting",
                run.job_id,
                job.unrecognized,
                extra=fields,
            )
        wait = wait_of(run, job, workers, paused, self.queues, self.policy)
        if wait is None:
            self._wait_said.pop(run.id, None)
            return
        self._waits[run.id] = wait
        said = (run.job_id, f"{wait.reason}{'+over' if wait.over_budget else ''}")
        # An active job with no worker left is said by _warn_if_unconsumed already.
        queued = job.meaning is JobMeaning.WAITING
        if queued and wait.notable and self._wait_said.get(run.id) != said:
            self._wait_said[run.id] = said
            level = logging.WARNING if wait.over_budget else logging.INFO
            log.log(level, "job %s %s", run.job_id, wait.text, extra=fields)

    async def _queue_now(self) -> datetime | None:
        """The queue's clock (Redis ``TIME``) now (:class:`retro.clock.QueueClock`)."""
        return await self.clocks.queue.now(self.queues.server_time)

    async def _prepare(self, planned: Plan, job: JobView | None) -> Plan:
        """Step 1, before the plan is appended (DESIGN §4), from the plan's projections.

        Entering a phase (the plan's final ``…Requested``): remove a stale finished
        job with the deterministic id, or adopt a queued/running one (the returned
        plan records it). Leaving a job behind (phase done, skipped, failed,
        cancelled): remove it if it has not started, so a crash cannot leave it
        queued; safe to repeat, as none of these decisions depends on the job still
        existing. ``job`` is BullMQ's view of the job the run held when planned
        (``None`` if not read): a job seen completed or failed has started, so
        there is nothing to remove.
        """
        for before, event, after in planned.steps():
            if isinstance(event, Requested):  # a request ends a plan
                view = await self.queues.clear_stale(event.PHASE, event.job_id)
                if view.state is not JobState.UNKNOWN:
                    return planned.adopt(view.created_at)
            elif before.job_id and before.phase and after.job_id != before.job_id:
                seen = job if before.job_id == planned.run.job_id else None
                if seen is None or seen.state not in FINISHED_STATES:
                    await self.queues.remove_unstarted(before.phase, before.job_id)
        return planned

    def _warn_if_unconsumed(self, run: Run, job: JobView | None, workers: int | None) -> None:
        """Log once per job id and attempt that an active job's queue has no worker left
        (its holder died); a waiting job's reason is logged by :meth:`_note_job`."""
        if job is None or job.meaning is not JobMeaning.PROGRESSING or workers != 0:
            return
        if run.phase is None:
            return
        key = (run.id, run.job_id, run.attempt)
        if key in self._warned:
            return
        self._warned.add(key)
        log.warning(
            "job %s is %s: no worker consuming %s",
            run.job_id,
            job.state,
            self.queues.names[run.phase],
            extra=run_fields(run.id, run.match_id, run.job_id),
        )

    async def _recover_job(self, run: Run, job: JobView, match: MatchFacts) -> None:
        """Re-perform step 3 for a stale leftover of an earlier attempt (a finished
        job, e.g. restored from a snapshot: DESIGN §4.1): remove it and enqueue anew.
        Costs no attempt. A lost job is the machine's call (``JobReenqueued``)."""
        assert run.phase is not None and run.job_id is not None
        if not is_stale(run, job):
            return
        await self.queues.remove_finished(run.phase, run.job_id)
        await self.queues.enqueue(
            run.phase, run.job_id, job_payload(run.phase, match), at=await self._queue_now()
        )
        self.clocks.job.requested(run.job_id)
        log.info(
            "job %s re-enqueued (job was a stale %s leftover)",
            run.job_id,
            job.state,
            extra=run_fields(run.id, run.match_id, run.job_id),
        )

    async def _effect(self, event: Event, match: MatchFacts | None) -> None:
        """Step 3: enqueue the job a ``…Requested`` event asked for, or enqueue again
        the lost job of a ``JobReenqueued`` (its orphaned hash removed first)."""
        if isinstance(event, Requested) and match is not None:
            self.crash.reach("before_enqueue")
            await self.queues.enqueue(
                event.PHASE,
                event.job_id,
                job_payload(event.PHASE, match),
                at=await self._queue_now(),
            )
            self.crash.reach("after_enqueue")
        elif isinstance(event, JobReenqueued) and match is not None:
            phase = Phase(event.phase)
            await self.queues.reenqueue(
                phase, event.job_id, job_payload(phase, match), at=await self._queue_now()
            )


def wait_of(
    run: Run,
    job: JobView,
    workers: int | None,
    paused: bool | None,
    queues: Queues,
    policy: Policy,
) -> Waiting | None:
    """``run``'s job as a :class:`Waiting` (queue, seconds, reason, budget), or
    ``None`` if no worker is missing for it: a queued job (``waiting_for``), or an
    active one whose worker died with no worker left (``active_for``)."""
    assert run.phase is not None
    reason = why_waiting(job, workers=workers, paused=paused)
    seconds = job.waiting_for if job.waiting_for is not None else job.active_for
    if reason is None or seconds is None:
        return None
    return Waiting(
        queue=queues.names[run.phase],
        seconds=seconds,
        reason=reason,
        budget=policy.queue_wait_budgets[run.phase],
    )


def _cause(exc: BaseException) -> str:
    """``exc`` on one clipped line: its type and message (an append refusal: its cause)."""
    if isinstance(exc, runs.AppendRejected):
        return clip(str(exc))
    return clip(f"{type(exc).__name__}: {exc}")


def unreachable(exc: BaseException) -> str | None:
    """``"database"`` or ``"Redis"`` when ``exc`` means that dependency is down, else None."""
    if db.is_unreachable(exc):
        return "database"
    if queue_is_unreachable(exc):
        return "Redis"
    return None


def _facts(match: MatchFacts | None, job: JobView | None, workers: int | None) -> Facts:
    if match is None:
        return Facts(match_found=False, job=job, workers=workers)
    return Facts(
        match_found=True,
        match_status=match.status,
        home_score=match.home_score,
        away_score=match.away_score,
        has_analysis=match.has_analysis,
        has_external_id=has_external_id(match.external_id),
        predictions_found=match.found,
        predictions_expected=match.expected,
        unscored=match.unscored,
        job=job,
        workers=workers,
    )


def job_payload(phase: Phase, match: MatchFacts) -> dict[str, Any]:
    """The host payload of ``phase``'s job for ``match`` (DESIGN §1)."""
    return STAGES[phase].payload(match)


def _describe(event: Event) -> str:
    """``event``'s data as ``key=value`` pairs, each value :func:`logfmt_value`-quoted."""
    return " ".join(f"{k}={logfmt_value(v)}" for k, v in event.data().items())
