"""The daemon as a process: SIGTERM finishes and exits 0; on SQLite a second
daemon refuses to start with a clear message (DESIGN §4, §6)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.clirunner import clean_env

pytestmark = pytest.mark.e2e


def make_host_db(path: Path) -> str:
    """An empty host database (host + retro tables), SQLite; returns its URL."""
    url = f"sqlite+aiosqlite:///{path}"
    code = (
        "import asyncio\n"
        "from retro.store.db import create_engine\n"
        "from retro.pipeline import host\n"
        "from retro.store import migrate\n"
        "async def main():\n"
        f"    e = create_engine({url!r})\n"
        "    await host.create_host_tables(e)\n"
        "    await migrate.upgrade(e)\n"
        "    await e.dispose()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return url


def daemon(tmp_path: Path, url: str, *args: str) -> subprocess.Popen[str]:
    env = clean_env({"RETRO_DATABASE_URL": url, "RETRO_REDIS_URL": "embedded"})
    return subprocess.Popen(
        [sys.executable, "-m", "retro", "run", "--tick-interval", "0.2", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_started(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "daemon started" in line:
            return
        if not line and proc.poll() is not None:
            break
    pytest.fail("daemon did not start")


def test_sigterm_exits_zero_and_second_daemon_refuses(tmp_path: Path) -> None:
    url = make_host_db(tmp_path / "host.db")
    first = daemon(tmp_path, url)
    try:
        wait_started(first)
        second = daemon(tmp_path, url)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("retro: error: another retro daemon (pid ")
        assert "only one daemon may run" in lines[0]

        first.send_signal(signal.SIGTERM)
        _, rest = first.communicate(timeout=30)
        assert first.returncode == 0, rest
        assert "daemon stopped" in rest
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    # The lock is released: a new daemon starts (and stops) again.
    again = daemon(tmp_path, url, "--until-idle")
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
