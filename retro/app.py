"""The application: set-up and lifecycle of retro on one database and one Redis:
settings, the engine (migrating the embedded default), the queues, the embedded
Redis, the tick (:mod:`retro.tick`, which :meth:`App.tick` hands over to) and the
probes of the metrics server. What it does is elsewhere: the operator commands in
:mod:`retro.commands`, the tick in :mod:`retro.tick`, the decisions in
:mod:`retro.machine`.

Run ids come from the ``new_id`` callable given at construction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from retro.clock import Clocks
from retro.config import EMBEDDED_REDIS, Settings, mask_url, mask_webhook
from retro.crashpoints import CrashPoints
from retro.embedded import EmbeddedRedis
from retro.events import Phase
from retro.machine import (
    Policy,
)
from retro.metrics import Metrics, Probes
from retro.queue import JobOptions, Queues, RedisUnreachable, job_id_formats, queue_names
from retro.store import db, migrate, outbox, runs
from retro.tick import RUN_FAILURE_LIMIT as RUN_FAILURE_LIMIT  # re-exported
from retro.tick import Ticker
from retro.tick import TickReport as TickReport
from retro.tick import job_payload as job_payload
from retro.tick import unreachable as unreachable

log = logging.getLogger("retro")


def policy_from(settings: Settings) -> Policy:
    """The machine's :class:`Policy` from ``settings``."""
    return Policy(
        max_attempts=settings.max_attempts,
        max_reenqueues=settings.max_reenqueues,
        queue_wait_charged=settings.queue_wait_charged,
        require_external_id=settings.require_external_id,
        queue_wait_budgets={phase: settings.queue_wait(phase) for phase in Phase},
        retry_backoff=settings.retry_backoff,
        budgets={phase: settings.phase_timeout(phase) for phase in Phase},
        job_ids=job_id_formats(settings),
    )


class App:
    """retro on one database and one Redis. Use ``async with App(settings) as app``.

    Raises (on enter):
        StoreError: the database is unreachable or lacks tables.
        RedisUnreachable: Redis does not answer (only with ``redis=True``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        redis: bool = True,
        need_host: bool = True,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
        crash: CrashPoints | None = None,
        redis_optional: bool = False,
    ) -> None:
        self.settings = settings
        self.policy = policy_from(settings)
        self.new_id = new_id
        self._want_redis = redis
        self._redis_optional = redis_optional
        self.redis_error: str | None = None
        self._need_host = need_host
        self.engine = db.create_engine(settings.database_url)
        self.recorder: outbox.Recorder | None = None
        """Set when ``notify_url`` is: every append through :attr:`engine` records the
        notifications it causes (:mod:`retro.store.outbox`)."""
        if settings.notify_url:
            self.recorder = outbox.Recorder()
            self.engine = self.engine.execution_options(**{outbox.OPTION: self.recorder})
        self._embedded: EmbeddedRedis | None = None
        self.queues: Queues | None = None
        self.redis_warning: str | None = None
        self._crash = crash if crash is not None else CrashPoints()
        self.metrics = Metrics()
        self.clocks = Clocks()
        self.ticker: Ticker | None = None
        """The tick (:mod:`retro.tick`), once Redis is open."""

    @property
    def crash(self) -> CrashPoints:
        """The crash points the tick reaches (tests replace them on an open app)."""
        return self._crash

    @crash.setter
    def crash(self, points: CrashPoints) -> None:
        self._crash = points
        if self.ticker is not None:
            self.ticker.crash = points

    async def __aenter__(self) -> App:
        try:
            db.require_sqlite_file(self.settings.database_url)
            if db.is_sqlite(self.settings.database_url):
                await db.check(self.engine, host=self._need_host, retro=False)
                await db.enable_wal(self.engine)
                await migrate.upgrade(self.engine)  # the embedded default upgrades itself
            await db.check(self.engine, host=self._need_host, retro=True)
            if self._want_redis:
                url = self.settings.redis_url
                if url == EMBEDDED_REDIS:
                    self._embedded = EmbeddedRedis(self.settings.embedded_redis_file())
                    url = self._embedded.start()
                self.queues = Queues(
                    url,
                    prefix=self.settings.queue_prefix,
                    names=queue_names(self.settings),
                    options=JobOptions(
                        priority=self.settings.job_priority,
                        attempts=self.settings.job_attempts,
                        backoff_ms=self.settings.job_backoff_ms,
                    ),
                )
                try:
                    self.redis_warning = await self.queues.check()
                except RedisUnreachable as exc:
                    if not self._redis_optional:
                        raise
                    self.redis_error = str(exc)
                    await self.queues.close()
                    self.queues = None
                if self.queues is not None:
                    self.ticker = Ticker(
                        settings=self.settings,
                        policy=self.policy,
                        engine=self.engine,
                        queues=self.queues,
                        metrics=self.metrics,
                        clocks=self.clocks,
                        crash=self._crash,
                    )
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close Redis connections, the embedded server (if last user) and the engine."""
        self.ticker = None
        if self.queues is not None:
            await self.queues.close()
            self.queues = None
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None
        await self.engine.dispose()

    @property
    def redis_url(self) -> str:
        """The Redis URL in use (the embedded server's socket, or the configured URL)."""
        assert self.queues is not None
        return self.queues.redis_url

    def probes(self) -> Probes:
        """What the metrics server reads of this app (entered, with Redis)."""
        assert self.queues is not None, "the metrics server needs the daemon's Redis"
        return Probes(
            metrics=self.metrics,
            database_url=self.settings.database_url,
            redis_url=self.redis_url,
            queue_prefix=self.settings.queue_prefix,
            queues=tuple(self.queues.names.values()),
            tick_interval=self.settings.tick_interval,
        )

    # --- tick ---------------------------------------------------------------

    async def tick(self, *, now: datetime) -> TickReport:
        """One tick (:meth:`retro.tick.Ticker.tick`): advance every due run.

        Raises:
            RedisUnreachable: the app was opened without Redis.
        """
        if self.ticker is None:
            raise RedisUnreachable(self.redis_error or "a tick needs Redis")
        return await self.ticker.tick(now=now)

    # --- reads --------------------------------------------------------------

    async def idle(self) -> bool:
        """True when every run is terminal, given up by this process
        (RUN_FAILURE_LIMIT), or of a paused backfill and moved only by a resume
        (:func:`retro.store.runs.idle`; :attr:`retro.tick.Ticker.held`)."""
        ignore: set[str] = set()
        if self.ticker is not None:
            ignore = set(self.ticker.given_up) | self.ticker.held
        async with self.engine.connect() as conn:
            return await runs.idle(conn, ignore=ignore)

    def describe(self) -> dict[str, Any]:
        """Masked connection facts for output (``notify``: the webhook's scheme, host
        and port, or ``None``)."""
        url = self.settings.notify_url
        return {
            "database": mask_url(self.settings.database_url),
            "redis": mask_url(self.settings.redis_url),
            "notify": None if url is None else mask_webhook(url),
        }
