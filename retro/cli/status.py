"""``retro status``: counts, progress and ETA, in-flight and failed runs, workers
and reachability, once or as a live ``--watch`` view."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from functools import partial

import click

from retro import commands
from retro.app import App, unreachable
from retro.backfill_commands import status as backfill_status
from retro.cli.backfills import backfill_option, eta_window_option
from retro.cli.common import (
    FiniteRange,
    connection_options,
    emit,
    execute,
    json_option,
    open_settings,
    with_app,
)
from retro.cli.render import (
    WatchView,
    out,
    render_status,
)
from retro.commands import StatusReport
from retro.config import Settings
from retro.errors import EXIT_FAILURE, EXIT_OK
from retro.report import status_json
from retro.scheduler import utcnow


@click.command()
@json_option
@click.option(
    "--watch",
    is_flag=True,
    help="Live view with a progress bar, refreshed every --interval until Ctrl-C (exit 0).",
)
@click.option(
    "--interval",
    type=FiniteRange(0.1, 3600),
    help="Seconds between refreshes of --watch (default 2).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    help="Stop --watch after this many refreshes (default: until Ctrl-C).",
)
@eta_window_option("Seconds of recent hand-offs the ETA's rate is measured over.")
@backfill_option("Show this backfill alone: its runs, progress and ETA.")
@connection_options
def status(
    as_json: bool,
    watch: bool,
    interval: float | None,
    count: int | None,
    eta_window: float,
    backfill: str | None,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Counts by state, percent done and ETA, in-flight runs, failed runs with reasons,
    workers per queue, reachability. Exit 1 when Redis is unreachable.

    Percent done is done runs out of every stored run. The ETA divides the hand-offs
    still to come (a hand-off is a phase finished: 3 per run) by the rate of
    hand-offs over the last --eta-window seconds. Each backfill with a live run is
    listed with its own progress (its finished runs out of its seeded runs) and ETA.

    With --backfill: that backfill alone, its counts, progress, ETA and its
    in-flight, back-off and failed runs.
    """
    if watch and as_json:
        raise click.UsageError("--watch and --json do not go together")
    if not watch and (interval is not None or count is not None):
        raise click.UsageError("--interval and --count need --watch")
    if watch and backfill is not None:
        raise click.UsageError("--watch and --backfill do not go together")
    settings = open_settings(database_url, redis_url, verbose, log_format)
    if watch:
        watch_status(settings, interval or 2.0, count, eta_window, verbose)
        return

    async def read(retro: App) -> tuple[StatusReport, datetime]:
        now = utcnow()
        if backfill is not None:
            return await backfill_status(retro, backfill, now=now, window=eta_window), now
        return await commands.status(retro, now=now, window=eta_window), now

    report, now = with_app(settings, verbose, read, redis_optional=True)
    emit(
        as_json,
        report,
        partial(status_json, now=now),
        partial(render_status, now=now),
    )
    if report.redis_error:
        raise SystemExit(EXIT_FAILURE)  # the database answered; Redis did not


def watch_status(
    settings: Settings, interval: float, count: int | None, window: float, verbose: bool
) -> None:
    """``retro status --watch``: one App (database and Redis connections kept open)
    refreshed every ``interval`` seconds in a Rich ``Live`` view, ``count`` times or
    until Ctrl-C. A refresh that finds the database or Redis down says so and the
    watch goes on. Exits 0 on Ctrl-C; after ``count`` refreshes, 1 if the last one
    found Redis or the database unreachable, else 0."""
    from rich.live import Live

    view = WatchView(interval)

    async def go() -> int:
        async with App(settings, redis_optional=True) as retro:
            logging.getLogger("retro").info("watching status every %g s; Ctrl-C stops", interval)
            code = EXIT_OK
            with Live(view, console=out, auto_refresh=False) as live:
                while True:
                    now = utcnow()
                    try:
                        report = await commands.status(retro, now=now, window=window)
                        view.update(report, now=now)
                        code = EXIT_FAILURE if report.redis_error else EXIT_OK
                    except Exception as exc:
                        dependency = unreachable(exc)
                        if dependency is None:
                            raise
                        view.update(None, now=now, error=f"{dependency} unreachable: {exc}")
                        code = EXIT_FAILURE
                    live.refresh()
                    if count is not None and view.refreshes >= count:
                        return code
                    await asyncio.sleep(interval)

    try:
        code = execute(go(), verbose)
    except SystemExit as exc:
        if exc.code == 130:  # Ctrl-C is how a watch ends
            raise SystemExit(EXIT_OK) from None
        raise
    raise SystemExit(code)
