"""Rival daemons (DESIGN §4): three ``retro run`` processes on one PostgreSQL heal the
same gaps beside one ``retro workers`` process. Runs are claimed with ``FOR UPDATE
SKIP LOCKED``; a lost append race is not an error. Every run is healed, no stage job
is enqueued twice for one attempt or executed twice for one enqueue, the rivalry
charges no attempt, and no process logs a traceback or an error.

(On SQLite a second daemon refuses to start: tests/e2e/test_daemon.py.)
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from retro.config import Settings
from retro.events import JobFailed, PhaseTimedOut, PredictionsShort, Requested, RunFailed
from retro.pipeline import host
from retro.store import runs
from retro.store.db import create_engine
from tests.conftest import Backend
from tests.e2e.clirunner import clean_env
from tests.healing import assert_healed, seed_runs
from tests.outstanding import Sampler, queue_names

pytestmark = pytest.mark.e2e

DAEMONS = 3
DAEMON_ARGS = (
    *("run", "--no-scan", "--until-idle"),
    *("--max-in-flight", "3", "--tick-interval", "0.2"),
)
VERDICTS = (JobFailed, PhaseTimedOut, PredictionsShort, RunFailed)


def spawn(
    backend: Backend, log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m retro ARGS`` on ``backend`` (plus ``env``), stdout and stderr into ``log``."""
    env = clean_env({**backend.env(), **(env or {})})
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "retro", *args],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def seed(backend: Backend) -> int:
    """The demo outage of two leagues (about 25 gap matches), seeded as runs."""
    seeded = await seed_runs(
        backend.database_url, backend.redis_url, ["en.1", "de.1"], prefix=backend.prefix
    )
    return len(seeded)


