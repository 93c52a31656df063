"""The webhook acceptance (issue 11): a daemon killed between the commit that records
a backfill's ``backfill.finished`` notification and its send (crash point
``after_notify_commit``: the process exits at once, no cleanup, like SIGKILL) sends
it after its restart; the receiver fails its first two calls and still gets exactly
one accepted notification per idempotency key. Real daemons, workers and HTTP."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.crashpoints import CRASH_EXIT_CODE
from retro.pipeline.workers import run_workers
from retro.store import outbox
from retro.store.db import create_engine
from tests.conftest import Backend
from tests.e2e import test_crashpoints as crashpoints
from tests.webhook import TOKEN, Receiver, make_host

pytestmark = [
    pytest.mark.e2e,
    # One backend keeps the suite fast: PostgreSQL, where rival daemons run; the
    # sender is the same code on SQLite, covered in process (tests/integration/test_notify.py).
    pytest.mark.parametrize("backend", ["postgres-server"], indirect=True),
]


def daemon(
    backend: Backend, cwd: Path, url: str, crash_at: str | None
) -> subprocess.CompletedProcess[str]:
    return crashpoints.daemon(backend, cwd, crash_at, {"RETRO_NOTIFY_URL": url})


async def stored(database_url: str) -> list[outbox.Row]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await outbox.rows(conn)
    finally:
        await engine.dispose()


async def test_killed_between_commit_and_send_the_finish_is_delivered_once(
    backend: Backend, tmp_path: Path
) -> None:
    await make_host(backend.database_url, doomed=False)
    settings = Settings(
        database_url=backend.database_url, redis_url=backend.redis_url, queue_prefix=backend.prefix
    )
    async with App(settings, redis=False) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC), label="INC-9")
    assert report.backfill is not None and len(report.seeded) == 2
    key = f"backfill-finished:{report.backfill.id}:0"

    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(backend.database_url, backend.redis_url, prefix=backend.prefix, stop=stop)
    )
    try:
        with Receiver(fail_first=2) as receiver:
            # The append that ends the last run records the finish, commits, and the
            # daemon dies before anything sends it.
            crashed = await asyncio.to_thread(
                daemon, backend, tmp_path, receiver.url, "after_notify_commit:1"
            )
            assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr[-3000:]
            assert receiver.snapshot() == []
            [row] = await stored(backend.database_url)
            assert (row.key, row.attempts, row.sent_at) == (key, 0, None)

            restarted = await asyncio.to_thread(daemon, backend, tmp_path, receiver.url, None)
            assert restarted.returncode == 0, restarted.stderr[-3000:]
            calls = receiver.snapshot()
    finally:
        stop.set()
        await asyncio.wait_for(workers, 30)

    assert [c.status for c in calls] == [500, 500, 200]
    assert receiver.acceptances() == {key: 1}
    body = receiver.accepted()[key]
    assert body["counts"] == {"runs": 2, "done": 2, "failed": 0, "cancelled": 0}
    assert body["backfill"]["label"] == "INC-9"
    [row] = await stored(backend.database_url)
    assert row.sent_at is not None and row.attempts == 3
    assert f"notification {key} sent" in restarted.stderr
    port = receiver.server.server_address[1]
    assert f"notifications to http://127.0.0.1:{port}/***" in restarted.stderr
    for output in (crashed.stderr, restarted.stderr, restarted.stdout):
        assert TOKEN not in output
