"""How long a job has run or waited, on clocks that a jump of retro's wall clock cannot move.

retro trusts each clock for one thing (docs/production.md, "Which clocks retro trusts"):

- **Its monotonic clock** (``time.monotonic``) for every duration it watches itself:
  the daemon's cadence, the age of the last tick in ``/healthz``, and how long a
  job has been active or waiting since this process first saw it so.
- **The queue's clock** (Redis ``TIME``) against BullMQ's own stamps
  (``processedOn``, written by the worker; ``timestamp``, by whoever added the
  job), once per job and state: for the part of a job's age that passed before
  this process first saw it (after a restart of retro, or for an adopted job).
- **Its wall clock** only for what it stores and shows (event times, back-off
  deadlines, cooldowns, the scan window), never to time out a job.

So a jump of retro's wall clock, while it runs or across a restart, neither times
out a job nor holds one back; a jump of the Redis host's clock moves only the
head start of a job retro sees for the first time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar

from retro.machine import JobMeaning, JobView

MEMORY = 10_000
"""Jobs remembered at most (oldest forgotten first): memory stays bounded."""

K = TypeVar("K", bound=Hashable)

QUEUE_CLOCK_TTL = 60.0
"""Seconds one reading of Redis ``TIME`` serves, carried forward on the monotonic clock."""


class JobClock:
    """Measures ``active_for`` and ``waiting_for`` of the jobs a daemon watches.

    Args:
        monotonic: seconds on a clock that never jumps (``time.monotonic``; tests
            pass their own).
        memory: how many jobs to remember (:data:`MEMORY`).
    """

    def __init__(
        self, monotonic: Callable[[], float] = time.monotonic, memory: int = MEMORY
    ) -> None:
        self.monotonic = monotonic
        self.memory = memory
        self._since: OrderedDict[tuple[str, str, datetime | None, datetime | None], float] = (
            OrderedDict()
        )
        self._requested: OrderedDict[str, float] = OrderedDict()

    def requested(self, job_id: str) -> None:
        """This process has just asked for ``job_id`` (a ``…Requested`` was committed,
        or the job was enqueued again): its waiting counts from now, and its
        start-to-close never from before now."""
        self._remember(self._requested, job_id, self.monotonic())

    def measure(self, job_id: str, view: JobView, queue_now: datetime | None) -> JobView:
        """``view`` with ``active_for`` (an active job) or ``waiting_for`` (a job no
        worker has taken) set, in seconds.

        The first time this process sees the job in that state, the age it already
        had is read on the queue's clock, ``queue_now`` (Redis ``TIME``, aware UTC;
        ``None``: unknown, counted as 0), never below 0: an active job's from
        ``processedOn``, but never more than the job's own age (its ``timestamp``,
        which retro stamps from the queue's clock when it adds a job), so a worker
        clock that jumped cannot age it; a waiting job's from its ``timestamp``, or
        from first sight if a worker took it before (a BullMQ-level retry, whose
        ``timestamp`` is its first add). From then on the age grows on the monotonic
        clock. A job this process requested is never older than its request.
        """
        if view.meaning not in (JobMeaning.PROGRESSING, JobMeaning.WAITING):
            return view  # finished or lost: no age to measure
        active = view.meaning is JobMeaning.PROGRESSING
        key = (job_id, str(view.meaning), view.created_at, view.processed_at)
        now = self.monotonic()
        since = self._since.get(key)
        if since is None:
            since = now - self._head(view, active, queue_now)
            self._remember(self._since, key, since)
        asked = self._requested.get(job_id)
        if asked is not None:
            since = max(since, asked)
        age = max(0.0, now - since)
        return replace(view, active_for=age) if active else replace(view, waiting_for=age)

    @staticmethod
    def _head(view: JobView, active: bool, queue_now: datetime | None) -> float:
        """Seconds of age ``view`` already had when first seen (see :meth:`measure`)."""
        if queue_now is None or (view.processed_at is None) is active:
            # unknown clock; an active job without processedOn; or a waiting job a
            # worker took before (its wait began after that attempt, unseen)
            return 0.0
        stamps = (view.processed_at, view.created_at) if active else (view.created_at,)
        ages = [(queue_now - stamp).total_seconds() for stamp in stamps if stamp is not None]
        return max(0.0, min(ages)) if ages else 0.0

    def _remember(self, memory: OrderedDict[K, float], key: K, value: float) -> None:
        memory[key] = value
        memory.move_to_end(key)
        while len(memory) > self.memory:
            memory.popitem(last=False)


class QueueClock:
    """The queue's clock (Redis ``TIME``), read at most once a ``ttl`` (seconds) and
    carried forward on the monotonic clock in between."""

    def __init__(
        self, ttl: float = QUEUE_CLOCK_TTL, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.monotonic = monotonic
        self._reading: tuple[datetime, float] | None = None

    async def now(self, read: Callable[[], Awaitable[datetime | None]]) -> datetime | None:
        """The queue's clock now (aware UTC), or ``None`` when ``read`` (Redis ``TIME``)
        gives nothing and no earlier reading is fresh."""
        mono = self.monotonic()
        if self._reading is None or mono - self._reading[1] > self.ttl:
            at = await read()
            if at is None:
                return None
            self._reading = (at, mono)
        at, then = self._reading
        return at + timedelta(seconds=mono - then)


@dataclass
class Clocks:
    """The clocks a daemon shares between its tick and ``status``: the job clock
    (start-to-close and schedule-to-start) and the queue's clock."""

    job: JobClock = field(default_factory=JobClock)
    queue: QueueClock = field(default_factory=QueueClock)
