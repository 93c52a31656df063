"""Notifications (issue 11, point 5) on both backends: recorded in the transaction of
the event that causes them (outbox), sent after commit by the daemon's sender to a
real HTTP receiver, retried with back-off, given up after their bound, never
leaking the webhook's secret, and exactly one ``backfill.finished`` per finish even
when two writers end a backfill's last two runs at once."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retro import commands, notify
from retro.app import App
from retro.config import Settings
from retro.events import RunCancelled, RunFailed
from retro.machine import State
from retro.metrics import LiveBackfills, Notifications, sync_engine
from retro.notification import Notification
from retro.notify import MAX_AGE, Sender, backoff
from retro.store import outbox, runs
from retro.store.schema import outbox as outbox_table
from tests.conftest import Backend
from tests.healing import heal_until_idle
from tests.webhook import DOOMED, TOKEN, Receiver, make_host


def settings_for(backend: Backend, **more: Any) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        tick_interval=0.2,
        retry_backoff=0,
        max_in_flight=4,
        **more,
    )


async def seed_and_fail_one(app: App) -> None:
    """Seed the host's gaps as one backfill and fail its first run (``RunFailed``:
    a ``run.failed`` notification recorded when ``notify_url`` is set)."""
    report = await commands.start(app, days=14, now=datetime.now(UTC))
    async with app.engine.begin() as conn:
        run = await runs.get(conn, report.seeded[0])
        assert run is not None
        await runs.append(conn, run, [RunFailed(at=datetime.now(UTC), reason="boom")])


async def outbox_rows(app: App) -> list[outbox.Row]:
    async with app.engine.connect() as conn:
        return await outbox.rows(conn)


async def test_a_heal_notifies_each_failure_and_the_finish_once_despite_two_500s(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    await make_host(backend.database_url)
    caplog.set_level(logging.INFO)
    with Receiver(fail_first=2) as receiver:
        async with App(settings_for(backend, notify_url=receiver.url)) as app:
            report = await commands.start(app, days=14, now=datetime.now(UTC), label="INC-123")
            assert report.backfill is not None and len(report.seeded) == 3
            backfill = report.backfill.id
            await heal_until_idle(app, database_url=backend.database_url, prefix=backend.prefix)
            stored = await outbox_rows(app)
            async with app.engine.connect() as conn:
                states = await runs.counts_by_state(conn)
                failed = await runs.list_runs(conn, states=[State.FAILED])
            sent = app.metrics.notifications_sent
            attempts_failed = app.metrics.notifications_failed
            assert (
                sum(sent.labels(kind=k)._value.get() for k in ("run.failed", "backfill.finished"))
                == 2
            )
            assert (
                sum(
                    attempts_failed.labels(kind=k)._value.get()
                    for k in ("run.failed", "backfill.finished")
                )
                == 2
            )
    assert states == {"done": 2, "failed": 1}
    [doomed] = failed
    finished_key = f"backfill-finished:{backfill}:0"
    failed_key = f"run-failed:{doomed.id}:{doomed.version}"

    # Recorded: one row per notification, each sent (the drain on stop retried the 500s).
    assert {r.key for r in stored} == {finished_key, failed_key}
    assert all(r.sent_at is not None and r.next_try_at is None for r in stored)
    assert sum(r.attempts for r in stored) == 2 + 2  # two answered 500, then accepted

    # Received: each key accepted exactly once, the header equal to the body's key.
    assert receiver.acceptances() == {finished_key: 1, failed_key: 1}
    calls = receiver.snapshot()
    assert [c.status for c in calls][:2] == [500, 500]
    assert all(c.key == c.body["idempotency_key"] for c in calls)
    assert all(c.content_type == "application/json" for c in calls)
    bodies = receiver.accepted()
    finished = bodies[finished_key]
    assert finished["schema"] == "retro.notification/1"
    assert finished["kind"] == "backfill.finished"
    assert finished["backfill"]["id"] == backfill
    assert finished["backfill"]["label"] == "INC-123"
    assert finished["counts"] == {"runs": 3, "done": 2, "failed": 1, "cancelled": 0}
    assert finished["duration_seconds"] >= 0
    assert finished["more_failed_runs"] == 0
    [listed] = finished["failed_runs"]
    assert listed["run_id"] == doomed.id and listed["match_id"] == DOOMED
    assert "external_id" in listed["reason"]
    assert finished["text"].startswith(f"retro: backfill INC-123 ({backfill}) finished in ")
    assert ": 2 done, 1 failed, 0 cancelled" in finished["text"]

    failure = bodies[failed_key]
    assert failure["kind"] == "run.failed"
    assert failure["run"]["match_id"] == DOOMED
    assert failure["run"]["home_team"] == "Evil\nretro: forged <!channel>"  # JSON as is
    assert "external_id" in failure["run"]["reason"]
    assert failure["backfill"] == {"id": backfill, "label": "INC-123"}
    # The human line cannot be forged: no line break, no Slack mention.
    text = failure["text"]
    assert "\n" not in text and "<!channel>" not in text
    assert "Evil\\nretro: forged &lt;!channel&gt;" in text

    # The webhook's secret (its path) reaches no log line.
    assert TOKEN not in caplog.text


async def test_two_writers_ending_the_last_two_runs_record_one_finish(backend: Backend) -> None:
    """Two transactions cancel a backfill's last two runs at once: exactly one sees
    none left (the backfill's row lock on PostgreSQL, one writer on SQLite)."""
    await make_host(backend.database_url, doomed=False)
    settings = settings_for(backend, notify_url="http://127.0.0.1:9/hook")
    async with App(settings, redis=False) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC))
        assert report.backfill is not None and len(report.seeded) == 2

        async def cancel(run_id: str) -> None:
            async with app.engine.begin() as conn:
                run = await runs.get(conn, run_id)
                assert run is not None
                await runs.append(conn, run, [RunCancelled(at=datetime.now(UTC), reason="test")])
                # Commit late: the other writer's append overlaps this transaction.
                # Without the lock both would count the other's run as live, and
                # neither would record the finish.
                await asyncio.sleep(0.3)

        results = await asyncio.gather(*(cancel(r) for r in report.seeded), return_exceptions=True)
        stored = await outbox_rows(app)
    assert [r.key for r in stored] == [f"backfill-finished:{report.backfill.id}:0"], results
    [finished] = stored
    assert finished.payload["counts"] == {"runs": 2, "done": 0, "failed": 0, "cancelled": 2}


