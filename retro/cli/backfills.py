"""``retro backfills``, ``retro pause --backfill`` and ``retro resume --backfill``
(issue 11), and the ``--backfill`` option ``status``, ``cancel`` and ``retry`` share.
Each parses, opens the app, calls one method of :mod:`retro.backfill_commands`
and renders."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import click

from retro import backfill_commands
from retro.app import App
from retro.backfill_commands import Steered
from retro.cli.backfill_render import render_backfills, steered_lines
from retro.cli.common import (
    FiniteRange,
    connection_options,
    emit,
    json_option,
    open_settings,
    with_app,
)
from retro.cli.render import out
from retro.progress import DEFAULT_WINDOW
from retro.report import backfills_json, steered_json
from retro.scheduler import utcnow

F = TypeVar("F", bound=Callable[..., Any])

IDENT = "ID|LABEL"
"""How a backfill is named on the command line (:func:`retro.backfill_commands.resolve`)."""
IDENT_HELP = (
    "The backfill: its id, an id prefix of 6 or more characters, or its label "
    "(`retro backfills` lists them); naming several is an error (exit 2)."
)


def eta_window_option(help_text: str) -> Callable[[F], F]:
    """``--eta-window SECONDS`` (``RETRO_ETA_WINDOW``) of ``status`` and ``backfills``:
    how far back the hand-off rate of an ETA looks (60 s to 7 days)."""
    return click.option(
        "--eta-window",
        type=FiniteRange(60, 7 * 86400),
        default=DEFAULT_WINDOW,
        show_default=True,
        envvar="RETRO_ETA_WINDOW",
        show_envvar=True,
        help=help_text,
    )


def backfill_option(help_text: str, *, required: bool = False) -> Callable[[F], F]:
    """``--backfill ID|LABEL`` (command line only: it chooses what a command touches)."""
    return click.option(
        "--backfill",
        "backfill",
        metavar=IDENT,
        required=required,
        help=f"{help_text} {IDENT_HELP}",
    )


@click.command()
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    envvar="RETRO_BACKFILLS_LIMIT",
    show_envvar=True,
    help="Show the newest this many backfills.",
)
@eta_window_option("Seconds of recent hand-offs each backfill's ETA rate is measured over.")
@json_option
@connection_options
def backfills(
    limit: int,
    eta_window: float,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Each backfill, newest first: id, label, window, created (and by whom), state,
    progress and ETA.

    A backfill is one `retro start` (or one periodic scan that seeded runs, labelled
    scan). Its state is running, paused, finished (no run live) or cancelled. Its
    progress is its finished runs (done, failed, cancelled) out of the runs it
    seeded: 100% exactly when none is live. Its ETA divides the hand-offs its live
    runs still need by the rate of its own hand-offs over the last --eta-window s.
    """
    settings = open_settings(database_url, redis_url, verbose, log_format)
    now = utcnow()
    listing = with_app(
        settings,
        verbose,
        lambda retro: backfill_commands.listing(retro, now=now, window=eta_window, limit=limit),
        redis=False,
    )

    def render(found: backfill_commands.Listing) -> None:
        for part in render_backfills(found):
            out.print(part)

    emit(as_json, listing, partial(backfills_json, now=now), render)


def _steer(
    backfill: str,
    as_json: bool,
    settings_args: tuple[str | None, str | None, bool, str | None],
    call: Callable[[App, str, datetime], Coroutine[Any, Any, Steered]],
) -> None:
    database_url, redis_url, verbose, log_format = settings_args
    settings = open_settings(database_url, redis_url, verbose, log_format)
    steered = with_app(
        settings, verbose, lambda retro: call(retro, backfill, utcnow()), redis=False
    )

    def render(done: Steered) -> None:
        for line in steered_lines(done):
            out.print(line)

    emit(as_json, steered, steered_json, render)


@click.command()
@backfill_option("The backfill to pause.", required=True)
@json_option
@connection_options
def pause(
    backfill: str,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Pause a backfill: its runs start no new job (BackfillPaused).

    A job already queued or active finishes and is judged; then its run waits, as
    do its pending runs, holding no max_in_flight slot. Every daemon (rivals on
    PostgreSQL too) respects it from its next tick, across restarts, until `retro
    resume --backfill`. Pausing a paused backfill changes nothing (exit 0); a
    cancelled one is refused (exit 2).
    """
    _steer(
        backfill,
        as_json,
        (database_url, redis_url, verbose, log_format),
        lambda retro, ident, now: backfill_commands.pause(retro, ident, now=now),
    )


@click.command()
@backfill_option("The backfill to resume.", required=True)
@json_option
@connection_options
def resume(
    backfill: str,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Resume a paused backfill (BackfillResumed): its runs go on at the daemon's next
    tick, each taking a free max_in_flight slot first. Resuming a backfill that is
    not paused changes nothing (exit 0)."""
    _steer(
        backfill,
        as_json,
        (database_url, redis_url, verbose, log_format),
        lambda retro, ident, now: backfill_commands.resume(retro, ident, now=now),
    )
