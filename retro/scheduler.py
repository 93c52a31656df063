"""The daemon: a ``tick`` every ``tick_interval`` and a ``scan`` every
``scan_interval`` on the monotonic clock (DESIGN §6), wake-ups on BullMQ job
events, the single-daemon lock on SQLite, graceful shutdown.

The cadence runs on the event loop's clock (``loop.time()``, monotonic), not on
APScheduler: APScheduler 3's interval trigger keeps its next fire time as a wall
clock instant, so a jump back of the host's clock stopped every tick until the
clock caught up (issue 9). Each due time here is a deadline on the monotonic
clock, and the loop waits for the nearest one or for a wake-up, whichever first.

With ``notify_url`` set, the daemon also runs the notification sender
(:class:`retro.notify.Sender`) as a task of its own beside the loop: woken when a
tick recorded a notification, never awaited by a tick; on stop it is given
:data:`retro.notify.DRAIN` seconds to send what is due.

``Daemon.run_once()`` performs exactly one tick (for tests); ``run(until_idle=True)``
returns once every run is terminal.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from retro import commands, jobids
from retro.app import App
from retro.backfill import SCAN_LABEL
from retro.config import error_line
from retro.errors import UsageError
from retro.notify import DRAIN, Sender
from retro.text import escape
from retro.tick import TickReport, unreachable

log = logging.getLogger("retro.daemon")

BACKOFF_SLACK = 0.01
"""Seconds the daemon waits past a back-off's end before its tick (stored instants
and the wall clock can differ by rounding)."""


SENDER_CANCEL_SECONDS = 5.0
"""Seconds a stopping daemon waits for its cancelled notification sender to end."""
SKIPPED_SHOWN = 20
"""Unreadable match rows a periodic scan names in the log (the rest are counted)."""


class DaemonLocked(UsageError, RuntimeError):
    """Another ``retro run`` holds this SQLite database."""


def utcnow() -> datetime:
    """The shell's one clock read (aware UTC)."""
    return datetime.now(UTC)


