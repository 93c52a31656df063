"""Prometheus metrics and the health check of ``retro run --http-port``.

:class:`Metrics` holds retro's metrics on a registry of its own (never the global
one, so several Apps in one process do not clash). The app feeds it at its choke
points: :meth:`Metrics.appended` for every event appended, :meth:`Metrics.job_seen`
for every job state read, :meth:`Metrics.scanned` per gap scan and
:meth:`Metrics.ticked` per completed tick. Runs by state are counted in the
database once per scrape (:class:`RunsByState`), never per hand-off.

:class:`retro.board.server.HttpServer` serves ``/metrics`` and ``/healthz``
(:class:`Health`) beside the board, from a thread of its own, so a scrape or a
health check never runs on, or waits for, the daemon's event loop. Names and the
health rule are documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine, func, select, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url

from retro.config import error_line, mask
from retro.events import (
    EVENT_TYPES,
    Event,
    JobFailed,
    Phase,
    PhaseTimedOut,
    PredictionsShort,
    Requested,
    RunCancelled,
    RunCompleted,
    RunFailed,
)
from retro.machine import TERMINAL, JobState, JobView, Run, State, Waiting
from retro.notification import KINDS
from retro.queue import count_workers, redis_db
from retro.store.gaps import GapKind, Scan
from retro.store.schema import backfill_runs, backfills, outbox

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0
"""Seconds each health check (database, Redis) and the runs-by-state count may take."""
MIN_TICK_AGE = 30.0
"""Seconds: a tick this recent is always fresh enough for ``/healthz``."""
REASON_LENGTH = 60
"""Longest failure ``reason`` label (characters), after normalisation."""
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Hand-off latency buckets, seconds (issue 4's targets: p50 ≤ 10 ms, p99 ≤ 50 ms)."""
SCAN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
"""Gap scan duration buckets, seconds."""
LIVE_BACKFILLS_SHOWN = 20
"""Live backfills reported per scrape (the oldest first): one series each, so the
label cardinality stays bounded however many backfills are stored."""

_KNOWN_REASONS = (
    ("timed out", "timeout"),
    ("timeout", "timeout"),
    ("injected failure", "injected failure"),
    ("completed but", "completed without data"),
    ("no worker", "no worker"),
)
_LONG_ID = re.compile(r"\b(?=[0-9a-f-]*\d)[0-9a-f-]{8,}\b")
_NUMBER = re.compile(r"\d+")


def failure_reason(reason: str | None) -> str:
    """A bounded label for a job failure ``reason``: a known class (``timeout``,
    ``injected failure``, ``completed without data``, ``no worker``) or the first
    :data:`REASON_LENGTH` characters, lower case, with ids and numbers replaced
    (``id``/``N``) so one label never becomes one series per match. Passwords masked."""
    text_ = " ".join(mask(reason or "").split()).lower()
    if not text_:
        return "no reason given"
    for needle, label in _KNOWN_REASONS:
        if needle in text_:
            return label
    return _NUMBER.sub("N", _LONG_ID.sub("id", text_))[:REASON_LENGTH]


