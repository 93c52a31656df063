"""Secrets (DESIGN §7): a whole heal with password-bearing URLs, a PostgreSQL URL with a
password and a private Redis that requires one, leaves the password in no CLI output,
no daemon or worker log line, no traceback (``--verbose``), no stored event, run or
journal row, and no Redis key. Where a URL is printed, its password reads ``***``."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from tests.conftest import REQUIRE_ENV
from tests.e2e.clirunner import Result, clean_env, run_retro
from tests.e2e.hostdata import engine_for, seed_host

pytestmark = pytest.mark.e2e

PASSWORD = "S3cretPw0rd"
WRONG = "Wr0ngPassw0rd"
STORED_TABLES = ("backfill_events", "backfill_runs", "pipeline_job_log")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    """A private ``redis-server`` that requires :data:`PASSWORD`; stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"redis-server is not on PATH but {REQUIRE_ENV}=1")
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    folder = tmp_path / "redis-server"
    folder.mkdir()
    proc = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
            *("--requirepass", PASSWORD, "--save", "", "--appendonly", "no"),
            *("--maxmemory-policy", "noeviction"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=1)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def redis_dump(port: int) -> str:
    """Every key of the private Redis and its value, as text."""
    client = redis.Redis(port=port, password=PASSWORD, decode_responses=True)
    try:
        lines = []
        for key in sorted(client.scan_iter()):
            kind = client.type(key)
            value: object
            if kind == "hash":
                value = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = sorted(client.smembers(key))
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                value = client.xrange(key)
            else:
                value = client.get(key)
            lines.append(f"{key} {kind} {value}")
        return "\n".join(lines)
    finally:
        client.close()


def stored_rows(url: str) -> str:
    """Every row of retro's tables and the workers' journal, as text."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            assert set(STORED_TABLES) <= names, names
            lines = []
            for name in STORED_TABLES:
                rows = conn.execute(text(f'SELECT * FROM "{name}"')).all()
                assert rows, f"{name} is empty: the heal did not happen"
                lines += [f"{name} {tuple(row)}" for row in rows]
            return "\n".join(lines)
    finally:
        engine.dispose()


def ok(result: Result) -> Result:
    assert result.code == 0, result
    return result


def test_no_password_anywhere_in_a_full_heal(
    tmp_path: Path, postgres_url: str, redis_port: int
) -> None:
    database_url = make_url(postgres_url).set(password=PASSWORD).render_as_string(False)
    redis_url = f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0"
    expect = seed_host(database_url)  # trust auth: the password is carried, not checked
    env = {
        "RETRO_DATABASE_URL": database_url,
        "RETRO_REDIS_URL": redis_url,
        "RETRO_QUEUE_PREFIX": f"sec{uuid.uuid4().hex[:8]}",
    }
    results: list[Result] = []

    def retro(*args: str, extra: dict[str, str] | None = None) -> Result:
        result = run_retro(*args, cwd=tmp_path, env={**env, **(extra or {})})
        results.append(result)
        return result

    ok(retro("db", "upgrade"))
    ok(retro("start", "--days", "14", "--dry-run", "--verbose"))
    seeded = ok(retro("start", "--days", "14"))
    assert f"Seeded {len(expect.gaps)} runs" in seeded.stdout, seeded

    workers_log = tmp_path / "workers.log"
    with open(workers_log, "wb") as log:
        workers = subprocess.Popen(
            [sys.executable, "-m", "retro", "workers", "--verbose"],
            cwd=tmp_path,
            env=clean_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        daemon = ok(retro("run", "--until-idle", "--tick-interval", "0.2", "--verbose"))
    finally:
        workers.send_signal(signal.SIGTERM)
        workers.wait(30)
    assert workers.returncode == 0, workers_log.read_text()[-2000:]

    # Reads, and failing commands: a wrong Redis password, an unreachable database
    # (with --verbose tracebacks). Two at a time.
    wrong_redis = {"RETRO_REDIS_URL": f"redis://:{WRONG}@127.0.0.1:{redis_port}/0"}
    down = {"RETRO_DATABASE_URL": make_url(database_url).set(port=1).render_as_string(False)}
    commands: list[tuple[tuple[str, ...], dict[str, str]]] = [
        (("status",), {}),
        (("verify", "--verbose"), {}),
        (("retry", "--failed", "--verbose"), {}),
        (("status",), wrong_redis),
        (("run", "--until-idle", "--verbose"), wrong_redis),
        (("start", "--days", "14", "--verbose"), down),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        status, verified, _, refused, refused_run, unreachable = pool.map(
            lambda command: retro(*command[0], extra=command[1]), commands
        )
    for result in (status, verified):
        ok(result)
    assert "done" in status.stdout, status
    assert f"{len(expect.gaps)} runs" in verified.stdout, verified
    assert refused.code == 1, refused  # status: the database answered, Redis did not
    assert refused_run.code == 2, refused_run
    assert unreachable.code == 2, unreachable
    for failure in (refused_run, unreachable):
        assert "Traceback" in failure.stderr, f"--verbose printed no traceback: {failure}"

    outputs = "\n".join(f"{r}" for r in results)
    logs = workers_log.read_text()
    stored = stored_rows(database_url)
    keys = redis_dump(redis_port)
    assert ":analysis-queue:" in keys, "no BullMQ keys: the heal did not use Redis"
    assert stored.count("'RunCompleted'") == len(expect.gaps), "not every run was healed"
    for where, content in (
        ("CLI output", outputs),
        ("workers log", logs),
        ("stored rows", stored),
        ("Redis keys", keys),
    ):
        for secret in (PASSWORD, WRONG):
            assert secret not in content, f"{secret} leaked into the {where}"

    # Where a URL is printed, the password is masked, not dropped silently.
    masked_db = make_url(database_url).render_as_string(hide_password=True)
    assert "***" in masked_db
    started = next(line for line in daemon.stderr.splitlines() if "daemon started" in line)
    assert masked_db in started, started
    assert f"redis://:***@127.0.0.1:{redis_port}/0" in started, started
    assert f"redis://:***@127.0.0.1:{redis_port}/0" in logs, logs[-2000:]
    for failure in (refused, refused_run, unreachable):
        assert "***" in failure.output, failure
