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

from retro.events import JobFailed, PhaseTimedOut, PredictionsShort, Requested, RunFailed
from retro.pipeline import host
from retro.store import runs
from retro.store.db import create_engine
from tests.conftest import Backend
from tests.e2e.clirunner import clean_env
from tests.healing import assert_healed, seed_runs

pytestmark = pytest.mark.e2e

DAEMONS = 3
DAEMON_ARGS = (
    *("run", "--no-scan", "--until-idle"),
    *("--max-in-flight", "3", "--tick-interval", "0.2"),
)
VERDICTS = (JobFailed, PhaseTimedOut, PredictionsShort, RunFailed)


def spawn(backend: Backend, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m retro ARGS`` on ``backend``, stdout and stderr into ``log``."""
    env = clean_env(backend.env())
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