class Metrics:
    """retro's metrics on their own :class:`CollectorRegistry` (``registry``).

    Thread-safe (prometheus-client's metrics are); the hand-off memory is only
    touched from the daemon's event loop.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.handoffs = Counter(
            "retro_handoffs",
            "Jobs retro enqueued (…Requested events appended), by stage.",
            ["stage"],
            registry=registry,
        )
        self.handoff_latency = Histogram(
            "retro_handoff_latency_seconds",
            "Previous stage's job finished (BullMQ finishedOn) to the next stage's job "
            "added, seconds, by the stage handed to.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.job_failures = Counter(
            "retro_job_failures",
            "Failed job attempts (JobFailed, PhaseTimedOut, PredictionsShort), by stage "
            "and normalised reason.",
            ["stage", "reason"],
            registry=registry,
        )
        self.events = Counter(
            "retro_events", "Events appended, by event type.", ["event"], registry=registry
        )
        for event_type in EVENT_TYPES:  # every series from 0: increase() sees the first one
            self.events.labels(event=event_type)
        self.scan_duration = Histogram(
            "retro_gap_scan_duration_seconds",
            "Duration of one gap scan, seconds.",
            buckets=SCAN_BUCKETS,
            registry=registry,
        )
        self.gaps_found = Gauge(
            "retro_gaps_found",
            "Seedable gap matches found by the last scan, by kind (a match may count "
            "under several kinds).",
            ["kind"],
            registry=registry,
        )
        self.scans = Counter("retro_gap_scans", "Gap scans run.", registry=registry)
        self.ticks = Counter("retro_ticks", "Ticks completed.", registry=registry)
        self.last_tick = Gauge(
            "retro_last_tick_timestamp_seconds",
            "When the last tick completed, unix seconds.",
            registry=registry,
        )
        self.oldest_waiting = Gauge(
            "retro_oldest_waiting_job_seconds",
            "Seconds the oldest job retro requested has waited for a worker "
            "(schedule-to-start), by queue; 0 when none waits. Measured each tick.",
            ["queue"],
            registry=registry,
        )
        self.notifications_sent = Counter(
            "retro_notifications_sent",
            "Webhook notifications the receiver accepted (2xx), by kind.",
            ["kind"],
            registry=registry,
        )
        self.notifications_failed = Counter(
            "retro_notifications_failed",
            "Webhook notification attempts that failed (error, timeout, non-2xx), by kind.",
            ["kind"],
            registry=registry,
        )
        self.notifications_given_up = Counter(
            "retro_notifications_given_up",
            "Webhook notifications given up after their last attempt, by kind.",
            ["kind"],
            registry=registry,
        )
        for kind in KINDS:
            for counter in (
                self.notifications_sent,
                self.notifications_failed,
                self.notifications_given_up,
            ):
                counter.labels(kind=kind)
        self.over_budget: tuple[Waiting, ...] = ()
        """Jobs over their schedule-to-start budget at the last tick (for ``/healthz``)."""
        self.last_tick_at: float | None = None
        """Unix seconds of the last completed tick (``None`` before the first)."""
        self.last_tick_monotonic: float | None = None
        """``time.monotonic()`` of the last completed tick (``None`` before the first)."""
        self._last_job: dict[str, tuple[Phase, str, float]] = {}
        """Run id -> (phase, job id, unix seconds requested) of its last request."""
        self._finished_at: dict[str, float] = {}
        """Job id -> unix seconds BullMQ finished it (completed)."""
        self._waiting: dict[str, tuple[str, float, float]] = {}
        """Previous stage's job id -> (stage, added, previous requested) of a hand-off
        requested before that job was seen finished."""
        for phase in Phase:  # every stage shows from the first scrape, at 0
            self.handoffs.labels(stage=str(phase))
            self.handoff_latency.labels(stage=str(phase))
        for kind in GapKind:
            self.gaps_found.labels(kind=str(kind))

    def job_seen(self, run: Run, job: JobView | None) -> None:
        """Note BullMQ's ``finishedOn`` of ``run``'s job if it shows it completed."""
        if job is not None and run.job_id and job.state == JobState.COMPLETED and job.finished_at:
            self._finish(run.job_id, job.finished_at.timestamp())

    def waited(self, waits: Iterable[Waiting], queues: Iterable[str]) -> None:
        """Record the jobs seen waiting for a worker in one tick: the oldest wait per
        queue (every queue in ``queues`` reported, 0 when none waits) and the jobs
        over their schedule-to-start budget."""
        seen = list(waits)
        oldest = dict.fromkeys(queues, 0.0)
        for wait in seen:
            oldest[wait.queue] = max(oldest.get(wait.queue, 0.0), wait.seconds)
        for queue, seconds in oldest.items():
            self.oldest_waiting.labels(queue=queue).set(seconds)
        self.over_budget = tuple(w for w in seen if w.over_budget)

    def job_completed(self, job_id: str, at: float) -> None:
        """A job completed at ``at`` (unix seconds; BullMQ's completion event): ends the
        hand-off latency of a next stage already requested before it was seen."""
        self._finish(job_id, at)

    def appended(self, run_id: str, event: Event, *, now: float | None = None) -> None:
        """Count ``event``, just appended to run ``run_id``; ``now`` (unix seconds,
        default the wall clock) is when its job is added, for hand-off latency."""
        self.events.labels(event=event.TYPE).inc()
        if isinstance(event, Requested):
            stage = str(event.PHASE)
            self.handoffs.labels(stage=stage).inc()
            added = time.time() if now is None else now
            previous = self._last_job.get(run_id)
            _bounded(self._last_job)
            self._last_job[run_id] = (event.PHASE, event.job_id, added)
            if previous is not None and previous[0] is not event.PHASE:  # not a retry
                _, job_id, requested = previous
                finished = self._finished_at.pop(job_id, None)
                if finished is not None and finished >= requested:
                    self.handoff_latency.labels(stage=stage).observe(max(0.0, added - finished))
                else:  # decided on the data before BullMQ marked the job finished
                    _bounded(self._waiting)
                    self._waiting[job_id] = (stage, added, requested)
        elif isinstance(event, JobFailed):
            self.job_failures.labels(stage=event.phase, reason=failure_reason(event.reason)).inc()
        elif isinstance(event, PhaseTimedOut):
            self.job_failures.labels(stage=event.phase, reason="timeout").inc()
        elif isinstance(event, PredictionsShort):
            self.job_failures.labels(stage=Phase.PREDICTIONS, reason="predictions short").inc()
        elif isinstance(event, RunCompleted | RunFailed | RunCancelled):
            self._last_job.pop(run_id, None)

    def _finish(self, job_id: str, at: float) -> None:
        waiting = self._waiting.pop(job_id, None)
        if waiting is not None and at >= waiting[2]:
            stage, added, _ = waiting
            self.handoff_latency.labels(stage=stage).observe(max(0.0, added - at))
            return
        _bounded(self._finished_at)
        self._finished_at[job_id] = at

    def scanned(self, scan: Scan, seconds: float) -> None:
        """Record one gap scan that took ``seconds``."""
        self.scans.inc()
        self.scan_duration.observe(seconds)
        for kind, count in scan.by_kind().items():
            self.gaps_found.labels(kind=str(kind)).set(count)

    def ticked(self, at: float | None = None, *, monotonic: float | None = None) -> None:
        """Record a completed tick at ``at`` (unix seconds, default now; shown and
        exported) and ``monotonic`` (``time.monotonic()`` seconds, default now; what
        ``/healthz`` judges the tick's age by, so a jump of the wall clock cannot
        make a stalled daemon look healthy or a live one look stalled)."""
        self.last_tick_at = time.time() if at is None else at
        self.last_tick_monotonic = time.monotonic() if monotonic is None else monotonic
        self.ticks.inc()
        self.last_tick.set(self.last_tick_at)


def _bounded(memory: dict[str, Any], limit: int = 100_000) -> None:
    """Forget everything in ``memory`` past ``limit`` entries (runs a rival daemon
    took over, jobs never handed off): latency memory must not grow without end."""
    if len(memory) >= limit:
        memory.clear()


def sync_engine(database_url: str) -> Engine:
    """A small synchronous engine on retro's database for scrapes and health checks
    (``sqlite+aiosqlite`` → stdlib ``sqlite3``; psycopg serves both), with
    :data:`CHECK_TIMEOUT` on connecting and on statements."""
    url = make_url(database_url)
    args: dict[str, Any]
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite")
        args = {"timeout": CHECK_TIMEOUT, "check_same_thread": False}
    else:
        timeout_ms = round(CHECK_TIMEOUT * 1000)
        args = {
            "connect_timeout": round(CHECK_TIMEOUT),
            "options": f"-c statement_timeout={timeout_ms}",
        }
    return create_sync_engine(
        url, connect_args=args, pool_size=2, max_overflow=2, pool_timeout=CHECK_TIMEOUT
    )


class RunsByState:
    """The ``retro_runs`` gauge (label ``state``): one ``GROUP BY`` per scrape.

    Every state is reported (0 when absent). If the database does not answer
    within :data:`CHECK_TIMEOUT`, the scrape goes on without this gauge.
    """

    NAME = "retro_runs"
    HELP = "Runs by state, counted in the database at scrape time."

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        """The gauge's name, without querying (called at registration)."""
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])]

    def collect(self) -> Iterator[Metric]:
        """Count runs by state now."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(backfill_runs.c.state, func.count()).group_by(backfill_runs.c.state)
                ).all()
        except Exception as exc:
            log.warning("runs by state not counted: %s", error_line(exc))
            return
        counts = {str(state): int(n) for state, n in rows}
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["state"])
        for state in State:
            family.add_metric([str(state)], counts.pop(str(state), 0))
        for unknown, n in sorted(counts.items()):  # a state this version does not know
            family.add_metric([unknown], n)
        yield family


class Notifications:
    """``retro_notifications_pending`` (not sent yet, still tried) and
    ``retro_notifications_abandoned`` (given up, never sent): the ``outbox`` rows,
    counted in the database per scrape (one query), so they hold across restarts and
    rival daemons. Left out of a scrape when the database does not answer."""

    PENDING = "retro_notifications_pending"
    ABANDONED = "retro_notifications_abandoned"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        """The gauges' names, without querying."""
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(self.PENDING, "Webhook notifications recorded and not sent yet."),
            GaugeMetricFamily(
                self.ABANDONED, "Webhook notifications given up (never sent) in the outbox."
            ),
        )

    def collect(self) -> Iterator[Metric]:
        """Count the outbox rows now."""
        try:
            with self.engine.connect() as conn:
                pending, abandoned = conn.execute(
                    select(
                        func.count().filter(outbox.c.next_try_at.is_not(None)),
                        func.count().filter(outbox.c.next_try_at.is_(None)),
                    ).where(outbox.c.sent_at.is_(None))
                ).one()
        except Exception as exc:
            log.warning("notifications not counted: %s", error_line(exc))
            return
        families = self._families()
        families[0].add_metric([], int(pending or 0))
        families[1].add_metric([], int(abandoned or 0))
        yield from families


