"""Fixtures for the Node BullMQ interop tests: the npm install and the worker processes.

``node_workspace`` installs ``tests/interop/package.json`` (bullmq 5.x and pg,
pinned by ``package-lock.json``) from the npm registry into a temporary folder,
once per session; npm's own cache (``~/.npm``) makes later sessions quick. The
tests are skipped only when ``node`` or ``npm`` is absent; an install that fails
(registry unreachable, bad lock file) fails them with npm's own words.

``node_workers`` starts ``workers.mjs`` processes and always stops them
(SIGTERM, then SIGKILL); their output is printed at teardown, so a failed test
shows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SOURCES = ("package.json", "package-lock.json", "workers.mjs")
NPM_TIMEOUT = 180.0
"""Seconds ``npm ci`` may take (the first install downloads ~35 packages)."""
READY_TIMEOUT = 30.0
"""Seconds a worker process may take to connect and print ``ready``."""


@pytest.fixture(scope="session")
def node_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``workers.mjs`` and its ``node_modules`` (bullmq 5.x, pg)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the Node BullMQ workers (not on PATH)")
    folder = tmp_path_factory.mktemp("node-workers")
    for name in SOURCES:
        shutil.copy2(HERE / name, folder / name)
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"npm ci did not finish within {NPM_TIMEOUT:.0f} s: is the registry reachable?")
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        pytest.fail(
            f"npm ci of bullmq/pg failed (exit {proc.returncode}); the npm registry must be "
            f"reachable for this test:\n{tail}"
        )
    return folder


@dataclass
class NodeProcess:
    """One running ``node workers.mjs``; its output goes to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (jobs in hand finish), then SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


StartWorkers = Callable[..., NodeProcess]


@pytest.fixture
def node_workers(node_workspace: Path, tmp_path: Path) -> Iterator[StartWorkers]:
    """A function ``start(name, env)`` that starts one worker process and waits for it.

    ``env`` holds the worker's settings (``DATABASE_URL``, ``REDIS_URL``,
    ``BULLMQ_PREFIX``, ``FAIL_ONCE`` …, see ``workers.mjs``). Every process is
    stopped at teardown and its output printed.
    """
    started: list[NodeProcess] = []

    def start(name: str, env: dict[str, str]) -> NodeProcess:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                ["node", str(node_workspace / "workers.mjs")],
                cwd=node_workspace,
                env={**os.environ, "WORKER_NAME": name, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        worker = NodeProcess(name, proc, log)
        started.append(worker)
        deadline = time.monotonic() + READY_TIMEOUT
        while "ready bullmq" not in worker.output():
            if proc.poll() is not None:
                pytest.fail(f"node worker {name} exited {proc.returncode}:\n{worker.output()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"node worker {name} not ready in {READY_TIMEOUT} s:\n{worker.output()}"
                )
            time.sleep(0.05)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        print(f"--- node worker {worker.name} (exit {worker.proc.returncode})\n{worker.output()}")
