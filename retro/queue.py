"""The BullMQ adapter: queue names, job names, payloads, job ids, enqueue, job state.

The only module that imports ``bullmq``. It knows nothing of runs: it is told
a phase, a job id and a payload (DESIGN §1, byte-compatible with the host's
Node workers) and answers with BullMQ's own view of a job.

Crash safety (DESIGN §4): :meth:`Queues.clear_stale` is step 1 (before the
intent is appended), :meth:`Queues.enqueue` is step 3 (after). ``Queue.add``
returns a Job even when BullMQ dropped the add as a duplicate, so its return
value is never taken as proof of anything.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bullmq import Job, Queue, QueueEvents, Worker
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retro.config import Settings, mask
from retro.errors import UsageError
from retro.events import Phase
from retro.machine import JobState, JobView
from retro.stages import (
    JOB_ID_FORMATS,
    JOB_NAMES,
    STAGES,
    analysis_payload,
    predictions_payload,
    settlement_payload,
)

log = logging.getLogger(__name__)

__all__ = [
    "JOB_ID_FORMATS",
    "JOB_NAMES",
    "analysis_payload",
    "predictions_payload",
    "settlement_payload",
]
"""Re-exported from :mod:`retro.stages`, where the stage vocabulary lives."""

FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.FAILED})
UNSTARTED_STATES = frozenset(
    {JobState.WAITING, JobState.DELAYED, JobState.PRIORITIZED, JobState.WAITING_CHILDREN}
)
"""States a job can be removed in: no worker has taken it."""
REDIS_RETRIES = 2
REDIS_TIMEOUT = 5.0
"""Seconds a non-blocking Redis command may take before it counts as an outage."""
EVENTS_BLOCK_MS = 1000
"""Milliseconds each QueueEvents ``XREAD`` blocks for (BullMQ's ``blockingTimeout``).

BullMQ's default, 10 000 ms, is longer than the 5 s read timeout redis-py gives the
connection it opens from a URL: an idle stream then made every ``XREAD`` time out,
and redis-py retried it after a back-off of seconds, during which no completion was
heard (and, before the first event, the retry read from ``$`` again and lost what
came meanwhile). Hand-offs fell back to the next tick, and after 20 timeouts in a
row the listener stopped for good. Blocking 1 s, well under any read timeout, costs
one empty ``XREAD`` a second per queue when nothing happens."""
_SCRIPT_COMMANDS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro"})
"""CLIENT LIST ``cmd`` values of a connection whose last command ran a Lua script."""


def _worker_name_of(name: str, bases: set[str]) -> bool:
    """True when the client ``name`` is a BullMQ Worker's on a queue named by ``bases``."""
    return any(name == base or name.startswith(f"{base}:w:") for base in bases)


def read_state(raw: object) -> tuple[JobState, str | None]:
    """BullMQ's ``getState`` answer as ``(state, unrecognized)``: a string retro does
    not know (a newer BullMQ's) is read as ``waiting`` and returned as ``unrecognized``,
    so the caller can say so once; it is never taken as lost (no re-enqueue loop)."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        return JobState(text), None
    except ValueError:
        return JobState.WAITING, text


def redis_db(url: str) -> int:
    """The logical database number ``url`` selects (``/1``, ``?db=1``; default 0)."""
    return int(ConnectionPool.from_url(url).connection_kwargs.get("db") or 0)


def count_workers(clients: list[dict[str, Any]], *, prefix: str, queue: str, db: int) -> int:
    """BullMQ Workers consuming ``queue`` among ``clients`` (CLIENT LIST entries, as
    redis-py parses them), counting only clients on logical database ``db``: a worker
    on another database of the same server never takes these jobs. See
    :meth:`Queues.worker_count` for how the connections are told apart."""
    bases = {f"{prefix}:{queue}", f"{prefix}:{base64.b64encode(queue.encode()).decode()}"}
    named = [
        c
        for c in clients
        if str(c.get("db", "0")) == str(db) and _worker_name_of(str(c.get("name", "")), bases)
    ]
    blocking = sum(1 for c in named if c.get("cmd") not in _SCRIPT_COMMANDS)
    # An idle python-bullmq Worker drops its blocking connection between polls
    # for a while: its script connection alone still proves a consumer.
    return max(blocking, 1 if named else 0)


class RedisUnreachable(UsageError, RuntimeError):
    """Redis did not answer; the message names the (masked) URL."""


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis did not answer (down, restarting, dropped)."""
    return isinstance(
        exc, RedisUnreachable | RedisConnectionError | RedisTimeoutError | ConnectionError
    )


def queue_names(settings: Settings) -> dict[Phase, str]:
    """The host's queue name for each phase, from ``settings``."""
    return {phase: str(getattr(settings, stage.queue_setting)) for phase, stage in STAGES.items()}


def job_id_formats(settings: Settings) -> dict[Phase, str]:
    """The job-id template of each phase, from ``settings`` (e.g. ``analyze-retro-{matchId}``;
    validated there: ``{matchId}`` exactly once, no ``:``)."""
    return {phase: str(getattr(settings, stage.job_id_setting)) for phase, stage in STAGES.items()}


_UNRECOVERABLE_NAME = re.compile(r"(?:[\w$]+\.)*UnrecoverableError(?::|$)")
"""The header of an error thrown as BullMQ's ``UnrecoverableError`` (no retry can save
the job): Node's stack starts ``UnrecoverableError: …``; Python's traceback ends in a
header ``…unrecoverable_error.UnrecoverableError: …``."""
_UNRECOVERABLE_FRAME = re.compile(r"^\s*at new UnrecoverableError\b", re.MULTILINE)
"""A Node subclass named otherwise still shows the base constructor's frame."""
_PYTHON_TRACEBACK = "Traceback (most recent call last):"


def unrecoverable(stacktrace: Any) -> bool:
    """True when the last entry of a failed job's ``stacktrace`` (BullMQ keeps one per
    failed attempt) was thrown as ``UnrecoverableError`` (BullMQ's own error for a job
    that must not be retried), by a Node or a Python worker.

    Only the error the worker threw counts, as BullMQ's own check does: the header of
    a Node stack (or its base constructor's frame), the final exception of a Python
    traceback. An ``UnrecoverableError`` only named in a message, or one a Python
    worker caught and replaced with another error (a chained traceback shows both),
    is an ordinary failure, which BullMQ and retro retry."""
    if not isinstance(stacktrace, list) or not stacktrace:
        return False
    text = str(stacktrace[-1])
    if _PYTHON_TRACEBACK in text:  # the final exception: the last traceback's header
        last = text.rsplit(_PYTHON_TRACEBACK, 1)[1]
        header = next((line for line in last.splitlines() if line and not line[0].isspace()), "")
        return _UNRECOVERABLE_NAME.match(header) is not None
    first = text.lstrip().split("\n", 1)[0]
    return (
        _UNRECOVERABLE_NAME.match(first) is not None
        or _UNRECOVERABLE_FRAME.search(text) is not None
    )


def _instant(ms: Any) -> datetime | None:
    """A BullMQ millisecond timestamp as aware UTC (``0``/missing → ``None``)."""
    try:
        value = int(ms or 0)
    except (TypeError, ValueError):
        return None
    return datetime.fromtimestamp(value / 1000, UTC) if value > 0 else None


@dataclass(frozen=True)
class JobOptions:
    """BullMQ options for every job retro adds (``backoff_ms`` in milliseconds)."""

    priority: int = 3
    attempts: int = 1
    backoff_ms: int = 1000

    def for_job(self, job_id: str) -> dict[str, Any]:
        """The ``opts`` of ``Queue.add``: no ``delay`` (pure latency in the original)."""
        opts: dict[str, Any] = {
            "jobId": job_id,
            "priority": self.priority,
            "attempts": self.attempts,
            "removeOnComplete": False,
            "removeOnFail": False,
        }
        if self.attempts > 1:
            opts["backoff"] = {"type": "exponential", "delay": self.backoff_ms}
        return opts


class Queues:
    """The three host queues on one Redis. Use as an async context manager."""

    def __init__(
        self, redis_url: str, *, prefix: str, names: Mapping[Phase, str], options: JobOptions
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.names = dict(names)
        self.options = options
        self._queues: dict[Phase, Queue] = {}
        self._events: list[QueueEvents] = []
        self._admin: Redis | None = None
        self.db = redis_db(redis_url)
        """The logical database retro's connections select."""

    async def __aenter__(self) -> Queues:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def queue(self, phase: Phase) -> Queue:
        """The bullmq ``Queue`` of ``phase`` (created on first use)."""
        if phase not in self._queues:
            self._queues[phase] = Queue(
                self.names[phase], {"connection": self._client(), "prefix": self.prefix}
            )
        return self._queues[phase]

    def _client(self) -> Redis:
        """A Redis client for one queue that gives up quickly when Redis is down
        (bullmq's own retries up to 20 times with back-off capped at 20 s, which
        would hang a tick silently): the daemon then logs the outage and retries
        every tick, resuming within one tick of recovery (DESIGN §4.5)."""
        return Redis.from_url(
            self.redis_url,
            decode_responses=True,
            single_connection_client=True,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), REDIS_RETRIES),
            retry_on_error=[BusyLoadingError, RedisConnectionError, RedisTimeoutError],
            socket_connect_timeout=REDIS_TIMEOUT,
            socket_timeout=REDIS_TIMEOUT,
        )

    async def close(self) -> None:
        """Close every connection this adapter opened."""
        for events in self._events:
            await events.close()
        for queue in self._queues.values():
            await queue.close()
        if self._admin is not None:
            await self._admin.aclose()
            self._admin = None
        self._events.clear()
        self._queues.clear()

    async def check(self) -> str | None:
        """Ping Redis; return a warning if it may evict BullMQ's keys, else ``None``.

        Raises:
            RedisUnreachable: no answer.
        """
        client = Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            await client.ping()
            try:
                policy = (await client.config_get("maxmemory-policy")).get("maxmemory-policy")
            except ResponseError:
                return None  # CONFIG disabled (managed Redis): cannot tell
            if policy not in (None, "noeviction"):
                return (
                    f"Redis maxmemory-policy is {policy!r}, not 'noeviction': Redis may evict "
                    "BullMQ jobs (BullMQ requires noeviction)"
                )
            return None
        except (RedisError, OSError) as exc:
            raise RedisUnreachable(
                f"Redis {mask(self.redis_url)} unreachable: {mask(str(exc))}"
            ) from None
        finally:
            await client.aclose()

    async def job_view(self, phase: Phase, job_id: str) -> JobView:
        """BullMQ's view of ``job_id``: state (``unknown`` if absent) and timestamps."""
        # State first, data second: a job that finishes in between is read with its
        # outcome (failedReason, finishedOn), never as "failed" without a reason.
        return await self.job_view_in(phase, job_id, await self.job_state(phase, job_id))

    async def job_state(self, phase: Phase, job_id: str) -> str:
        """BullMQ's raw ``getState`` answer for ``job_id`` (``unknown`` if absent): the
        first half of :meth:`job_view`, which names it (:func:`read_state`), for a
        caller that reads other data in between."""
        return str(await self.queue(phase).getJobState(job_id))

    async def job_view_in(self, phase: Phase, job_id: str, state: str) -> JobView:
        """The second half of :meth:`job_view`: ``job_id``'s data, read after its
        ``state`` was (so a finished state comes with its outcome). An ``unknown``
        job whose hash exists is ``orphaned`` (BullMQ issue 1644); while a worker's
        lock is still on it, it reads as ``active`` (a re-add would be ignored)."""
        named, unrecognized = read_state(state)
        queue = self.queue(phase)
        if named is JobState.UNKNOWN:
            key = queue.toKey(job_id)
            async with queue.client.pipeline(transaction=False) as pipe:
                pipe.exists(key)
                pipe.exists(f"{key}:lock")
                orphaned, locked = await pipe.execute()
            if not (orphaned and locked):
                return JobView(state=JobState.UNKNOWN, orphaned=bool(orphaned))
            # A worker's lock is still on the orphan: it is being worked on (its
            # remove is refused until the lock expires), so it counts as active.
            named = JobState.ACTIVE
        job = await Job.fromId(queue, job_id)
        if job is None:
            return JobView(state=JobState.UNKNOWN)
        return JobView(
            state=named,
            created_at=_instant(job.timestamp),
            processed_at=_instant(job.processedOn),
            finished_at=_instant(job.finishedOn),
            failed_reason=job.failedReason,
            orphaned=named is JobState.ACTIVE and read_state(state)[0] is JobState.UNKNOWN,
            unrecognized=unrecognized,
            unrecoverable=named is JobState.FAILED and unrecoverable(job.stacktrace),
        )

    async def clear_stale(self, phase: Phase, job_id: str) -> JobView:
        """Step 1 of entering a phase: remove a finished (completed/failed) job with
        ``job_id``, which is stale since the new intent comes after it, and an
        orphaned hash (in no state list), which would make BullMQ ignore the add;
        leave any other state to be adopted. Returns the view after the cleanup.

        An orphan with a worker's lock on it reads as ``active`` (and ``orphaned``):
        its remove is refused until the lock expires, so re-adding it now would be
        ignored by BullMQ.

        A fresh job id (the usual case) costs one round trip: no job hash, no job.
        Otherwise the state is read before the data, as in :meth:`job_view`.
        """
        queue = self.queue(phase)
        if not await queue.client.exists(queue.toKey(job_id)):
            return JobView(state=JobState.UNKNOWN)
        view = await self.job_view(phase, job_id)
        if view.state in FINISHED_STATES:
            await queue.remove(job_id)
            log.info("removed stale %s job %s", view.state, job_id)
            return JobView(state=JobState.UNKNOWN)
        if view.orphaned and view.state is JobState.UNKNOWN:
            await self.remove_orphan(phase, job_id)
            return JobView(state=JobState.UNKNOWN)
        return view  # adopted: queued, running, or an orphan a worker's lock still holds

    async def remove_finished(self, phase: Phase, job_id: str) -> None:
        """Remove ``job_id``, already seen completed or failed (a stale leftover)."""
        await self.queue(phase).remove(job_id)

    async def remove_orphan(self, phase: Phase, job_id: str) -> bool:
        """Remove ``job_id``'s hash if BullMQ holds it in no state list (BullMQ issue
        1644: every ``add`` of that id is then ignored). Uses BullMQ's own remove
        script, which deletes the hash and its sub-keys when the id is in no list.
        Returns whether it was removed; ``False`` when the id is in a list again, or
        a worker's lock is still on it (the script refuses; a later try succeeds
        once the lock expires)."""
        queue = self.queue(phase)
        raw = await queue.getJobState(job_id)
        if read_state(raw)[0] is not JobState.UNKNOWN:
            return False
        if not await queue.client.exists(queue.toKey(job_id)):
            return False
        removed = bool(await queue.remove(job_id))
        if removed:
            log.info("removed orphaned job hash %s (in no state list)", job_id)
        else:
            log.warning("orphaned job hash %s is locked by a worker; not removed yet", job_id)
        return removed

    async def enqueue(
        self,
        phase: Phase,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        at: datetime | None = None,
    ) -> None:
        """Step 3: add the job (a no-op in BullMQ if ``job_id`` already exists).

        ``at`` (aware UTC) becomes the job's ``timestamp`` (BullMQ's own ``timestamp``
        option; default: this host's wall clock, as BullMQ does): retro passes the
        queue's clock (:mod:`retro.clock`), so a job's age never depends on retro's
        wall clock.
        """
        opts = self.options.for_job(job_id)
        if at is not None:
            opts["timestamp"] = round(at.timestamp() * 1000)
        await self.queue(phase).add(JOB_NAMES[phase], dict(payload), opts)

    async def reenqueue(
        self,
        phase: Phase,
        job_id: str,
        payload: Mapping[str, Any],
        *,
        at: datetime | None = None,
    ) -> None:
        """Enqueue a lost job again: remove its orphaned hash first, if any
        (:meth:`remove_orphan`), so BullMQ does not ignore the add (``at`` as in
        :meth:`enqueue`)."""
        await self.remove_orphan(phase, job_id)
        await self.enqueue(phase, job_id, payload, at=at)

    async def remove_unstarted(self, phase: Phase, job_id: str) -> bool:
        """Remove ``job_id`` if it has not started (waiting/delayed/prioritized/
        waiting-children), or if it is an orphaned hash."""
        view = await self.job_view(phase, job_id)
        if view.state in UNSTARTED_STATES:
            return bool(await self.queue(phase).remove(job_id))
        if view.orphaned:
            return await self.remove_orphan(phase, job_id)
        return False

    def _admin_client(self) -> Redis:
        """The connection for commands about the server rather than a queue."""
        if self._admin is None:
            self._admin = self._client()
        return self._admin

    async def server_time(self) -> datetime | None:
        """Redis's own clock (``TIME``) as aware UTC, or ``None`` when Redis refuses
        the command (an ACL): the queue's clock, against which BullMQ's stamps are
        read (:mod:`retro.clock`)."""
        try:
            seconds, micros = await self._admin_client().time()
        except ResponseError:
            return None
        return datetime.fromtimestamp(int(seconds) + int(micros) / 1_000_000, UTC)

    async def is_paused(self, phase: Phase) -> bool:
        """True when ``phase``'s queue is paused (``Queue.pause()``: no worker takes
        its jobs; BullMQ still reports them ``waiting``)."""
        return bool(await self.queue(phase).isPaused())

    async def worker_count(self, phase: Phase) -> int | None:
        """Workers consuming ``phase``'s queue (by BullMQ's client names), or ``None``
        when Redis will not tell (``CLIENT LIST`` missing or denied by an ACL).

        BullMQ names a Worker's connection ``{prefix}:{queue}`` (python-bullmq) or
        ``{prefix}:{base64(queue)}`` (Node bullmq 5), either followed by
        ``:w:{worker name}``; both are counted, so the host's Node workers are seen.
        A Node Worker names only its blocking connection; python-bullmq names both
        of a Worker's connections. The extra one is told apart by its last command,
        a Lua script (a blocking connection never runs one), so each Worker counts once;
        a queue with only script connections has at least one Worker.

        Only clients on retro's own logical database (CLIENT LIST ``db=``) count:
        a worker on another database of the same server never takes these jobs.
        """
        try:
            clients = await self._admin_client().client_list()
        except ResponseError:
            return None
        return count_workers(clients, prefix=self.prefix, queue=self.names[phase], db=self.db)

    def watch(
        self,
        on_finished: Callable[[str], None],
        on_completed: Callable[[str, float], None] | None = None,
    ) -> None:
        """Call ``on_finished(job_id)`` whenever a job completes or fails on any of
        the three queues (BullMQ QueueEvents): lets the daemon hand off at once.
        ``on_completed(job_id, at)`` hears completions first, ``at`` the event's
        instant in unix seconds (from its stream entry id)."""
        for phase in Phase:
            events = QueueEvents(
                self.names[phase],
                {
                    "connection": self.redis_url,
                    "prefix": self.prefix,
                    "blockingTimeout": EVENTS_BLOCK_MS,
                },
            )
            if on_completed is not None:
                events.on(
                    "completed",
                    lambda args, entry_id="0", *_, cb=on_completed: cb(
                        str(args.get("jobId", "")), _stream_instant(entry_id)
                    ),
                )
            for kind in ("completed", "failed"):
                events.on(kind, lambda args, *_: on_finished(str(args.get("jobId", ""))))
            self._events.append(events)


