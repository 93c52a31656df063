"""Crash flags (Dagster style): the daemon kills itself right before and right after
each event append and each enqueue; a restart finishes every run correctly, with no
stage executed twice for one attempt and no attempt charged to the crash."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from retro.crashpoints import CRASH_EXIT_CODE, POINTS
from retro.events import JobFailed, PhaseTimedOut, PredictionsShort
from retro.pipeline.workers import run_workers
from retro.store import runs
from retro.store.db import create_engine
from tests.conftest import Backend
from tests.e2e.clirunner import clean_env
from tests.healing import assert_healed, seed_runs

pytestmark = pytest.mark.e2e
ARGS = ("run", "--no-scan", "--until-idle", "--max-in-flight", "2", "--tick-interval", "0.2")


def daemon(
    backend: Backend, cwd: Path, crash_at: str | None, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``retro run --until-idle`` in ``cwd`` on ``backend`` (with ``extra`` variables),
    killed by itself at ``crash_at`` when given (``RETRO_CRASH_AT``)."""
    env = clean_env({**backend.env(), **(extra or {})})  # no RETRO_* of the caller's
    if crash_at:
        env["RETRO_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "retro", *ARGS],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def charged_attempts(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            charged = 0
            for run_id in await runs.all_ids(conn):
                for event in await runs.events_of(conn, run_id):
                    charged += isinstance(event, JobFailed | PhaseTimedOut | PredictionsShort)
            return charged
    finally:
        await engine.dispose()


@pytest.mark.parametrize("point", POINTS)
async def test_crash_at_each_point_then_restart(
    backend: Backend, tmp_path: Path, point: str
) -> None:
    seeded = await seed_runs(
        backend.database_url, backend.redis_url, ["fr.1"], prefix=backend.prefix
    )

    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(backend.database_url, backend.redis_url, prefix=backend.prefix, stop=stop)
    )
    try:
        for nth in (1, 3, 7):  # three crashes at this point, at different moments
            crashed = await asyncio.to_thread(daemon, backend, tmp_path, f"{point}:{nth}")
            assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-2000:]
        finished = await asyncio.to_thread(daemon, backend, tmp_path, None)
        assert finished.returncode == 0, finished.stderr[-2000:]
    finally:
        stop.set()
        await workers
    assert await assert_healed(backend.database_url) == {"done": len(seeded)}
    assert await charged_attempts(backend.database_url) == 0
