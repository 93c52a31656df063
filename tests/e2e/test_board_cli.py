"""``retro board`` and ``retro demo --board`` as processes: each prints its address,
serves the board until SIGTERM or Ctrl-C (SIGINT), then exits 0; a taken port is one
error line, exit 2."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.clirunner import clean_env, one_error_line, run_retro

pytestmark = pytest.mark.e2e

ADDRESS = re.compile(r"on (http://127\.0\.0\.1:\d+/)")


def get(url: str) -> tuple[int, str]:
    """``(status, body)`` of a GET (a 404 or 503 is an answer, not an error)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Retro:
    """A ``retro`` process whose stdout lines are read as they come."""

    def __init__(self, cwd: Path, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "retro", *args],
            cwd=cwd,
            env=clean_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(
            target=lambda: [self.lines.put(line) for line in stdout], daemon=True
        ).start()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first stdout line matching ``pattern`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                assert self.proc.poll() is None, f"retro exited: {self.stop(None)}"
                continue
            seen.append(line)
            if found := re.search(pattern, line):
                return found
        pytest.fail(f"no line matching {pattern!r} within {timeout} s: {seen}")

    def stop(self, sig: signal.Signals | None) -> str:
        """Send ``sig`` (if any) and return stderr once it exited (within 20 s)."""
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            _, stderr = self.proc.communicate(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return stderr


def test_board_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_retro("board", "--port", str(port), cwd=tmp_path)
    line = one_error_line(result, "cannot listen", f"127.0.0.1:{port}")
    assert "in use" in line.lower(), line


def test_demo_board_until_ctrl_c_and_a_board_over_its_database(tmp_path: Path) -> None:
    """``retro demo --board`` prints its address, heals, keeps the board (with the
    daemon's ``/metrics``) up until Ctrl-C; meanwhile ``retro board`` serves the same
    database without a daemon (joining the demo's embedded Redis) until SIGTERM."""
    workdir = tmp_path / "demo"
    demo = Retro(tmp_path, {}, "demo", "--workdir", str(workdir), "--board", "--port", "0")
    try:
        base = demo.wait_for(r"Board on (http://127\.0\.0\.1:\d+/)", 60)[1]
        demo.wait_for(r"Board still on " + re.escape(base), 120)  # healed, and up
        status, home = get(base)
        assert status == 200 and "100 %" in home, home
        assert "demo: the 14-day outage" in home
        assert get(f"{base}metrics")[0] == 200  # the demo's daemon: its metrics
        # After the heal the demo's daemon goes on ticking (idle) while the board is up,
        # so its health and tick stay true rather than going stale.
        ticks = _ticks(base)
        deadline = time.monotonic() + 15
        while _ticks(base) <= ticks:
            assert time.monotonic() < deadline, "the demo's daemon stopped ticking"
            time.sleep(0.5)
        assert get(f"{base}healthz")[0] == 200

        database = {"RETRO_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / 'retro-demo.db'}"}
        board = Retro(tmp_path, database, "board", "--port", "0")
        try:
            other = board.wait_for(ADDRESS.pattern, 60)[1]
            assert other != base
            status, page = get(other)
            assert status == 200 and "100 %" in page, page
            status, health = get(f"{other}healthz")
            assert status == 200, health  # the database and the embedded Redis answer
            assert '"tick"' not in health  # no daemon there: no tick to judge
            assert get(f"{other}metrics")[0] == 404  # /metrics is the daemon's
        finally:
            stderr = board.stop(signal.SIGTERM)
        assert board.proc.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
        assert get(base)[0] == 200  # the demo's board outlives the other
    finally:
        stderr = demo.stop(signal.SIGINT)
    assert demo.proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def _ticks(base: str) -> float:
    """``retro_ticks_total`` as the board's ``/metrics`` shows it."""
    status, text = get(f"{base}metrics")
    assert status == 200, text
    found = re.search(r"^retro_ticks_total ([0-9.e+]+)$", text, re.M)
    assert found, text
    return float(found.group(1))