async def test_a_retried_run_finishing_again_is_a_new_notification(backend: Backend) -> None:
    await make_host(backend.database_url, good=(), doomed=True)
    settings = settings_for(backend, notify_url="http://127.0.0.1:9/hook")
    async with App(settings, redis=False) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC))
        assert report.backfill is not None
        [run_id] = report.seeded
        for _ in range(2):  # fail it, retry it, fail it again
            async with app.engine.begin() as conn:
                run = await runs.get(conn, run_id)
                assert run is not None
                await runs.append(conn, run, [RunFailed(at=datetime.now(UTC), reason="boom")])
            await commands.retry(app, [run_id], failed=False, now=datetime.now(UTC))
        # A record of a key already there is a no-op, not an error.
        rows = await outbox_rows(app)
        async with app.engine.begin() as conn:
            assert not await outbox.record(
                conn,
                Notification(rows[0].key, rows[0].kind, rows[0].payload),
                at=datetime.now(UTC),
            )
    keys = [r.key for r in rows]
    b = report.backfill.id
    assert sorted(k for k in keys if k.startswith("backfill-finished")) == [
        f"backfill-finished:{b}:0",
        f"backfill-finished:{b}:1",
    ]
    assert sum(k.startswith(f"run-failed:{run_id}:") for k in keys) == 2


async def test_nothing_is_recorded_without_notify_url(backend: Backend) -> None:
    await make_host(backend.database_url, good=(), doomed=True)
    async with App(settings_for(backend), redis=False) as app:
        await seed_and_fail_one(app)
        assert await outbox_rows(app) == []


