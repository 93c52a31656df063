"""``retro workers``: the reference workers as a long-running service."""

from __future__ import annotations

import asyncio
import logging
import signal

from retro.config import EMBEDDED_REDIS, Settings, mask_url
from retro.embedded import EmbeddedRedis
from retro.pipeline import host
from retro.pipeline.workers import run_workers
from retro.queue import JobOptions, Queues, queue_names
from retro.store import db

log = logging.getLogger("retro.workers")


async def serve(
    settings: Settings,
    *,
    concurrency: int = 1,
    fail_rate: float = 0.0,
    lock_duration: float = 30.0,
) -> None:
    """Consume the three queues until SIGTERM/SIGINT, then finish jobs in hand and exit.

    ``fail_rate`` (0 to 1) injects failures (chaos tests); ``lock_duration`` is
    BullMQ's job lock in seconds (see :func:`retro.pipeline.workers.run_workers`).

    Raises:
        StoreError: the database is unreachable or lacks the host tables.
        RedisUnreachable: Redis does not answer.
    """
    db.require_sqlite_file(settings.database_url)
    engine = db.create_engine(settings.database_url)
    try:
        await db.check(engine, host=True, retro=False)
        await db.enable_wal(engine)
        await host.create_journal(engine)
    finally:
        await engine.dispose()
    embedded = None
    redis_url = settings.redis_url
    if redis_url == EMBEDDED_REDIS:
        embedded = EmbeddedRedis(settings.embedded_redis_file())
        redis_url = embedded.start()
    try:
        names = queue_names(settings)
        async with Queues(
            redis_url, prefix=settings.queue_prefix, names=names, options=JobOptions()
        ) as queues:
            warning = await queues.check()
        if warning:
            log.warning(warning)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "reference workers consuming %s on %s (concurrency %d)",
            ", ".join(names.values()),
            mask_url(settings.redis_url),
            concurrency,
        )
        if fail_rate > 0:
            log.warning("injecting failures: %g of jobs fail with 'injected failure'", fail_rate)
        await run_workers(
            settings.database_url,
            redis_url,
            prefix=settings.queue_prefix,
            queues=(settings.analysis_queue, settings.predictions_queue, settings.settlement_queue),
            stop=stop,
            concurrency=concurrency,
            fail_rate=fail_rate,
            lock_duration=lock_duration,
        )
        log.info("reference workers stopped")
    finally:
        if embedded is not None:
            embedded.stop()
