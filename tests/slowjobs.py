"""Slow jobs for clock tests: a tiny host, and the reference stages made slow enough
to be active when a clock jumps, with a journal of when each job ran."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from retro.events import JobFailed, PhaseTimedOut, RetryScheduled, RunFailed
from retro.pipeline import host
from retro.pipeline.host_rows import MatchRow, ModelRow, iso_utc
from retro.pipeline.workers import QUEUES, ReferenceWorkers
from retro.queue import consume
from retro.store import migrate
from retro.store.db import create_engine

SLOW = 0.6
"""Seconds each job takes: long enough to be active when the clock jumps."""
CHARGED = (JobFailed, PhaseTimedOut, RetryScheduled, RunFailed)
"""Events that charge an attempt or end a run: a clock jump may cause none."""


class Journal:
    """When (monotonic seconds) each job started and ended, per match."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[str, float, float | None]]] = defaultdict(list)

    def wrap(
        self, stage: str, process: Callable[[Any, str], Awaitable[Any]]
    ) -> Callable[[Any, str], Awaitable[Any]]:
        async def slow(job: Any, token: str) -> Any:
            match_id = str(job.data["matchId"])
            self.spans[match_id].append((stage, time.monotonic(), None))
            await asyncio.sleep(SLOW)
            result = await process(job, token)
            name, started, _ = self.spans[match_id][-1]
            self.spans[match_id][-1] = (name, started, time.monotonic())
            return result

        return slow

    def started(self) -> int:
        return sum(len(spans) for spans in self.spans.values())

    def finished(self) -> int:
        return sum(1 for spans in self.spans.values() for *_, ended in spans if ended)

    def hand_offs(self, down: tuple[float, float] | None = None) -> list[float]:
        """Seconds from each job's end to the start of its match's next job; a job
        that ended while no daemon ran (``down``: monotonic from, to) counts from
        the daemon's return."""
        pauses = []
        for spans in self.spans.values():
            for (_, _, ended), (_, started, _) in pairwise(spans):
                assert ended is not None
                if down is not None and down[0] <= ended <= down[1]:
                    ended = down[1]
                pauses.append(started - ended)
        return pauses


async def make_host(database_url: str, match_ids: Sequence[str]) -> None:
    """Matches that finished yesterday, two active models, nothing else (host and
    retro tables)."""
    engine = create_engine(database_url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        await host.insert_models(
            engine, [ModelRow(f"model-{i}", "acme", f"m{i}", f"Model {i}") for i in range(2)]
        )
        kickoff = iso_utc(datetime.now(UTC) - timedelta(days=1))
        await host.insert_matches(
            engine,
            [
                MatchRow(m, f"x-{m}", "xx.1", "Home", "Away", kickoff, 2, 1, "finished")
                for m in match_ids
            ],
        )
    finally:
        await engine.dispose()


@asynccontextmanager
async def slow_workers(
    database_url: str, redis_url: str, prefix: str, journal: Journal, concurrency: int
) -> AsyncIterator[None]:
    """The reference stages on the default queues, each job :data:`SLOW` seconds
    longer, recorded in ``journal``; stopped (jobs finished) on leaving."""
    engine = create_engine(database_url)
    processors = ReferenceWorkers(engine)
    stages = (processors.analyze, processors.predict, processors.settle)
    stop = asyncio.Event()
    task = asyncio.create_task(
        consume(
            redis_url,
            prefix=prefix,
            handlers={q: journal.wrap(q, p) for q, p in zip(QUEUES, stages, strict=True)},
            concurrency=concurrency,
            stop=stop,
            name="slow-workers",
        )
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.dispose()
