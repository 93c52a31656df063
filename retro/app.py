"""The application: settings, database, Redis and the operations the CLI and the
daemon call (seed gap runs, re-arm, verify, report status). One tick lives in
:mod:`retro.tick`; :meth:`App.tick` hands it over.

Time and ids come in as arguments: every method takes ``now`` (aware UTC);
run ids come from the ``new_id`` callable given at construction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from retro.clock import Clocks
from retro.config import EMBEDDED_REDIS, Settings, mask_url
from retro.crashpoints import CrashPoints
from retro.embedded import EmbeddedRedis
from retro.errors import UsageError
from retro.events import Phase, RunSeeded
from retro.logs import run_fields
from retro.machine import (
    JobMeaning,
    Policy,
    Run,
    State,
    Waiting,
    cannot_heal,
    clip,
    has_external_id,
)
from retro.metrics import Metrics, Probes
from retro.progress import DEFAULT_WINDOW, Progress, measure
from retro.queue import JobOptions, Queues, RedisUnreachable, job_id_formats, queue_names
from retro.store import db, gaps, migrate, runs
from retro.store.facts import match_facts
from retro.tick import RUN_FAILURE_LIMIT as RUN_FAILURE_LIMIT  # re-exported
from retro.tick import Ticker, wait_of
from retro.tick import TickReport as TickReport
from retro.tick import job_payload as job_payload
from retro.tick import unreachable as unreachable

log = logging.getLogger("retro")


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
        require_external_id=settings.require_external_id,
        queue_wait_budgets={phase: settings.queue_wait(phase) for phase in Phase},
        retry_backoff=settings.retry_backoff,
        budgets={phase: settings.phase_timeout(phase) for phase in Phase},
        job_ids=job_id_formats(settings),
    )


@dataclass(frozen=True)
class SeedReport:
    """What ``start`` found and seeded. ``cannot_heal`` maps a gap match's id to why
    its run could never heal (:func:`retro.machine.cannot_heal`); a real ``start``
    seeds it all the same, and the run fails at its first tick with the reason."""

    scan: gaps.Scan
    seeded: list[str]
    dry_run: bool
    cannot_heal: dict[str, str] = field(default_factory=dict)


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

    @property
    def holding(self) -> list[InFlight]:
        """The ``in_flight`` runs that hold a ``max_in_flight`` slot (not in back-off)."""
        return [item for item in self.in_flight if runs.holds_slot(item.run)]

    @property
    def backoff(self) -> list[InFlight]:
        """The ``in_flight`` runs sleeping out a retry back-off (holding no slot),
        earliest retry (``run.not_before``, aware UTC) first."""
        asleep = [item for item in self.in_flight if not runs.holds_slot(item.run)]
        return sorted(asleep, key=lambda item: item.run.not_before or item.run.updated_at)


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
        self._crash = crash if crash is not None else CrashPoints()
        self.metrics = Metrics()
        self.clocks = Clocks()
        self.ticker: Ticker | None = None
        """The tick (:mod:`retro.tick`), once Redis is open."""

    @property
    def crash(self) -> CrashPoints:
        """The crash points the tick reaches (tests replace them on an open app)."""
        return self._crash

    @crash.setter
    def crash(self, points: CrashPoints) -> None:
        self._crash = points
        if self.ticker is not None:
            self.ticker.crash = points

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
                if self.queues is not None:
                    self.ticker = Ticker(
                        settings=self.settings,
                        policy=self.policy,
                        engine=self.engine,
                        queues=self.queues,
                        metrics=self.metrics,
                        clocks=self.clocks,
                        crash=self._crash,
                    )
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close Redis connections, the embedded server (if last user) and the engine."""
        self.ticker = None
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
        doomed = {
            gap.match_id: why
            for gap in scan.gaps
            if (
                why := cannot_heal(
                    has_analysis=gaps.GapKind.MISSING_ANALYSIS not in gap.kinds,
                    external_id=has_external_id(gap.external_id),
                    policy=self.policy,
                )
            )
        }
        return SeedReport(scan=scan, seeded=seeded, dry_run=dry_run, cannot_heal=doomed)

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
        """One tick (:meth:`retro.tick.Ticker.tick`): advance every due run.

        Raises:
            RedisUnreachable: the app was opened without Redis.
        """
        if self.ticker is None:
            raise RedisUnreachable(self.redis_error or "a tick needs Redis")
        return await self.ticker.tick(now=now)

    # --- reads --------------------------------------------------------------

    async def idle(self) -> bool:
        """True when every run is terminal, or given up by this process (RUN_FAILURE_LIMIT)."""
        async with self.engine.connect() as conn:
            return await runs.idle(conn, ignore=self.ticker.given_up if self.ticker else {})

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
                    queue_now = await self.clocks.queue.now(self.queues.server_time)
                    view = self.clocks.job.measure(run.job_id, view, queue_now)
                    job_state = str(view.state)
                    name = self.queues.names[run.phase]
                    if view.meaning is JobMeaning.WAITING and workers.get(name) == 0:
                        idle_queue = name
                    if now is not None:
                        waiting = wait_of(
                            run, view, workers[name], paused[name], self.queues, self.policy
                        )
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

    def describe(self) -> dict[str, Any]:
        """Masked connection facts for output."""
        return {
            "database": mask_url(self.settings.database_url),
            "redis": mask_url(self.settings.redis_url),
        }