async def history(database_url: str) -> dict[str, list[object]]:
    """Every run's events, by run id."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return {
                run_id: list(await runs.events_of(conn, run_id))
                for run_id in await runs.all_ids(conn)
            }
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_three_daemons_heal_the_same_gaps_without_doubles(
    backend: Backend, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    seeded = await seed(backend)
    assert 20 <= seeded <= 35, seeded

    workers_log = tmp_path / "workers.log"
    workers = spawn(backend, workers_log, "workers", "--concurrency", "2")
    processes.append(workers)
    logs = [tmp_path / f"daemon{i}.log" for i in range(DAEMONS)]
    daemons = [spawn(backend, log, *DAEMON_ARGS) for log in logs]
    processes.extend(daemons)

    deadline = time.monotonic() + 90
    while any(d.poll() is None for d in daemons):
        assert time.monotonic() < deadline, "the daemons did not go idle within 90 s"
        await asyncio.sleep(0.1)
    workers.send_signal(signal.SIGTERM)
    workers.wait(30)

    texts = {log.name: log.read_text() for log in [*logs, workers_log]}
    for daemon, log in zip(daemons, logs, strict=True):
        assert daemon.returncode == 0, texts[log.name][-3000:]
    assert workers.returncode == 0, texts[workers_log.name][-3000:]
    for name, text in texts.items():
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"
        errors = [line for line in text.splitlines() if " ERROR " in line or "CRITICAL" in line]
        assert errors == [], f"{name} logged errors: {errors[:5]}"

    # Each daemon took part: the rivalry was real, not one daemon doing everything.
    working = [log.name for log in logs if " event=" in texts[log.name]]
    assert len(working) >= 2, f"only {working} appended events"

    counts = await assert_healed(backend.database_url)
    assert counts == {"done": seeded}

    events = await history(backend.database_url)
    requested: Counter[tuple[str, str, int]] = Counter()
    for run_id, run_events in events.items():
        for event in run_events:
            if isinstance(event, Requested):
                requested[(run_id, str(event.PHASE), event.attempt)] += 1
        verdicts = [e for e in run_events if isinstance(e, VERDICTS)]
        assert verdicts == [], f"run {run_id} was charged by the rivalry: {verdicts}"
    doubled = {key: n for key, n in requested.items() if n != 1}
    assert doubled == {}, f"a stage requested twice for one attempt: {doubled}"
    assert {attempt for (_, _, attempt) in requested} == {1}

    engine = create_engine(backend.database_url)
    try:
        journal = await host.job_log(engine)
    finally:
        await engine.dispose()
    executed = Counter(entry.job_id for entry in journal if "-retro-" in entry.job_id)
    assert executed, "the workers journalled nothing"
    assert set(executed.values()) == {1}, (
        f"stage jobs executed more than once: {[j for j, n in executed.items() if n > 1]}"
    )
    assert len(executed) == len(requested), "a requested job never ran, or an unknown one did"


# --- slots held by work, not by waiting (issue 10) -----------------------------------

CAP = 2


async def sample_runs(database_url: str, stop: asyncio.Event, peaks: dict[str, int]) -> None:
    """Until ``stop`` (at most 300 s): the most runs seen in flight at once (back-offs
    included) and the most seen holding a slot, every 10 ms."""
    engine = create_engine(database_url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 300
    try:
        while not stop.is_set() and loop.time() < deadline:
            async with engine.connect() as conn:
                peaks["in_flight"] = max(peaks["in_flight"], await runs.count_in_flight(conn))
                peaks["holding"] = max(peaks["holding"], await runs.count_holding(conn))
            await asyncio.sleep(0.01)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_rival_daemons_keep_the_cap_on_outstanding_jobs_through_backoffs(
    backend: Backend, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Two daemons, ``max_in_flight`` 2, workers that fail 30 % of their jobs (each
    failure a back-off of 0.5 s, doubling, which releases its slot). BullMQ's own lists, sampled
    from Redis in atomic snapshots (:mod:`tests.outstanding`), never hold more than
    2 of retro's jobs; meanwhile more than 2 runs were in flight at once, so the
    back-offs did release slots to other runs."""
    seeded = len(
        await seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    )
    assert seeded >= 8, seeded
    env = {"RETRO_RETRY_BACKOFF": "0.5", "RETRO_MAX_ATTEMPTS": "8"}
    workers_log = tmp_path / "workers.log"
    workers = spawn(
        backend, workers_log, "workers", "--concurrency", "3", "--fail-rate", "0.3", env=env
    )
    processes.append(workers)
    args = ("run", "--no-scan", "--until-idle", "--max-in-flight", str(CAP))
    logs = [tmp_path / f"daemon{i}.log" for i in range(2)]
    daemons = [spawn(backend, log, *args, "--tick-interval", "0.1", env=env) for log in logs]
    processes.extend(daemons)

    settings = Settings(
        database_url=backend.database_url, redis_url=backend.redis_url, queue_prefix=backend.prefix
    )
    redis = Redis.from_url(backend.redis_url)
    sampler = Sampler(redis, backend.prefix, queue_names(settings), interval=0.002)
    stop = asyncio.Event()
    peaks = {"in_flight": 0, "holding": 0}
    tasks = [
        asyncio.create_task(sampler.run(limit=300)),
        asyncio.create_task(sample_runs(backend.database_url, stop, peaks)),
    ]
    try:
        deadline = time.monotonic() + 150
        while any(d.poll() is None for d in daemons):
            assert time.monotonic() < deadline, "the daemons did not go idle within 150 s"
            await asyncio.sleep(0.1)
    finally:
        sampler.stop()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        await redis.aclose()
    workers.send_signal(signal.SIGTERM)
    workers.wait(30)

    texts = {log.name: log.read_text() for log in logs}
    for daemon, log in zip(daemons, logs, strict=True):
        assert daemon.returncode == 0, texts[log.name][-3000:]
        assert "Traceback" not in texts[log.name], texts[log.name][-3000:]
    working = [log.name for log in logs if " event=" in texts[log.name]]
    assert len(working) == 2, f"only {working} appended events"

    events = await history(backend.database_url)
    assert len(events) == seeded
    failures = sum(isinstance(e, JobFailed) for run_events in events.values() for e in run_events)
    assert failures >= 1, "no job failed: nothing backed off"
    requested = {
        event.job_id
        for run_events in events.values()
        for event in run_events
        if isinstance(event, Requested)
    }
    assert sampler.samples > 500
    assert sampler.seen <= requested and len(sampler.seen) >= len(requested) // 2
    assert sampler.peak <= CAP, (
        f"{sampler.peak} of retro's jobs outstanding at once: {sampler.at_peak}"
    )
    assert peaks["holding"] <= CAP
    assert peaks["in_flight"] > CAP, f"no back-off released a slot: {peaks}"
    print(f"seeded {seeded}, job failures {failures}, {sampler.samples} samples, {peaks}")