async def test_the_sender_backs_off_gives_up_and_never_shows_the_secret(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver that always answers 500: each failure is stored masked, the next try
    waits :func:`backoff`, and past :data:`MAX_AGE` the notification is given up. A
    receiver that is not there: the error names no part of the secret URL."""
    await make_host(backend.database_url, good=(), doomed=True)
    caplog.set_level(logging.DEBUG)
    with Receiver(fail_first=10**6) as receiver:
        settings = settings_for(backend, notify_url=receiver.url)
        async with App(settings, redis=False) as app:
            await seed_and_fail_one(app)
            clock = [datetime.now(UTC)]
            sender = Sender(app.engine, receiver.url, app.metrics, clock=lambda: clock[0])
            try:
                # two notifications (the run failed, so its backfill finished)
                assert await sender.send_due() == 0
                first = await outbox_rows(app)
                assert [r.attempts for r in first] == [1, 1]
                for row in first:
                    assert row.last_error == "HTTP 500" and row.sent_at is None
                    assert row.next_try_at == clock[0] + timedelta(seconds=backoff(1))
                assert await sender.send_due() == 0  # not due yet: nothing claimed
                assert len(receiver.snapshot()) == 2
                clock[0] += timedelta(seconds=backoff(1))
                await sender.send_due()
                assert [r.attempts for r in await outbox_rows(app)] == [2, 2]
                clock[0] += timedelta(seconds=MAX_AGE)  # past the bound: last try
                await sender.send_due()
                given_up = await outbox_rows(app)
                assert all(r.next_try_at is None and r.sent_at is None for r in given_up)
                assert all(r.attempts == 3 for r in given_up)
                clock[0] += timedelta(days=1)
                assert await sender.send_due() == 0 and len(receiver.snapshot()) == 6
            finally:
                await sender.close()
            metrics = app.metrics
            kinds = ("run.failed", "backfill.finished")
            assert (
                sum(metrics.notifications_given_up.labels(kind=k)._value.get() for k in kinds) == 2
            )
            assert sum(metrics.notifications_failed.labels(kind=k)._value.get() for k in kinds) == 6

            # A receiver that is not there: a connection error, masked.
            dead = "http://127.0.0.1:9/hooks/" + TOKEN
            sender = Sender(app.engine, dead, app.metrics, clock=lambda: clock[0])
            try:
                async with app.engine.begin() as conn:
                    await conn.execute(
                        outbox_table.update().values(next_try_at=clock[0], attempts=1)
                    )
                await sender.send_due()
            finally:
                await sender.close()
            errors = [r.last_error or "" for r in await outbox_rows(app)]
            assert all(errors) and all("Connect" in e for e in errors), errors
    assert TOKEN not in caplog.text
    assert all(TOKEN not in e for e in errors)


async def test_the_outbox_and_live_backfills_are_counted_per_scrape(backend: Backend) -> None:
    await make_host(backend.database_url, good=("N1",), doomed=True)
    settings = settings_for(backend, notify_url="http://127.0.0.1:9/hook")
    engine = sync_engine(backend.database_url)
    try:
        async with App(settings, redis=False) as app:
            report = await commands.start(app, days=14, now=datetime.now(UTC), label="INC-7")
            assert report.backfill is not None

            def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
                found: dict[str, list[tuple[dict[str, str], float]]] = {}
                for collector in (Notifications(engine), LiveBackfills(engine)):
                    for family in collector.collect():
                        found[family.name] = [(s.labels, s.value) for s in family.samples]
                return found

            before = await asyncio.to_thread(scrape)
            assert before["retro_notifications_pending"] == [({}, 0)]
            assert before["retro_notifications_abandoned"] == [({}, 0)]
            labels = {"backfill": report.backfill.id, "label": "INC-7", "state": "running"}
            assert [s[0] for s in before["retro_backfill_running_seconds"]] == [labels]
            assert before["retro_backfill_live_runs"] == [(labels, 2)]

            async with app.engine.begin() as conn:  # one run fails: one notification
                [doomed] = [r for r in await runs.list_runs(conn) if r.match_id == DOOMED]
                await runs.append(conn, doomed, [RunFailed(at=datetime.now(UTC), reason="x")])
                await conn.execute(  # and one given up earlier
                    outbox_table.insert().values(
                        id="k", kind="run.failed", payload="{}", created_at=datetime.now(UTC)
                    )
                )
            after = await asyncio.to_thread(scrape)
            assert after["retro_notifications_pending"] == [({}, 1)]
            assert after["retro_notifications_abandoned"] == [({}, 1)]
            assert after["retro_backfill_live_runs"] == [(labels, 1)]
            async with app.engine.begin() as conn:
                [live] = await runs.list_runs(conn, states=[State.PENDING])
                await runs.append(conn, live, [RunCancelled(at=datetime.now(UTC), reason="y")])
            ended = await asyncio.to_thread(scrape)
            assert ended["retro_backfill_running_seconds"] == []  # finished: no series left
            assert ended["retro_notifications_pending"] == [({}, 2)]  # + its finish
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgres-server"], indirect=True)
async def test_rival_senders_claim_disjoint_rows(backend: Backend) -> None:
    """On PostgreSQL two daemons' senders never claim one row: a rival's claim in
    flight is skipped (FOR UPDATE SKIP LOCKED), a committed one holds its lease."""
    await make_host(backend.database_url, good=(), doomed=False)
    async with App(settings_for(backend), redis=False) as app:
        now = datetime.now(UTC)
        async with app.engine.begin() as conn:
            for i in range(4):
                note = Notification(f"k{i}", "run.failed", {"i": i})
                assert await outbox.record(conn, note, at=now - timedelta(seconds=4 - i))
        first_in = asyncio.Event()

        async def rival(limit: int, *, hold: bool) -> list[str]:
            async with app.engine.begin() as conn:
                if not hold:
                    await first_in.wait()
                claimed = await outbox.claim(conn, now=now, limit=limit, lease=60, horizon=86400)
                if hold:
                    first_in.set()
                    await asyncio.sleep(0.3)  # claimed, not committed yet
                return [c.key for c in claimed]

        first, second = await asyncio.gather(rival(2, hold=True), rival(10, hold=False))
        async with app.engine.begin() as conn:
            later = await outbox.claim(conn, now=now, limit=10, lease=60, horizon=86400)
    assert first == ["k0", "k1"] and second == ["k2", "k3"]
    assert later == []  # every row is leased for 60 s


async def test_a_failure_goes_out_before_the_finish_it_caused(backend: Backend) -> None:
    """One append can record a run's failure and its backfill's finish at one
    instant: the sender claims the failure first, whatever the keys sort as."""
    await make_host(backend.database_url, good=(), doomed=False)
    async with App(settings_for(backend), redis=False) as app:
        now = datetime.now(UTC)
        async with app.engine.begin() as conn:
            finished = Notification("backfill-finished:b:0", "backfill.finished", {})
            failed = Notification("run-failed:r:9", "run.failed", {})
            for note in (finished, failed):  # recorded in the opposite order
                assert await outbox.record(conn, note, at=now)
            claimed = await outbox.claim(conn, now=now, limit=10, lease=60, horizon=86400)
    assert [c.key for c in claimed] == ["run-failed:r:9", "backfill-finished:b:0"]


class Trickler:
    """A receiver that answers ``HTTP/1.1 200 OK`` and then one more header line every
    ``every`` seconds, never ending its headers: each read of the answer comes well
    within a per-read timeout, the whole answer never."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks/{TOKEN}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                while not self.stop.wait(self.every):
                    try:
                        conn.sendall(b"X-Trickle: 1\r\n")
                    except OSError:
                        break

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.listener.close()


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
async def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that keeps its answer coming a header line at a time never trips a
    per-read timeout: one POST must still end at :data:`retro.notify.TIMEOUT` in
    all (it went on for as long as the receiver liked, holding up every other
    notification), as a failed attempt retried later."""
    monkeypatch.setattr(notify, "TIMEOUT", 0.5)
    await make_host(backend.database_url, good=(), doomed=True)
    with Trickler() as trickler:
        settings = settings_for(backend, notify_url=trickler.url)
        async with App(settings, redis=False) as app:
            await seed_and_fail_one(app)
            sender = Sender(app.engine, trickler.url, app.metrics)
            started = time.monotonic()
            try:
                assert await asyncio.wait_for(sender.send_due(), 10) == 0
            finally:
                await sender.close()
            assert time.monotonic() - started < 2 * 0.5 + 1.0  # two POSTs, each cut off
            rows = await outbox_rows(app)
            assert [(r.attempts, r.sent_at) for r in rows] == [(1, None), (1, None)]
            assert all("timed out" in (r.last_error or "") for r in rows), rows
            assert all(TOKEN not in (r.last_error or "") for r in rows)