class LiveBackfills:
    """``retro_backfill_running_seconds`` and ``retro_backfill_live_runs`` (labels
    ``backfill``, ``label``, ``state``: ``running`` or ``paused``): each backfill with
    a live run and not cancelled, the :data:`LIVE_BACKFILLS_SHOWN` oldest, counted in
    the database per scrape. Seconds since it was created. A finished backfill drops
    out, so the series are few. Left out of a scrape when the database does not answer.
    """

    SECONDS = "retro_backfill_running_seconds"
    LIVE = "retro_backfill_live_runs"
    LABELS = ("backfill", "label", "state")

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] | None = None) -> None:
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))

    def describe(self) -> Iterable[Metric]:
        """The gauges' names, without querying."""
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                self.SECONDS,
                "Seconds since each live backfill (a run not ended, not cancelled) was created.",
                labels=self.LABELS,
            ),
            GaugeMetricFamily(
                self.LIVE, "Runs not ended of each live backfill.", labels=self.LABELS
            ),
        )

    def collect(self) -> Iterator[Metric]:
        """Read the live backfills now."""
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(
                        backfills.c.id,
                        backfills.c.label,
                        backfills.c.paused,
                        backfills.c.created_at,
                        func.count(),
                    )
                    .join(backfill_runs, backfill_runs.c.backfill_id == backfills.c.id)
                    .where(
                        backfills.c.cancelled_at.is_(None),
                        backfill_runs.c.state.not_in([str(s) for s in TERMINAL]),
                    )
                    .group_by(
                        backfills.c.id,
                        backfills.c.label,
                        backfills.c.paused,
                        backfills.c.created_at,
                    )
                    .order_by(backfills.c.created_at, backfills.c.id)
                    .limit(LIVE_BACKFILLS_SHOWN)
                ).all()
        except Exception as exc:
            log.warning("live backfills not read: %s", error_line(exc))
            return
        now = self.clock()
        seconds, live = self._families()
        for backfill_id, label, paused, created_at, n in rows:
            labels = [backfill_id, label[:80], "paused" if paused else "running"]
            seconds.add_metric(labels, max(0.0, (now - created_at).total_seconds()))
            live.add_metric(labels, int(n))
        yield seconds
        yield live


