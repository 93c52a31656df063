"""The daemon as a process whose whole wall clock jumps (issue 9, point 4).

``retro run`` runs under libfaketime (Debian ``faketime``; ``.ci/run`` installs
it) with its offset read from a file on every clock call, so the test moves the
daemon's wall clock (``time.time``, ``datetime.now``: everything but the
monotonic clock) while it runs: +2 h and -1 h while jobs are active, then a
restart two hours ahead and a jump back of an hour. The workers, Redis and the
test keep real time. No attempt may be charged, no run may wait longer than
about one tick after its job finished, and ``/healthz`` must say the truth: 200
with a tick age under its limit while the daemon ticks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from retro.events import Requested
from retro.store import runs
from retro.store.db import create_engine
from tests.conftest import Backend
from tests.e2e.clirunner import clean_env
from tests.e2e.test_outage import free_port
from tests.e2e.test_telemetry import get
from tests.slowjobs import CHARGED, Journal, make_host, slow_workers

pytestmark = pytest.mark.e2e

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
MATCHES = ("F1", "F2")
TICK = 0.5
HAND_OFF_LIMIT = TICK + 2.5
"""Longest pause between a match's stage ending and its next stage starting: one
tick, plus slack for a loaded machine and for the daemon's restart."""


@pytest.fixture
def libfaketime() -> Path:
    """libfaketime's library; a skip where it is missing (a failure in CI)."""
    if not LIBFAKETIME.exists():
        if os.environ.get("RETRO_REQUIRE_SERVICES") == "1":
            pytest.fail(
                f"{LIBFAKETIME} missing but RETRO_REQUIRE_SERVICES=1 (apt-get install faketime)"
            )
        pytest.skip("libfaketime is not installed (apt-get install faketime)")
    return LIBFAKETIME


class FakeClock:
    """The daemon's clock offset, in a file libfaketime reads on every clock call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set("+0")

    def set(self, offset: str) -> None:
        """``+2h``, ``-1h``, ``+0``: libfaketime's relative offsets."""
        self.path.write_text(offset + "\n")

    def env(self, library: Path) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(library),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def health(port: int) -> dict[str, object]:
    status, body = get(f"http://127.0.0.1:{port}/healthz")
    document = json.loads(body)
    assert isinstance(document, dict)
    document["http_status"] = status
    return document


async def until(check: object, what: str, timeout: float = 30) -> None:
    """Await ``check()`` (run in a thread: the workers share this event loop)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def ticking(port: int) -> bool:
    """``/healthz`` answers 200 (the daemon has ticked)."""
    try:
        return health(port)["http_status"] == 200
    except OSError:  # not listening yet
        return False


def assert_truthful_health(port: int) -> None:
    """``/healthz`` answers 200 and its tick is recent by the real clock."""
    body = health(port)
    tick = body["checks"]["tick"]  # type: ignore[index]
    assert body["http_status"] == 200, body
    assert 0 <= tick["age_seconds"] <= tick["limit_seconds"], body  # type: ignore[index]


async def test_a_daemon_whose_clock_jumps_charges_nothing_and_stays_truthful(
    tmp_path: Path, libfaketime: Path, server_redis_url: str
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'host.db'}"
    backend = Backend("sqlite-server", database_url, server_redis_url, f"ft{os.getpid()}")
    await make_host(database_url, MATCHES)
    clock = FakeClock(tmp_path / "faketime")
    env = clean_env(
        {
            "RETRO_DATABASE_URL": database_url,
            "RETRO_REDIS_URL": server_redis_url,
            "RETRO_QUEUE_PREFIX": backend.prefix,
            "RETRO_MAX_IN_FLIGHT": str(len(MATCHES)),
            "RETRO_ANALYSIS_TIMEOUT": "5",
            "RETRO_PREDICTIONS_TIMEOUT": "5",
            "RETRO_SETTLEMENT_TIMEOUT": "5",
        }
    )
    env.update(clock.env(libfaketime))
    seeded = subprocess.run(
        [sys.executable, "-m", "retro", "start", "--days", "14", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr
    run_ids = json.loads(seeded.stdout)["seeded"]
    assert len(run_ids) == len(MATCHES)
    port = free_port()
    logs = (tmp_path / "daemon-a.log").open("w")

    def daemon(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "retro", "run", "--no-scan"),
                *("--tick-interval", str(TICK), "--http-port", str(port), *args),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=logs,
            text=True,
        )

    journal = Journal()
    first = second = None
    try:
        async with slow_workers(database_url, server_redis_url, backend.prefix, journal, 2):
            first = daemon()
            await until(lambda: journal.started() >= 1, "the first job")
            clock.set("+2h")
            await until(lambda: journal.started() >= 3, "the third job")
            await asyncio.to_thread(assert_truthful_health, port)
            clock.set("-1h")
            await until(lambda: journal.started() >= 4, "the fourth job")
            await asyncio.sleep(TICK * 2)
            await asyncio.to_thread(assert_truthful_health, port)
            down_since = time.monotonic()
            first.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait, 30) == 0
            # A restart two hours ahead, then a jump back of an hour.
            clock.set("+2h")
            second = daemon()
            await until(lambda: ticking(port), "the restarted daemon's first tick")
            down = (down_since, time.monotonic())
            await until(lambda: journal.started() >= 5, "the fifth job")
            clock.set("-1h")
            await asyncio.sleep(TICK * 2)
            await asyncio.to_thread(assert_truthful_health, port)
            await until(lambda: journal.finished() == 3 * len(MATCHES), "the last job")
            await asyncio.sleep(TICK * 2)
            await asyncio.to_thread(assert_truthful_health, port)
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        logs.close()
    log_text = (tmp_path / "daemon-a.log").read_text()

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await runs.counts_by_state(conn) == {"done": len(MATCHES)}, log_text[-3000:]
            histories = [await runs.events_of(conn, run_id) for run_id in run_ids]
    finally:
        await engine.dispose()
    for history in histories:
        assert [e.TYPE for e in history if isinstance(e, CHARGED)] == [], log_text[-3000:]
        assert {e.attempt for e in history if isinstance(e, Requested)} == {1}
    # Every job was added while the daemon's clock was off by hours, yet its BullMQ
    # timestamp is the queue's clock (Redis TIME), within a minute of real time.
    redis = Redis.from_url(server_redis_url)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{backend.prefix}:*-retro-*")]
        stamps = [await redis.hget(k, "timestamp") for k in keys if await redis.type(k) == b"hash"]
    finally:
        await redis.aclose()
    assert len(stamps) == 3 * len(MATCHES), keys
    assert all(abs(int(t) / 1000 - time.time()) < 120 for t in stamps), stamps
    pauses = journal.hand_offs(down)
    assert len(pauses) == 2 * len(MATCHES)
    assert max(pauses) <= HAND_OFF_LIMIT, pauses


def test_libfaketime_moves_the_wall_clock_only(tmp_path: Path, libfaketime: Path) -> None:
    """The premise of the test above: under this environment ``time.time()`` jumps
    with the file and ``time.monotonic()`` does not."""
    clock = FakeClock(tmp_path / "faketime")
    code = (
        "import time, pathlib, sys\n"
        "wall, mono = time.time(), time.monotonic()\n"
        "pathlib.Path(sys.argv[1]).write_text('+2h\\n')\n"
        "print(round(time.time() - wall), round(time.monotonic() - mono))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(clock.path)],
        env={**clean_env(), **clock.env(libfaketime)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.split() == ["7200", "0"]
