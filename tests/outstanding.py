"""BullMQ's own view of retro's outstanding jobs, read straight from Redis.

Independent of retro's counters: a job is outstanding while BullMQ lists it as
waiting (``wait``, ``paused``), ``prioritized``, ``delayed`` or ``active``. The
lists of the three queues are read in one ``MULTI``/``EXEC``, an atomic snapshot,
so a job moving from ``wait`` to ``active`` is neither missed nor counted twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio import Redis

from retro.config import Settings

LISTS = ("wait", "paused", "active")
ZSETS = ("prioritized", "delayed")


def queue_names(settings: Settings) -> list[str]:
    return [settings.analysis_queue, settings.predictions_queue, settings.settlement_queue]


async def outstanding(redis: Redis, prefix: str, queues: list[str]) -> dict[str, str]:
    """Each of retro's jobs (``-retro-`` in the id) BullMQ holds outstanding now,
    with the list it is in (``analysis-queue:active``)."""
    where = []
    async with redis.pipeline(transaction=True) as pipe:
        for queue in queues:
            for name in LISTS:
                pipe.lrange(f"{prefix}:{queue}:{name}", 0, -1)
                where.append(f"{queue}:{name}")
            for name in ZSETS:
                pipe.zrange(f"{prefix}:{queue}:{name}", 0, -1)
                where.append(f"{queue}:{name}")
        replies = await pipe.execute()
    found = {}
    for name, reply in zip(where, replies, strict=True):
        for raw in reply:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if "-retro-" in job_id:
                found[job_id] = name
    return found


@dataclass
class Sampler:
    """Samples :func:`outstanding` every ``interval`` seconds until stopped; keeps
    the peak count, the number of samples and every job id seen."""

    redis: Redis
    prefix: str
    queues: list[str]
    interval: float = 0.005
    peak: int = 0
    samples: int = 0
    seen: set[str] = field(default_factory=set)
    at_peak: dict[str, str] = field(default_factory=dict)
    """The job ids of the first snapshot with ``peak`` jobs."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, *, limit: float = 300.0) -> None:
        """Sample until :meth:`stop`, at most ``limit`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while not self._stop.is_set() and loop.time() < deadline:
            ids = await outstanding(self.redis, self.prefix, self.queues)
            self.samples += 1
            if len(ids) > self.peak:
                self.peak, self.at_peak = len(ids), ids
            self.seen |= set(ids)
            await asyncio.sleep(self.interval)

    def stop(self) -> None:
        self._stop.set()
