"""Long-running commands: ``retro run`` (the daemon), ``retro workers`` (the
reference pipeline) and ``retro demo``."""

from __future__ import annotations

import logging

import click

from retro import commands
from retro.app import App
from retro.board.app import Site
from retro.board.server import DEFAULT_PORT, HttpServer, until_signalled
from retro.cli.common import (
    FiniteRange,
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
    type=FiniteRange(0.001, 3600),
    envvar="RETRO_TICK_INTERVAL",
    show_envvar=True,
    help="Seconds between safety-net ticks.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    envvar=setting_env("http_port"),
    show_envvar=True,
    help="Serve the board, Prometheus /metrics and /healthz on this port (0: off). "
    "Setting http_port (default 0).",
)
@click.option(
    "--http-host",
    envvar=setting_env("http_host"),
    show_envvar=True,
    help="Address the HTTP server listens on. The board has no login: expose it only "
    "behind a proxy. Setting http_host (default 127.0.0.1).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar=setting_env("metrics_port"),
    show_envvar=True,
    help="Deprecated name of --http-port (setting metrics_port).",
)
@click.option(
    "--metrics-host",
    envvar=setting_env("metrics_host"),
    show_envvar=True,
    help="Deprecated name of --http-host (setting metrics_host).",
)
@connection_options
def run(
    until_idle: bool,
    scan: bool,
    max_in_flight: int | None,
    tick_interval: float | None,
    http_port: int | None,
    http_host: str | None,
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
        http_port=http_port,
        http_host=http_host,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        log_format=log_format,
    )
    setup_logging(verbose, settings.log_format)

    async def go() -> None:
        require_sqlite_file(settings.database_url)  # before the lock file is made
        port, host = settings.http_port, settings.http_host
        server = HttpServer(host, port) if port else None
        lock = SqliteLock(settings.database_url)
        try:
            lock.acquire()
            async with App(settings, crash=CrashPoints.from_env()) as retro:
                logger = logging.getLogger("retro")
                for deprecated in settings.deprecated():
                    logger.warning(deprecated)
                try:
                    if server is not None:
                        server.start(Site(settings, retro.probes()))
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
                finally:  # before the app closes: the board reads its (embedded) Redis
                    if server is not None:
                        server.close()
        finally:
            if server is not None:
                server.close()  # bound but never started: the port is released
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
    type=FiniteRange(0, 1),
    default=0.0,
    help="Fail this share of jobs with 'injected failure' (chaos tests; 0 = never).",
)
@click.option(
    "--lock-duration",
    type=FiniteRange(1, 3600),
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


port_option = click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="RETRO_BOARD_PORT",
    show_envvar=True,
    help=f"Port of the board (0: any free port). Default: the http_port setting if set, "
    f"else {DEFAULT_PORT}.",
)
http_host_option = click.option(
    "--http-host",
    envvar=setting_env("http_host"),
    show_envvar=True,
    help="Address the board listens on. It has no login: expose it only behind a proxy. "
    "Setting http_host (default 127.0.0.1).",
)


@click.command()
@port_option
@http_host_option
@connection_options
def board(
    port: int | None,
    http_host: str | None,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Serve the read-only board (and /healthz) over the database, without running the
    daemon; Ctrl-C or SIGTERM stops it (exit 0)."""
    settings = settings_from(database_url, redis_url, http_host=http_host, log_format=log_format)
    setup_logging(verbose, settings.log_format)

    async def go() -> None:
        server = HttpServer(settings.http_host, _board_port(port, settings.http_port))
        try:
            server.start(Site(settings))
            out.print(f"Board on {server.url} (read-only; Ctrl-C stops it).", soft_wrap=True)
            await until_signalled(server)
        finally:
            server.close()

    execute(go(), verbose)


def _board_port(port: int | None, http_port: int) -> int:
    """``--port`` if given, else the ``http_port`` setting, else :data:`DEFAULT_PORT`."""
    if port is not None:
        return port
    return http_port or DEFAULT_PORT


@click.command()
@click.option(
    "--workdir",
    default="retro-demo",
    help="Folder for the demo's SQLite and Redis files (recreated).",
)
@click.option(
    "--board",
    "with_board",
    is_flag=True,
    help="Serve the board during the heal and keep it up afterwards, until Ctrl-C.",
)
@port_option
@http_host_option
@verbose_option
@log_format_option
def demo(
    workdir: str,
    with_board: bool,
    port: int | None,
    http_host: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Play the 2024/25 season with an outage, then heal it on the embedded default."""
    # The demo brings its own database and embedded Redis; every other setting is
    # checked here as the demo will read it.
    settings = settings_from(
        "sqlite+aiosqlite:///retro-demo.db",
        "embedded",
        http_host=http_host,
        log_format=log_format,
    )
    setup_logging(verbose, settings.log_format)
    if not verbose:
        logging.getLogger("retro").setLevel(logging.WARNING)
    from retro.demo.scenario import DemoReport, run_demo

    if not with_board:
        render_demo(execute(run_demo(workdir, say=out.print), verbose))
        return

    async def go() -> None:
        server = HttpServer(settings.http_host, _board_port(port, settings.http_port))

        async def keep_up(report: DemoReport) -> None:
            render_demo(report)
            out.print(f"Board still on {server.url}; Ctrl-C stops it.", soft_wrap=True)
            await until_signalled(server)

        try:
            await run_demo(workdir, say=out.print, board=server, then=keep_up)
        finally:
            server.close()

    execute(go(), verbose)