class SqliteLock:
    """An exclusive ``flock`` on ``<database>.daemon.lock`` next to a SQLite file:
    a second daemon on the same file refuses to start (DESIGN §4). A no-op for
    any other database."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.database = url.database or ""
        in_a_file = url.get_backend_name() == "sqlite" and self.database not in ("", ":memory:")
        # PostgreSQL needs no lock: rival daemons share the work there.
        self.path = Path(self.database + ".daemon.lock") if in_a_file else None
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            DaemonLocked: another process holds it (message names its pid).
        """
        if self.path is None:
            return
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DaemonLocked(
                f"another retro daemon (pid {holder}) is running on {self.database}; "
                "on SQLite only one daemon may run"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Drop the lock."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class Outage:
    """Tracks a database or Redis outage: logs each backoff step once, and recovery.

    Retry delays double from ``first`` seconds up to ``ceiling`` (the tick
    interval), so work resumes within one tick of the dependency's return.
    """

    def __init__(self, *, first: float = 0.25, ceiling: float = 2.0) -> None:
        self.first = first
        self.ceiling = max(first, ceiling)
        self.delay = first
        self.since: float | None = None
        self._logged: tuple[str, str, float] | None = None

    def failed(self, dependency: str, exc: BaseException) -> None:
        """Record a failed attempt; ``delay`` is the wait before the next one."""
        now = time.monotonic()
        if self.since is None:
            self.since, self.delay = now, self.first
        else:
            self.delay = min(self.delay * 2, self.ceiling)
        reason = error_line(exc)
        step = (dependency, reason, self.delay)
        if step != self._logged:
            self._logged = step
            log.warning("%s unreachable (%s); retrying in %g s", dependency, reason, self.delay)

    def recovered(self) -> None:
        """A tick succeeded: log the recovery once, reset the backoff."""
        if self.since is not None:
            log.info("dependencies reachable again after %.1f s", time.monotonic() - self.since)
        self.since, self._logged, self.delay = None, None, self.first


class Daemon:
    """Ticks and scans on a schedule until stopped (SIGTERM/SIGINT) or idle.

    Args:
        app: an entered :class:`App` with Redis.
        clock: the clock, read once per tick (aware UTC).
        scan_days: window of the periodic scan, in days.
    """

    def __init__(
        self, app: App, *, clock: Callable[[], datetime] = utcnow, scan_days: int | None = None
    ) -> None:
        self.app = app
        self.clock = clock
        self.settings = app.settings
        self.scan_days = self.settings.scan_days if scan_days is None else scan_days
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._tick_lock = asyncio.Lock()
        self._scan_due = False
        self._outage = Outage(ceiling=self.settings.tick_interval)
        self._job_ids = jobids.pattern(app.policy.job_ids.values())  # retro's own job ids
        self.sender: Sender | None = None
        """The notification sender while :meth:`run` runs (``notify_url`` set)."""

    async def run_once(self) -> TickReport:
        """Exactly one tick, at the clock's ``now``."""
        async with self._tick_lock:
            report = await self.app.tick(now=self.clock())
            return report

    async def scan(self) -> None:
        """Seed runs for new gaps (the periodic ``scan`` job)."""
        report = await commands.start(
            self.app, days=self.scan_days, now=self.clock(), label=SCAN_LABEL
        )
        skipped = report.scan.skipped
        for row in skipped[:SKIPPED_SHOWN]:  # reported every scan, as `retro start` does
            log.warning("scan skipped match %s: %s", escape(row.match_id), escape(row.reason))
        if len(skipped) > SKIPPED_SHOWN:
            log.warning(
                "scan skipped %d more unreadable match rows (retro start --dry-run lists them)",
                len(skipped) - SKIPPED_SHOWN,
            )
        if report.seeded:
            log.info("scan seeded %d run(s)", len(report.seeded))
            self.wake()

    def wake(self) -> None:
        """Ask for a tick now (a tracked job finished, or new runs were seeded)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the current tick, then return from :meth:`run`."""
        self._stop.set()
        self._wake.set()

    def _on_job_finished(self, job_id: str) -> None:
        if self._job_ids.fullmatch(job_id):
            self.wake()

    def _until_next_tick(self, backoff_end: datetime | None) -> float:
        """Seconds to the next tick: ``tick_interval``, or less when a retry
        back-off ends (``backoff_end``, aware UTC) before that, so its retry comes
        on time rather than up to a tick late. Never more than ``tick_interval``,
        whatever the wall clock does."""
        interval = self.settings.tick_interval
        if backoff_end is None:
            return interval
        left = (backoff_end - self.clock()).total_seconds() + BACKOFF_SLACK
        return min(interval, max(left, 0.0))

    async def _tick(self, until_idle: bool) -> datetime | None:
        """One tick as the loop runs it; returns the earliest back-off end it saw."""
        try:
            report = await self.run_once()
            if report.notified and self.sender is not None:
                self.sender.wake()  # sent after commit, off the tick's path
            if report.again:
                self.wake()  # a run can go on at once: look again
            elif (
                until_idle
                and (not report.events or report.freed > report.started)
                and await self.app.idle()  # a run just started is not idle: no query then
            ):
                self.stop()
        except Exception as exc:
            dependency = unreachable(exc)
            if dependency is None:
                log.exception("tick failed; the next tick retries")
                return None
            self._outage.failed(dependency, exc)
            asyncio.get_running_loop().call_later(self._outage.delay, self.wake)
            return None
        self._outage.recovered()
        return report.next_backoff_end

    async def _scan(self) -> None:
        self._scan_due = False
        try:
            await self.scan()
        except Exception as exc:
            dependency = unreachable(exc)
            if dependency is None:
                log.exception("scan failed; the next scan retries")
                return
            self._scan_due = True  # retried with the next tick
            self._outage.failed(dependency, exc)

    def _start_sender(self) -> tuple[asyncio.Task[None], asyncio.Event] | None:
        """Start the notification sender's task (``notify_url`` set), or ``None``."""
        url = self.settings.notify_url
        if url is None:
            return None
        self.sender = Sender(self.app.engine, url, self.app.metrics, clock=self.clock)
        stop = asyncio.Event()
        return asyncio.create_task(self.sender.run(stop), name="retro-notify"), stop

    async def _stop_sender(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        """Stop the sender: let its current look end and send what is due, retries
        that come due included, all within :data:`retro.notify.DRAIN` seconds; then
        close it. What is left stays in the outbox for the next start."""
        assert self.sender is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN
        stop.set()
        try:
            done, _ = await asyncio.wait({task}, timeout=DRAIN)
            if not done:
                task.cancel()  # a claim it held frees itself after its lease
                _, late = await asyncio.wait({task}, timeout=SENDER_CANCEL_SECONDS)
                if late:
                    log.warning(
                        "the notification sender did not stop within %.0f s of its cancel; "
                        "left behind (what it had claimed is sent again after its lease)",
                        SENDER_CANCEL_SECONDS,
                    )
            elif not task.cancelled() and task.exception() is None:
                await self.sender.drain(deadline - loop.time())
        except Exception as exc:
            log.warning("notifications not drained: %s", error_line(exc))
        finally:
            await self.sender.close()
            self.sender = None

    async def run(
        self, *, until_idle: bool = False, scan: bool = True, handle_signals: bool = True
    ) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT, or idle with ``until_idle``).

        Ticks come every ``tick_interval`` seconds after the last one ended, and at
        once on a wake-up (a tracked job finished, a scan seeded runs, an outage's
        retry); with ``scan``, scans run at start and every ``scan_interval``
        seconds. Both intervals are measured on the monotonic clock, so no jump of
        the wall clock delays or doubles them. A stop never cancels a tick halfway
        (DESIGN §6: SIGTERM finishes the current tick).
        """
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        assert self.app.queues is not None
        self.app.queues.watch(self._on_job_finished, self.app.metrics.job_completed)
        self._scan_due = scan
        next_scan = loop.time() + self.settings.scan_interval if scan else math.inf
        next_tick = loop.time()  # the first tick at once
        sending = self._start_sender()
        try:
            while not self._stop.is_set():
                wait = min(next_tick, next_scan) - loop.time()
                if wait > 0 and not self._wake.is_set():
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=wait)
                    except TimeoutError:
                        pass  # a deadline came
                self._wake.clear()
                if self._stop.is_set():
                    break
                if loop.time() >= next_scan:
                    self._scan_due = True
                    next_scan = loop.time() + self.settings.scan_interval
                if self._scan_due:
                    await self._scan()
                backoff_end = await self._tick(until_idle)
                next_tick = loop.time() + self._until_next_tick(backoff_end)
        finally:
            if sending is not None:
                await self._stop_sender(*sending)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
