"""The application: settings, database, Redis and the three operations the CLI
and the daemon call (seed gap runs, advance due runs one tick, report status).

Time and ids come in as arguments: every method takes ``now`` (aware UTC);
run ids come from the ``new_id`` callable given at construction.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from retro.clock import JobClock
from retro.config import EMBEDDED_REDIS, Settings, mask_url
from retro.crashpoints import CrashPoints
from retro.embedded import EmbeddedRedis
from retro.errors import UsageError
from retro.events import Event, JobReenqueued, Phase, Requested, RunFailed, RunSeeded
from retro.logs import logfmt_value, run_fields
from retro.machine import (
    TERMINAL,
    Facts,
    JobMeaning,
    JobState,
    JobView,
    Policy,
    Run,
    State,
    Waiting,
    clip,
    decide,
    evolve,
    is_stale,
    why_waiting,
)
from retro.metrics import Metrics, Probes
from retro.progress import DEFAULT_WINDOW, Progress, measure
from retro.queue import (
    FINISHED_STATES,
    JobOptions,
    Queues,
    RedisUnreachable,
    job_id_formats,
    queue_names,
)
from retro.queue import is_unreachable as queue_is_unreachable
from retro.stages import STAGES
from retro.store import db, gaps, migrate, runs
from retro.store.facts import MatchFacts, match_facts

log = logging.getLogger("retro")

QUEUE_CLOCK_TTL = 60.0
"""Seconds one reading of Redis ``TIME`` serves, carried forward on the monotonic clock."""

REFILL_PASSES = 4
"""Times one tick starts pending runs in the slots of runs that ended during it."""

MAX_STEPS_PER_RUN = 16
"""Events one run may decide on one reading of the facts (a whole heal is about a dozen)."""

RUN_FAILURE_LIMIT = 5
"""Ticks in a row one run may fail to advance (an error that is neither a lost race
nor an unreachable dependency) before the daemon gives up on it: it appends
``RunFailed`` with the cause, or, if even that is refused, skips the run until it
restarts (docs/production.md, "When an append fails")."""


REPROCESS: dict[str, tuple[str, ...]] = {
    "missing": (),
    "failed": ("failed",),
    "all": ("all",),
}
"""``retro start --reprocess`` choices and the run states they lift the cooldown for."""


class RetryRefused(UsageError, ValueError):
    """``retro retry`` cannot re-arm what it was asked to; nothing was written."""


def policy_from(settings: Settings) -> Policy:
    """The machine's :class:`Policy` from ``settings``."""
    return Policy(
        max_attempts=settings.max_attempts,
        max_reenqueues=settings.max_reenqueues,
        queue_wait_charged=settings.queue_wait_charged,
        queue_wait_budgets={phase: settings.queue_wait(phase) for phase in Phase},
        retry_backoff=settings.retry_backoff,
        budgets={phase: settings.phase_timeout(phase) for phase in Phase},
        job_ids=job_id_formats(settings),
    )


@dataclass(frozen=True)
class SeedReport:
    """What ``start`` found and seeded."""

    scan: gaps.Scan
    seeded: list[str]
    dry_run: bool


@dataclass
class TickReport:
    """What one tick did: runs looked at and events appended."""

    looked_at: int = 0
    events: list[tuple[str, Event]] = field(default_factory=list)
    freed: int = 0
    """Runs that reached a terminal state in the tick (each frees a slot)."""
    started: int = 0
    """Pending runs the tick started (appended their first events)."""
    again: bool = False
    """A run stopped short of an event it may take at once (a retry without backoff)."""


@dataclass(frozen=True)
class InFlight:
    """An in-flight run for ``status``; ``waiting_for_worker`` names an idle queue;
    ``waiting`` says how long and why its job waits for a worker (schedule-to-start)."""

    run: Run
    home_team: str | None
    away_team: str | None
    job_state: str | None
    waiting_for_worker: str | None
    waiting: Waiting | None = None


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


