"""Redis goes down under a running daemon: it keeps running, logs each backoff step
once, says when Redis is back, and finishes every run without charging an attempt
(DESIGN §4.5). Then ``retro verify`` passes, and fails (exit 1) on a tampered
projection."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.pipeline.workers import run_workers
from tests.e2e.clirunner import clean_env
from tests.e2e.test_crashpoints import charged_attempts
from tests.healing import DEMO_NOW, assert_healed, seed_outage, seed_runs

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server on a fixed port that the test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.binary, self.folder, self.port = binary, folder, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def retro(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retro", *args],
        cwd=cwd,
        env=clean_env(env),  # no caller RETRO_* (retro refuses one it does not know)
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_redis_outage_then_verify(tmp_path: Path, redis_server: RedisServer) -> None:
    database = tmp_path / "host.db"
    url = f"sqlite+aiosqlite:///{database}"
    seeded = await seed_runs(url, redis_server.url, ["it.1"])
    env = {"RETRO_DATABASE_URL": url, "RETRO_REDIS_URL": redis_server.url}

    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "retro",
                "run",
                "--no-scan",
                "--until-idle",
                "--max-in-flight",
                "2",
                "--tick-interval",
                "0.5",
            ],
            cwd=tmp_path,
            env=clean_env(env),  # no caller RETRO_* (retro refuses one it does not know)
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "no worker consuming" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.1)
        redis_server.stop()  # Redis dies with the jobs in it
        await asyncio.sleep(4)
        assert daemon.poll() is None, "the daemon must outlive a Redis outage"
        redis_server.start()  # back, empty
        stop = asyncio.Event()
        workers = asyncio.create_task(run_workers(url, redis_server.url, stop=stop))
        try:
            code = await asyncio.to_thread(daemon.wait, 90)
        finally:
            stop.set()
            await workers
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    lines = log_path.read_text().splitlines()
    assert code == 0, "\n".join(lines[-30:])
    outage = [
        line.split(" WARNING retro.daemon ", 1)[1]
        for line in lines
        if " WARNING retro.daemon " in line and "Redis unreachable" in line
    ]
    assert len(outage) >= 2, lines  # several backoff steps ...
    assert len(outage) == len(set(outage)), outage  # ... each logged once
    assert any("reachable again" in line for line in lines), lines
    assert any("JobReenqueued" in line for line in lines), lines
    assert not any("Traceback" in line for line in lines), lines
    assert await assert_healed(url) == {"done": len(seeded)}
    assert await charged_attempts(url) == 0

    ok = retro(tmp_path, env, "verify")
    assert ok.returncode == 0, ok
    assert "every projection equals the replay of its events" in ok.stdout
    sync = create_sync_engine(f"sqlite:///{database}")
    with sync.begin() as conn:  # tamper with one projection row
        run_id = conn.execute(text("SELECT id FROM backfill_runs LIMIT 1")).scalar_one()
        conn.execute(
            text("UPDATE backfill_runs SET attempt = attempt + 5 WHERE id = :id"), {"id": run_id}
        )
    sync.dispose()
    drift = retro(tmp_path, env, "verify")
    assert drift.returncode == 1, drift
    assert drift.stderr.strip().splitlines() == [
        f"retro: drift: 1 run differs from their events: {run_id}"
    ]


async def test_redis_that_denies_client_list_still_heals(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Managed Redis often forbids CLIENT LIST: worker counts become unknown, not errors."""
    from redis.asyncio import Redis

    from retro.events import Phase
    from retro.queue import JobOptions, Queues

    admin = Redis.from_url(redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "default", "-client|list")
    await admin.aclose()
    names = {phase: f"{phase}-queue" for phase in Phase}
    async with Queues(redis_server.url, prefix="acl", names=names, options=JobOptions()) as q:
        assert await q.worker_count(Phase.ANALYSIS) is None

    url = f"sqlite+aiosqlite:///{tmp_path / 'host.db'}"
    gaps = await seed_outage(url, ["it.1"])
    settings = Settings(database_url=url, redis_url=redis_server.url, max_in_flight=4)
    stop = asyncio.Event()
    workers = asyncio.create_task(run_workers(url, redis_server.url, stop=stop))
    try:
        async with App(settings) as app:
            await commands.start(app, days=14, now=datetime.now(UTC), until=DEMO_NOW)
            for _ in range(400):
                await app.tick(now=datetime.now(UTC))
                if await app.idle():
                    break
                await asyncio.sleep(0.05)
            report = await commands.status(app)
            assert set(report.workers.values()) == {None}
    finally:
        stop.set()
        await workers
    assert await assert_healed(url) == {"done": gaps}
