"""SIGKILL the daemon process while runs are in flight, restart it, repeat; every run
still finishes with exactly the expected predictions, each scored once, and no
stage job executed twice for one attempt (DESIGN §4)."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from retro.store import runs
from retro.store.db import create_engine
from retro.store.schema import backfill_events
from tests.conftest import Backend
from tests.e2e.clirunner import clean_env
from tests.healing import assert_healed, seed_runs

pytestmark = pytest.mark.e2e
KILLS = 6


def spawn(backend: Backend, cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    env = clean_env(backend.env())  # no RETRO_* of the caller's
    with open(cwd / f"{args[0]}.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "retro", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def progress(database_url: str) -> tuple[int, int]:
    """(events appended so far, runs in flight)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            events = await conn.scalar(select(func.count()).select_from(backfill_events))
            return int(events or 0), await runs.count_in_flight(conn)
    finally:
        await engine.dispose()


async def test_sigkill_daemon_mid_heal(
    backend: Backend, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    seeded = await seed_runs(
        backend.database_url, backend.redis_url, ["en.1", "de.1"], prefix=backend.prefix
    )
    assert len(seeded) > 10

    processes.append(spawn(backend, tmp_path, "workers", "--concurrency", "2"))
    rng = random.Random(20250526)
    daemon_args = ("run", "--no-scan", "--max-in-flight", "3", "--tick-interval", "0.2")
    caught_in_flight = 0
    for _ in range(KILLS):
        daemon = spawn(backend, tmp_path, *daemon_args)
        processes.append(daemon)
        start, _ = await progress(backend.database_url)
        target = start + rng.randint(1, 12)  # kill after a random number of appends
        while (await progress(backend.database_url))[0] < target and daemon.poll() is None:
            await asyncio.sleep(0.005)
        await asyncio.sleep(rng.uniform(0, 0.03))  # sometimes mid-effect, sometimes later
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        caught_in_flight += (await progress(backend.database_url))[1] > 0
    # The last kills may land after the final run finished; most must hit live runs.
    assert caught_in_flight >= KILLS - 2, f"only {caught_in_flight} kills hit runs in flight"

    final = spawn(backend, tmp_path, *daemon_args, "--until-idle")
    processes.append(final)
    for _ in range(1200):
        if final.poll() is not None:
            break
        await asyncio.sleep(0.1)
    assert final.returncode == 0, (tmp_path / "run.log").read_text()[-2000:]
    counts = await assert_healed(backend.database_url)
    assert counts == {"done": len(seeded)}
