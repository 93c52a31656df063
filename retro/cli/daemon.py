"""Long-running commands: ``retro run`` (the daemon), ``retro workers`` (the
reference pipeline) and ``retro demo``."""

from __future__ import annotations

import logging

import click

from retro import commands
from retro.app import App
from retro.cli.common import (
    connection_options,
    execute,
    log_format_option,
    open_settings,
    settings_from,
    verbose_option,
)
from retro.cli.render import (
    out,
    render_demo,
)
from retro.config import setting_env
from retro.crashpoints import CrashPoints
from retro.logs import setup_logging
from retro.metrics import MetricsServer
from retro.scheduler import Daemon, SqliteLock
from retro.store.db import require_sqlite_file


@click.command()
@click.option(
    "--until-idle",
    is_flag=True,
    help="Exit once every run is done, failed or cancelled.",
)
@click.option(
    "--scan/--no-scan",
    default=True,
    help="Seed new gaps every scan interval.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1, 10_000),
    envvar="RETRO_MAX_IN_FLIGHT",
    show_envvar=True,
    help="Runs holding a slot at once (work outstanding; a retry back-off holds none "
    "unless its job timed out).",
)
@click.option(
    "--tick-interval",
    type=click.FloatRange(0.001, 3600),
    envvar="RETRO_TICK_INTERVAL",
    show_envvar=True,
    help="Seconds between safety-net ticks.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar=setting_env("metrics_port"),
    show_envvar=True,
    help="Serve Prometheus /metrics and /healthz on this port (0: off). "
    "Setting metrics_port (default 0).",
)
@click.option(
    "--metrics-host",
    envvar=setting_env("metrics_host"),
    show_envvar=True,
    help="Address the metrics server listens on. Setting metrics_host (default 127.0.0.1).",
)
@connection_options
def run(
    until_idle: bool,
    scan: bool,
    max_in_flight: int | None,
    tick_interval: float | None,
    metrics_port: int | None,
    metrics_host: str | None,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Run the daemon: tick, hand off, scan; SIGTERM finishes the tick and exits 0."""
    settings = settings_from(
        database_url,
        redis_url,
        max_in_flight=max_in_flight,
        tick_interval=tick_interval,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        log_format=log_format,
    )
    setup_logging(verbose, settings.log_format)

    async def go() -> None:
        require_sqlite_file(settings.database_url)  # before the lock file is made
        port, host = settings.metrics_port, settings.metrics_host
        server = MetricsServer(host, port) if port else None
        lock = SqliteLock(settings.database_url)
        try:
            lock.acquire()
            async with App(settings, crash=CrashPoints.from_env()) as retro:
                if server is not None:
                    server.serve(retro.probes())
                logger = logging.getLogger("retro")
                if retro.redis_warning:
                    logger.warning(retro.redis_warning)
                described = retro.describe()
                logger.info(
                    "daemon started: database %s, redis %s%s",
                    described["database"],
                    described["redis"],
                    f", notifications to {described['notify']}" if described["notify"] else "",
                )
                await Daemon(retro).run(until_idle=until_idle, scan=scan)
                counts = await commands.counts(retro)
                logger.info(
                    "daemon stopped: runs %s",
                    ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none",
                )
        finally:
            if server is not None:
                server.close()
            lock.release()

    execute(go(), verbose)


@click.command()
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=1,
    envvar="RETRO_WORKER_CONCURRENCY",
    show_envvar=True,
    help="Jobs each worker runs at once.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fail this share of jobs with 'injected failure' (chaos tests; 0 = never).",
)
@click.option(
    "--lock-duration",
    type=click.FloatRange(1, 3600),
    default=30.0,
    envvar="RETRO_WORKER_LOCK_DURATION",
    show_envvar=True,
    help="BullMQ job lock, seconds: a dead worker's job is handed out again after 1-2 of these.",
)
@connection_options
def workers(
    concurrency: int,
    fail_rate: float,
    lock_duration: float,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Run the reference workers for the three queues (for operators without their own)."""
    settings = open_settings(database_url, redis_url, verbose, log_format)
    from retro.pipeline.service import serve

    execute(
        serve(
            settings,
            concurrency=concurrency,
            fail_rate=fail_rate,
            lock_duration=lock_duration,
        ),
        verbose,
    )


@click.command()
@click.option(
    "--workdir",
    default="retro-demo",
    help="Folder for the demo's SQLite and Redis files (recreated).",
)
@verbose_option
@log_format_option
def demo(workdir: str, verbose: bool, log_format: str | None) -> None:
    """Play the 2024/25 season with an outage, then heal it on the embedded default."""
    # The demo brings its own database and embedded Redis; every other setting is
    # checked here as the demo will read it.
    settings = settings_from("sqlite+aiosqlite:///retro-demo.db", "embedded", log_format=log_format)
    setup_logging(verbose, settings.log_format)
    if not verbose:
        logging.getLogger("retro").setLevel(logging.WARNING)
    from retro.demo.scenario import run_demo

    render_demo(execute(run_demo(workdir, say=out.print), verbose))