def database_collectors(engine: Engine) -> list[Any]:
    """The collectors that read retro's database per scrape: runs by state, the
    outbox and the live backfills (register each on the metrics' registry)."""
    return [RunsByState(engine), Notifications(engine), LiveBackfills(engine)]


class WorkersByQueue:
    """The ``retro_workers`` gauge (label ``queue``): one ``CLIENT LIST`` per scrape,
    counting BullMQ workers of each queue on retro's own Redis database
    (:func:`retro.queue.count_workers`). Left out of a scrape when Redis does not
    answer within :data:`CHECK_TIMEOUT` or will not list its clients."""

    NAME = "retro_workers"
    HELP = "BullMQ workers consuming each queue on retro's Redis database (CLIENT LIST)."

    def __init__(self, redis_url: str, prefix: str, queues: Iterable[str]) -> None:
        self.prefix = prefix
        self.queues = list(queues)
        self.db = redis_db(redis_url)
        self.redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=CHECK_TIMEOUT,
            socket_connect_timeout=CHECK_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )

    def describe(self) -> Iterable[Metric]:
        """The gauge's name, without querying (called at registration)."""
        return [GaugeMetricFamily(self.NAME, self.HELP, labels=["queue"])]

    def collect(self) -> Iterator[Metric]:
        """Count the workers now."""
        try:
            clients = self.redis.client_list()
        except Exception as exc:
            log.warning("workers not counted: %s", error_line(exc))
            return
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["queue"])
        for queue in self.queues:
            n = count_workers(clients, prefix=self.prefix, queue=queue, db=self.db)
            family.add_metric([queue], n)
        yield family

    def close(self) -> None:
        """Close the Redis client."""
        self.redis.close()