class App:
    """retro on one database and one Redis. Use ``async with App(settings) as app``.

    Raises (on enter):
        StoreError: the database is unreachable or lacks tables.
        RedisUnreachable: Redis does not answer (only with ``redis=True``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: bool = True,
        need_host: bool = True,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
        crash: CrashPoints | None = None,
        redis_optional: bool = False,
    ) -> None:
        self.settings = settings
        self.policy = policy_from(settings)
        self.new_id = new_id
        self._want_redis = redis
        self._redis_optional = redis_optional
        self.redis_error: str | None = None
        self._need_host = need_host
        self.engine = db.create_engine(settings.database_url)
        self._embedded: EmbeddedRedis | None = None
        self.queues: Queues | None = None
        self.redis_warning: str | None = None
        self._warned: set[tuple[str, str | None, int]] = set()
        self._wait_said: dict[str, tuple[str | None, str]] = {}
        """Run id -> (job id, wait reason) last logged: one line per change."""
        self._unrecognized_said: set[tuple[str, str]] = set()
        self._waits: dict[str, Waiting] = {}
        """Run id -> its job's wait, as seen in the current tick (for the metrics)."""
        self.crash = crash if crash is not None else CrashPoints()
        self.metrics = Metrics()
        self.job_clock = JobClock()
        self._queue_clock: tuple[datetime, float] | None = None
        self._failures: dict[str, int] = {}
        """Consecutive ticks each run failed to advance (cleared when it advances)."""
        self._given_up: dict[str, str] = {}
        """Runs this process stopped trying (even ``RunFailed`` was refused): the cause."""

    async def __aenter__(self) -> App:
        try:
            db.require_sqlite_file(self.settings.database_url)
            if db.is_sqlite(self.settings.database_url):
                await db.check(self.engine, host=self._need_host, retro=False)
                await db.enable_wal(self.engine)
                await migrate.upgrade(self.engine)  # the embedded default upgrades itself
            await db.check(self.engine, host=self._need_host, retro=True)
            if self._want_redis:
                url = self.settings.redis_url
                if url == EMBEDDED_REDIS:
                    self._embedded = EmbeddedRedis(self.settings.embedded_redis_file())
                    url = self._embedded.start()
                self.queues = Queues(
                    url,
                    prefix=self.settings.queue_prefix,
                    names=queue_names(self.settings),
                    options=JobOptions(
                        priority=self.settings.job_priority,
                        attempts=self.settings.job_attempts,
                        backoff_ms=self.settings.job_backoff_ms,
                    ),
                )
                try:
                    self.redis_warning = await self.queues.check()
                except RedisUnreachable as exc:
                    if not self._redis_optional:
                        raise
                    self.redis_error = str(exc)
                    await self.queues.close()
                    self.queues = None
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close Redis connections, the embedded server (if last user) and the engine."""
        if self.queues is not None:
            await self.queues.close()
            self.queues = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        await self.engine.dispose()

    @property
    def redis_url(self) -> str:
        """The Redis URL in use (the embedded server's socket, or the configured URL)."""
        assert self.queues is not None
        return self.queues.redis_url

    def probes(self) -> Probes:
        """What the metrics server reads of this app (entered, with Redis)."""
        assert self.queues is not None, "the metrics server needs the daemon's Redis"
        return Probes(
            metrics=self.metrics,
            database_url=self.settings.database_url,
            redis_url=self.redis_url,
            queue_prefix=self.settings.queue_prefix,
            queues=tuple(self.queues.names.values()),
            tick_interval=self.settings.tick_interval,
        )

    # --- start --------------------------------------------------------------

    async def start(
        self,
        *,
        days: int,
        now: datetime,
        dry_run: bool = False,
        until: datetime | None = None,
        reprocess: str = "missing",
    ) -> SeedReport:
        """Scan ``[until - days, until]`` for gap matches and seed one run per match.

        ``now`` (aware UTC) stamps the events and measures the cooldown;
        ``until`` ends the window (default ``now``; the demo replays 2025).
        Seeding is idempotent: a match with a live run, or whose run ended
        inside the cooldown, is not seeded again. ``reprocess`` widens that:
        ``missing`` (default) seeds gaps only; ``failed`` also seeds gap matches
        whose last run failed inside the cooldown; ``all`` ignores the cooldown.
        """
        scan_started = time.perf_counter()
        async with self.engine.begin() as conn:
            scan = await gaps.scan(
                conn,
                now=until or now,
                clock=now,
                days=days,
                cooldown=timedelta(seconds=self.settings.cooldown),
                expected_override=self.settings.expected_predictions,
                reprocess=REPROCESS[reprocess],
            )
        self.metrics.scanned(scan, time.perf_counter() - scan_started)
        seeded: list[str] = []
        if not dry_run:
            for gap in scan.gaps:
                event = RunSeeded(
                    at=now,
                    run_id=self.new_id(),
                    match_id=gap.match_id,
                    gaps=tuple(str(k) for k in gap.kinds),
                    found=gap.found,
                    expected=gap.expected,
                )
                try:
                    async with self.engine.begin() as conn:
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
                self.metrics.appended(event.run_id, event)
                log.info(
                    "RunSeeded gaps=%s",
                    ",".join(event.gaps),
                    extra=run_fields(event.run_id, gap.match_id, None, event.TYPE),
                )
        return SeedReport(scan=scan, seeded=seeded, dry_run=dry_run)

    async def retry(self, run_ids: list[str], *, failed: bool, now: datetime) -> list[Run]:
        """Re-arm failed runs (``RunRearmed``): the given ids, or every failed run.

        All or nothing: every named run must exist and be ``failed``.

        Raises:
            RetryRefused: an id is unknown, a run is not failed, its match has
                another live run, a rival wrote to it first, or the database
                refused the event; nothing is written.
        """
        async with self.engine.begin() as conn:
            if failed:
                targets = await runs.list_runs(conn, states=[State.FAILED], limit=1_000_000)
            else:
                targets = []
                for run_id in run_ids:
                    run = await runs.get(conn, run_id)
                    if run is None:
                        raise RetryRefused(f"no run {run_id!r}")
                    if run.state is not State.FAILED:
                        raise RetryRefused(f"run {run_id} is {run.state}, not failed")
                    targets.append(run)
            rearmed = []
            for run in targets:
                try:
                    rearmed.append(await runs.rearm(conn, run, now=now))
                except runs.LiveRunExists:
                    raise RetryRefused(
                        f"run {run.id}: match {run.match_id} already has a live run"
                    ) from None
                except runs.ConcurrencyError:
                    raise RetryRefused(
                        f"run {run.id} changed while being re-armed; look again"
                    ) from None
                except runs.AppendRejected as exc:
                    raise RetryRefused(f"run {run.id}: {clip(exc.cause)}") from None
        for run in rearmed:
            log.info("RunRearmed", extra=run_fields(run.id, run.match_id, None, "RunRearmed"))
        return rearmed

    async def verify(self) -> runs.Audit:
        """Rebuild every run from its events and compare with the stored projection."""
        async with self.engine.connect() as conn:
            return await runs.audit(conn)

    # --- tick ---------------------------------------------------------------

    async def tick(self, *, now: datetime) -> TickReport:
        """Advance every due run as far as the facts allow (DESIGN §2, one tick).

        A run that ends frees its ``max_in_flight`` slot: the tick then starts the
        next pending runs itself (one query for them, at most
        :data:`REFILL_PASSES` times), instead of leaving them to another tick.
        """
        report = TickReport()
        self._waits = {}
        async with self.engine.connect() as conn:
            due = await runs.due(
                conn, now=now, max_in_flight=self.settings.max_in_flight, policy=self.policy
            )
        work = [(r, False) for r in due.in_flight] + [(r, True) for r in due.pending]
        await self._work(work, now, report)
        refilled = 0  # slots freed so far that a refill pass has offered to pending runs
        for _ in range(REFILL_PASSES):
            free = report.freed - refilled
            if not free:
                break
            refilled = report.freed
            async with self.engine.connect() as conn:
                pending = await runs.pending(conn, limit=free)
            await self._work([(r, True) for r in pending], now, report)
        else:
            report.again = report.again or report.freed > refilled  # still freeing: look again
        for gone in set(self._wait_said) - set(self._waits):
            del self._wait_said[gone]  # ended, or no longer waiting: said again if it recurs
        self.metrics.waited(self._waits.values(), self.queues.names.values() if self.queues else ())
        self.metrics.ticked()
        return report

    async def _work(self, work: list[tuple[str, bool]], now: datetime, report: TickReport) -> None:
        """Advance each ``(run id, starting)`` in turn; one run's trouble is logged
        at ERROR, not raised, unless a dependency is unreachable. A run that fails
        :data:`RUN_FAILURE_LIMIT` ticks in a row is given up (:meth:`_give_up`)."""
        for run_id, starting in work:
            if run_id in self._given_up:
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
            self._given_up[run_id] = cause
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
        """Take one run as far as one reading of the facts allows: gather, decide
        and prepare each event (step 1), append them all in one transaction
        (step 2: intent), then enqueue (step 3: effect).

        The events are decided on one snapshot of the facts: after a phase
        completes, the next phase is requested in the same transaction. The chain
        stops at a ``…Requested`` event (its job must be enqueued after the commit,
        and its outcome is news for a later tick), at a terminal state, or when
        :func:`decide` waits. It stops *before* a retry of the job it judged: that
        request's step 1 removes the finished job, which must come after the
        judgement is committed (DESIGN §4, intent before effect).
        """
        try:
            async with self.engine.begin() as conn:
                if starting and not await runs.slot_free(conn, self.settings.max_in_flight):
                    return
                run = await runs.get(conn, run_id, lock=True)
                if run is None or run.state in TERMINAL:
                    return  # gone, finished, or a rival daemon holds it
                facts, match = await self._gather(run, now)
                batch: list[Event] = []
                current = run
                for _ in range(MAX_STEPS_PER_RUN):
                    event = decide(current, facts, now=now, policy=self.policy)
                    if event is None:
                        break
                    if batch and isinstance(event, Requested) and event.job_id == run.job_id:
                        # A retry of the job this batch judged: its step 1 removes that
                        # job, so the judgement (JobFailed, …) must be committed first.
                        report.again = True
                        break
                    event = await self._prepare(current, event, facts.job)  # step 1
                    batch.append(event)
                    following = evolve(current, event)
                    if following.job_id != current.job_id:
                        facts = replace(facts, job=None, workers=None)  # that job is behind us
                    current = following
                    if isinstance(event, Requested | JobReenqueued) or current.state in TERMINAL:
                        break  # its effect comes after the commit
                if not batch:
                    if facts.job is not None and match is not None:
                        await self._recover_job(run, facts.job, match)
                    return
                self.crash.reach("before_append")
                new = await runs.append(conn, run, batch)  # step 2: intent
        except runs.ConcurrencyError:
            log.info(
                "run %s lost an append race to a rival daemon", run_id, extra=run_fields(run_id)
            )
            return
        self.crash.reach("after_append")
        before = run
        for event in batch:
            after = evolve(before, event)
            if isinstance(event, Requested | JobReenqueued):
                self.job_clock.requested(event.job_id)  # a new job: its wait starts now
            report.events.append((run_id, event))
            self.metrics.appended(new.id, event)
            log.log(
                logging.WARNING if isinstance(event, RunFailed) else logging.INFO,
                "%s",
                f"{event.TYPE} {_describe(event)}".rstrip(),
                extra=run_fields(new.id, new.match_id, after.job_id or before.job_id, event.TYPE),
            )
            before = after
        if new.state in TERMINAL:
            report.freed += 1
        elif starting:
            report.started += 1
        await self._effect(batch[-1], match)  # step 3: effect

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
        assert self.queues is not None, "a tick needs Redis"
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
            job = self.job_clock.measure(job_id, job, queue_now)  # never the wall clock
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
        return replace(facts, queue_paused=paused), match

    def _note_job(self, run: Run, job: JobView, workers: int | None, paused: bool | None) -> None:
        """Say once per run that BullMQ gave a state retro does not know, and once per
        change why its job waits (schedule-to-start); keep the wait for the metrics."""
        assert run.phase is not None and self.queues is not None
        fields = run_fields(run.id, run.match_id, run.job_id)
        if job.unrecognized and (run.id, job.unrecognized) not in self._unrecognized_said:
            self._unrecognized_said.add((run.id, job.unrecognized))
            log.warning(
                "job %s has a BullMQ state retro does not know (%r): treated as waiting",
                run.job_id,
                job.unrecognized,
                extra=fields,
            )
        wait = self._wait_of(run, job, workers, paused)
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
        """The queue's clock (Redis ``TIME``) now, read at most once a
        :data:`QUEUE_CLOCK_TTL` and carried forward on the monotonic clock."""
        assert self.queues is not None
        mono = time.monotonic()
        if self._queue_clock is None or mono - self._queue_clock[1] > QUEUE_CLOCK_TTL:
            at = await self.queues.server_time()
            if at is None:
                return None
            self._queue_clock = (at, mono)
        at, then = self._queue_clock
        return at + timedelta(seconds=mono - then)

    async def _prepare(self, run: Run, event: Event, job: JobView | None) -> Event:
        """Step 1, before the event is appended (DESIGN §4).

        Entering a phase: remove a stale finished job with the deterministic id, or
        adopt a queued/running one (recorded on the event). Leaving a job behind
        (phase done, skipped, failed, cancelled): remove it if it has not started,
        so a crash cannot leave it queued; safe to repeat, as none of these
        decisions depends on the job still existing. ``job`` is BullMQ's view of
        ``run``'s job read in this step (``None`` if not read): a job seen
        completed or failed has started, so there is nothing to remove.
        """
        assert self.queues is not None
        if isinstance(event, Requested):
            view = await self.queues.clear_stale(event.PHASE, event.job_id)
            if view.state is not JobState.UNKNOWN:
                return replace(event, adopted_created_at=view.created_at)
        elif run.job_id and run.phase and evolve(run, event).job_id != run.job_id:
            if job is None or job.state not in FINISHED_STATES:
                await self.queues.remove_unstarted(run.phase, run.job_id)
        return event

    def _warn_if_unconsumed(self, run: Run, job: JobView | None, workers: int | None) -> None:
        """Log once per job id and attempt that an active job's queue has no worker left
        (its holder died); a waiting job's reason is logged by :meth:`_note_job`."""
        if job is None or job.meaning is not JobMeaning.PROGRESSING or workers != 0:
            return
        if run.phase is None or self.queues is None:
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
        assert self.queues is not None and run.phase is not None and run.job_id is not None
        if not is_stale(run, job):
            return
        await self.queues.remove_finished(run.phase, run.job_id)
        await self.queues.enqueue(
            run.phase, run.job_id, job_payload(run.phase, match), at=await self._queue_now()
        )
        self.job_clock.requested(run.job_id)
        log.info(
            "job %s re-enqueued (job was a stale %s leftover)",
            run.job_id,
            job.state,
            extra=run_fields(run.id, run.match_id, run.job_id),
        )

    async def _effect(self, event: Event, match: MatchFacts | None) -> None:
        """Step 3: enqueue the job a ``…Requested`` event asked for, or enqueue again
        the lost job of a ``JobReenqueued`` (its orphaned hash removed first)."""
        assert self.queues is not None
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

    # --- reads --------------------------------------------------------------

    async def idle(self) -> bool:
        """True when every run is terminal, or given up by this process (RUN_FAILURE_LIMIT)."""
        async with self.engine.connect() as conn:
            return await runs.idle(conn, ignore=self._given_up)

    async def counts(self) -> dict[str, int]:
        """Runs by state (one query; :meth:`status` also reads jobs and workers)."""
        async with self.engine.connect() as conn:
            return {str(state): n for state, n in (await runs.counts_by_state(conn)).items()}

    async def status(
        self, *, now: datetime | None = None, window: float = DEFAULT_WINDOW
    ) -> StatusReport:
        """Where every run stands, and which queues have workers. With ``now`` (aware
        UTC) also the progress: percent done and an ETA from the hand-off rate of the
        last ``window`` seconds (:mod:`retro.progress`)."""
        async with self.engine.connect() as conn:
            counts = await runs.counts_by_state(conn)
            progress = None
            if now is not None:
                progress = await measure(conn, counts=counts, now=now, window=window)
            live = await runs.list_runs(
                conn, states=[State.ANALYZING, State.PREDICTING, State.SETTLING]
            )
            failed = await runs.list_runs(conn, states=[State.FAILED], limit=50)
            teams = {}
            for run in live:
                facts = await match_facts(conn, run.match_id)
                teams[run.id] = (facts.home_team, facts.away_team) if facts else (None, None)
        workers: dict[str, int | None] = {}
        in_flight: list[InFlight] = []
        if self.queues is not None:
            paused: dict[str, bool] = {}
            for phase in Phase:
                name = self.queues.names[phase]
                workers[name] = await self.queues.worker_count(phase)
                paused[name] = await self.queues.is_paused(phase)
            for run in live:
                job_state = None
                idle_queue = None
                waiting = None
                if run.job_id and run.phase:
                    view = await self.queues.job_view(run.phase, run.job_id)
                    view = self.job_clock.measure(run.job_id, view, await self._queue_now())
                    job_state = str(view.state)
                    name = self.queues.names[run.phase]
                    if view.meaning is JobMeaning.WAITING and workers.get(name) == 0:
                        idle_queue = name
                    if now is not None:
                        waiting = self._wait_of(run, view, workers[name], paused[name])
                home, away = teams[run.id]
                in_flight.append(InFlight(run, home, away, job_state, idle_queue, waiting))
        else:
            in_flight = [InFlight(r, *teams[r.id], None, None) for r in live]
        return StatusReport(
            counts=counts,
            in_flight=in_flight,
            failed=failed,
            workers=workers,
            redis_error=self.redis_error,
            progress=progress,
        )

    def _wait_of(
        self, run: Run, job: JobView, workers: int | None, paused: bool | None
    ) -> Waiting | None:
        """``run``'s job as a :class:`Waiting` (queue, seconds, reason, budget), or
        ``None`` if no worker is missing for it: a queued job (``waiting_for``), or an
        active one whose worker died with no worker left (``active_for``)."""
        assert run.phase is not None and self.queues is not None
        reason = why_waiting(job, workers=workers, paused=paused)
        seconds = job.waiting_for if job.waiting_for is not None else job.active_for
        if reason is None or seconds is None:
            return None
        return Waiting(
            queue=self.queues.names[run.phase],
            seconds=seconds,
            reason=reason,
            budget=self.policy.queue_wait_budgets[run.phase],
        )

    def describe(self) -> dict[str, Any]:
        """Masked connection facts for output."""
        return {
            "database": mask_url(self.settings.database_url),
            "redis": mask_url(self.settings.redis_url),
        }


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
