"""The sender: POSTs the outbox's notifications (:mod:`retro.store.outbox`) to
``notify_url``, after the transactions that recorded them committed.

It runs as its own asyncio task in the daemon (:class:`retro.scheduler.Daemon`),
never on the tick's path: a slow or dead receiver costs the tick nothing. Every
:data:`POLL` seconds, or at once when a tick recorded a notification, it claims up
to :data:`BATCH` due rows (a lease of :data:`LEASE` seconds, so a rival daemon on
PostgreSQL does not send them too) and POSTs each in turn, oldest first, with a
:data:`TIMEOUT` second limit:

- a 2xx answer marks the row sent;
- anything else (an error, a timeout, another status) is a failed attempt: the row
  is tried again :func:`backoff` seconds later (1, 2, 4 … up to 300), until
  :data:`MAX_AGE` seconds (a day) after it was recorded or :data:`MAX_ATTEMPTS`
  attempts, whichever first; then it is given up (an ERROR line and
  ``retro_notifications_given_up_total``; the row stays, with its last error).

Each POST carries the body as JSON (``retro.notification/1``, docs/json.md) and its
key as the ``Idempotency-Key`` header. Delivery is at least once: a daemon killed
after a POST was accepted but before it marked the row sent sends it again after
the lease; the receiver dedups by key. The URL is a secret (its path often holds
the token): it is never logged, and errors are stored and logged with it masked
(:func:`retro.config.redact`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from retro import __version__
from retro.config import error_line, mask_webhook, redact
from retro.metrics import Metrics
from retro.store import outbox
from retro.store.db import is_unreachable

log = logging.getLogger("retro.notify")

TIMEOUT = 5.0
"""Seconds one POST may take (connect, send, answer) before it counts as failed."""
POLL = 1.0
"""Seconds between two looks at the outbox when nothing wakes the sender."""
BATCH = 10
"""Rows claimed per look."""
LEASE = BATCH * (TIMEOUT + 1.0) + 10.0
"""Seconds a claim holds its rows: longer than sending a whole batch to a receiver
that times out each time; a sender that died holding them frees them after it."""
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 300.0
MAX_ATTEMPTS = 300
"""Attempts after which a notification is given up (about a day at the cap)."""
MAX_AGE = 86400.0
"""Seconds after it was recorded past which a failed notification is given up."""
DRAIN = 10.0
"""Seconds the daemon, stopping, keeps sending what is due (and retrying within)."""
HORIZON = MAX_AGE
"""A ``next_try_at`` further ahead than this is treated as due (the wall clock went
back: it must not hold the outbox up)."""


_URL_PATH = re.compile(r"(?P<site>https?://[^/\s\"'?#]+)[/?#][^\s\"']*", re.I)


class MaskUrlPaths(logging.Filter):
    """Masks the path and query of every ``http(s)://`` URL in a record's message
    (``https://hooks.slack.com/***``). Installed on httpx's logger, which logs each
    request's URL at INFO (``setup_logging`` quiets it too; this holds wherever the
    logging is set up otherwise, as in an embedding program or a test)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask ``record`` in place; never drops it."""
        message = record.getMessage()
        masked = _URL_PATH.sub(lambda m: f"{m['site']}/***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_http_logs() -> None:
    """Install :class:`MaskUrlPaths` on httpx's logger (once)."""
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, MaskUrlPaths) for f in httpx_log.filters):
        httpx_log.addFilter(MaskUrlPaths())


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` (1-based) failed ones:
    ``min(BACKOFF_FIRST * 2 ** (attempts - 1), BACKOFF_CAP)``: 1, 2, 4 … 256, 300."""
    return min(BACKOFF_FIRST * 2.0 ** min(max(attempts - 1, 0), 30), BACKOFF_CAP)


def utcnow() -> datetime:
    """The sender's clock (aware UTC)."""
    return datetime.now(UTC)


class Sender:
    """Sends the outbox of ``engine`` to ``url``.

    Args:
        engine: retro's database.
        url: ``notify_url`` (a secret: only :func:`retro.config.mask_webhook` of it
            is ever shown).
        metrics: where sent, failed and given-up notifications are counted.
        clock: the clock, aware UTC (tests move it).
        client: the HTTP client (default: one of its own with :data:`TIMEOUT`,
            closed by :meth:`close`).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        url: str,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime] = utcnow,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.url = url
        self.metrics = metrics
        self.clock = clock
        mask_http_logs()
        self._own_client = client is None
        self.client = client or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        self._wake = asyncio.Event()
        self._trouble: str | None = None

    def wake(self) -> None:
        """Look at the outbox now (a tick recorded a notification)."""
        self._wake.set()

    async def close(self) -> None:
        """Close the HTTP client, if it is the sender's own."""
        if self._own_client:
            await self.client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Send due notifications until ``stop`` is set: a look every :data:`POLL`
        seconds or on :meth:`wake`. A database error is logged (once until it
        clears) and retried at the next look; it never ends the loop."""
        while not stop.is_set():
            await self._look()
            if stop.is_set():
                break
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=POLL, return_when="FIRST_COMPLETED")
            finally:
                waiter.cancel()
                stopper.cancel()
            self._wake.clear()

    async def drain(self, seconds: float = DRAIN) -> None:
        """Keep sending for at most ``seconds``: what is due now, and retries that
        come due within (the daemon calls this as it stops). What is left waits in
        the outbox for the next start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await self._look()
            waiting = await self._next_due_in()
            if waiting is None or loop.time() + waiting >= deadline:
                return
            await asyncio.sleep(max(waiting, 0.05))

    async def _look(self) -> None:
        try:
            await self.send_due()
        except Exception as exc:
            line = error_line(exc)
            if line != self._trouble:  # said once until it changes or clears
                self._trouble = line
                log.log(
                    logging.WARNING if is_unreachable(exc) else logging.ERROR,
                    "notifications not sent (%s); retrying in %g s",
                    line,
                    POLL,
                    exc_info=not is_unreachable(exc),
                )
        else:
            self._trouble = None

    async def _next_due_in(self) -> float | None:
        """Seconds until the next unsent notification is due (``None``: none)."""
        async with self.engine.connect() as conn:
            when = await outbox.next_due(conn)
        if when is None:
            return None
        return (when - self.clock()).total_seconds()

    async def send_due(self) -> int:
        """One look: claim up to :data:`BATCH` due rows and send each; returns how
        many the receiver accepted.

        Raises:
            sqlalchemy.exc.DBAPIError: the database refused a claim or an update.
        """
        async with self.engine.begin() as conn:
            claimed = await outbox.claim(
                conn, now=self.clock(), limit=BATCH, lease=LEASE, horizon=HORIZON
            )
        accepted = 0
        for row in claimed:
            accepted += await self._send(row)
        return accepted

    async def _send(self, row: outbox.Claimed) -> int:
        error = await self._post(row)
        now = self.clock()
        if error is None:
            async with self.engine.begin() as conn:
                await outbox.mark_sent(conn, row.key, now=now)
            self.metrics.notifications_sent.labels(kind=row.kind).inc()
            log.info("notification %s sent (%s)", row.key, row.kind)
            return 1
        age = (now - row.created_at).total_seconds()
        give_up = row.attempts >= MAX_ATTEMPTS or age >= MAX_AGE
        retry_at = None if give_up else now + timedelta(seconds=backoff(row.attempts))
        async with self.engine.begin() as conn:
            await outbox.mark_failed(conn, row.key, error=error, next_try_at=retry_at)
        self.metrics.notifications_failed.labels(kind=row.kind).inc()
        if give_up:
            self.metrics.notifications_given_up.labels(kind=row.kind).inc()
            log.error(
                "notification %s (%s) given up after %d attempts over %.0f s: %s",
                row.key,
                row.kind,
                row.attempts,
                age,
                error,
            )
        else:
            log.warning(
                "notification %s to %s failed (attempt %d): %s; next try in %g s",
                row.key,
                mask_webhook(self.url),
                row.attempts,
                error,
                backoff(row.attempts),
            )
        return 0

    async def _post(self, row: outbox.Claimed) -> str | None:
        """POST ``row``; ``None`` when the receiver accepted it (2xx), else the
        failure on one masked line (``HTTP 500``, ``ReadTimeout: …``).

        The whole POST gets :data:`TIMEOUT` seconds: httpx's timeout bounds each
        read, so a receiver trickling its answer would otherwise hold it for ever."""
        try:
            async with asyncio.timeout(TIMEOUT):
                response = await self.client.post(
                    self.url,
                    content=row.payload.encode(),
                    headers={
                        "Content-Type": "application/json",
                        "Idempotency-Key": row.key,
                        "User-Agent": f"retro/{__version__}",
                    },
                )
        except TimeoutError:
            return f"timed out after {TIMEOUT:g} s: the answer did not end in time"
        except httpx.HTTPError as exc:
            detail = " ".join(str(exc).split())[:200]
            return redact(
                f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__, self.url
            )
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"