class Health:
    """``/healthz``: healthy when the last tick is recent, the database answers
    ``SELECT 1`` and Redis answers ``PING``, each check within :data:`CHECK_TIMEOUT`.

    "Recent" means within ``max(3 * tick_interval, 30 s)`` (:meth:`tick_limit`); no
    completed tick yet is unhealthy. A job that waited for a worker longer than its
    schedule-to-start budget makes a healthy daemon ``degraded`` (still HTTP 200:
    restarting retro would not help; the reason names what to fix).

    Args:
        engine: a synchronous engine on retro's database (:func:`sync_engine`).
        redis_url: the Redis the daemon uses (an embedded one's ``unix://`` socket).
        metrics: where the last tick is recorded; ``None`` when no daemon runs in
            this process (``retro board``): the tick is then not checked.
        tick_interval: the daemon's tick interval, seconds.
        clock: monotonic seconds, as :meth:`Metrics.ticked` records them (for tests).
    """

    def __init__(
        self,
        engine: Engine,
        redis_url: str,
        metrics: Metrics | None,
        tick_interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.tick_interval = tick_interval
        self.clock = clock
        self.redis = redis.Redis.from_url(
            redis_url,
            socket_timeout=CHECK_TIMEOUT,
            socket_connect_timeout=CHECK_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )

    @property
    def tick_limit(self) -> float:
        """Oldest acceptable age of the last tick, seconds: ``max(3 * tick, 30)``."""
        return max(3 * self.tick_interval, MIN_TICK_AGE)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, body)``; ``body`` is ``{"status": "ok"|"degraded"|"unhealthy",
        "failed": [names], "checks": {"tick"|"database"|"redis": {"ok": bool, …}},
        (no ``tick`` without ``metrics``)
        "waiting": [{"queue", "seconds", "budget_seconds", "reason", "text"}]}``, masked.
        ``degraded`` (healthy) when ``waiting`` is not empty: jobs over their
        schedule-to-start budget at the last tick."""
        checks = {} if self.metrics is None else {"tick": self._tick()}
        checks["database"] = self._probe(self._database)
        checks["redis"] = self._probe(self._redis)
        failed = [name for name, result in checks.items() if not result["ok"]]
        waiting = [
            {
                "queue": w.queue,
                "seconds": round(w.seconds, 3),
                "budget_seconds": w.budget,
                "reason": str(w.reason),
                "text": w.text,
            }
            for w in (() if self.metrics is None else self.metrics.over_budget)
        ]
        status = "unhealthy" if failed else "degraded" if waiting else "ok"
        body = {"status": status, "failed": failed, "checks": checks, "waiting": waiting}
        return not failed, body

    def close(self) -> None:
        """Close the Redis client."""
        self.redis.close()

    def _tick(self) -> dict[str, Any]:
        assert self.metrics is not None
        last, since = self.metrics.last_tick_at, self.metrics.last_tick_monotonic
        limit = self.tick_limit
        if last is None or since is None:
            return {"ok": False, "error": "no tick completed yet", "limit_seconds": limit}
        age = max(0.0, self.clock() - since)
        result: dict[str, Any] = {
            "ok": age <= limit,
            "age_seconds": round(age, 3),
            "limit_seconds": limit,
            "last": datetime.fromtimestamp(last, UTC).isoformat(),
        }
        if not result["ok"]:
            result["error"] = f"last tick {age:.1f} s ago (limit {limit:g} s)"
        return result

    def _database(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def _redis(self) -> None:
        self.redis.ping()

    @staticmethod
    def _probe(check: Callable[[], None]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:
            reason = error_line(exc)
            return {"ok": False, "error": reason}
        return {"ok": True, "seconds": round(time.perf_counter() - started, 4)}


@dataclass(frozen=True)
class Probes:
    """What ``/metrics`` and ``/healthz`` read of a running daemon: its metrics (the
    registry, the last-tick clock and the waits over budget) and where to ping its
    database and Redis. Small values, not the app, so this module imports no part of
    the daemon.

    Attributes:
        metrics: the daemon's metrics (:meth:`Metrics.ticked` sets the tick clock).
        database_url: retro's database (async URL); pinged with ``SELECT 1`` and read
            for runs by state through a synchronous engine (:func:`sync_engine`).
        redis_url: the Redis the daemon uses (an embedded one's ``unix://`` socket);
            pinged, and read for the workers on each queue.
        queue_prefix: BullMQ key prefix.
        queues: the queue names whose workers are counted.
        tick_interval: the daemon's tick interval, seconds (the health rule's unit).
    """

    metrics: Metrics
    database_url: str
    redis_url: str
    queue_prefix: str
    queues: Sequence[str]
    tick_interval: float