def _stream_instant(entry_id: object) -> float:
    """Unix seconds of a Redis stream entry id ``"<ms>-<seq>"`` (now if unreadable)."""
    try:
        return int(str(entry_id).split("-", 1)[0]) / 1000
    except ValueError:
        return time.time()


Handler = Callable[[Any, str], Awaitable[Any]]
"""A job processor: ``(job, token) -> result`` (raise to fail the job)."""


async def consume(
    redis_url: str,
    *,
    prefix: str,
    handlers: Mapping[str, Handler],
    concurrency: int,
    stop: asyncio.Event,
    name: str,
    lock_duration: float = 30.0,
) -> None:
    """Run one BullMQ ``Worker`` per queue in ``handlers`` until ``stop`` is set.

    Jobs in progress when ``stop`` is set finish first; workers close cleanly.
    ``lock_duration`` (seconds, BullMQ's ``lockDuration``, also used as the
    ``stalledInterval``): a job whose worker died goes back to waiting after one
    to two of these.

    Raises:
        RuntimeError: a worker loop ended before ``stop`` was set.
    """
    workers = [
        Worker(
            queue,
            handler,
            {
                "connection": redis_url,
                "prefix": prefix,
                "concurrency": concurrency,
                "autorun": False,
                "name": name,
                "lockDuration": round(lock_duration * 1000),
                "stalledInterval": round(lock_duration * 1000),
            },
        )
        for queue, handler in handlers.items()
    ]
    for worker in workers:
        worker.on("error", lambda error, *_: log.warning("worker error: %s", mask(str(error))))
    loops = [asyncio.create_task(worker.run()) for worker in workers]
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        await asyncio.gather(*(worker.close() for worker in workers), return_exceptions=True)
        results = await asyncio.gather(*loops, return_exceptions=True)
    if not stop.is_set():
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        raise RuntimeError(f"a worker stopped unexpectedly: {failure!r}")
