"""``retro history`` and ``retro cancel``: an operator's look at one run's events,
and stopping live runs. Registered on the ``retro`` group by :mod:`retro.cli`."""

from __future__ import annotations

import click

from retro.app import App
from retro.cli import (
    connection_options,
    emit,
    execute,
    json_option,
    settings_from,
)
from retro.cli.render import render_cancel, render_history
from retro.logs import setup_logging
from retro.ops import CANCEL_REASON, CancelReport, History
from retro.ops import cancel as cancel_runs
from retro.ops import history as run_history
from retro.report import cancel_json, history_json
from retro.scheduler import utcnow


@click.command()
@click.argument("ident", metavar="RUN_ID|MATCH_ID")
@click.option(
    "--of",
    type=click.Choice(["auto", "run", "match"]),
    default="auto",
    show_default=True,
    envvar="RETRO_HISTORY_OF",
    show_envvar=True,
    help="Read the id as a run id, a match id, or whichever it is (auto).",
)
@json_option
@connection_options
def history(
    ident: str,
    of: str,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """A run's event timeline: seq, time (UTC), time since the previous event, type, data.

    Given a match id: every run of that match, newest first. Unknown id: exit 2.
    """
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)

    async def go() -> History:
        async with App(settings, redis=False) as retro:
            return await run_history(retro, ident, of=of)

    found = execute(go(), verbose)
    emit(as_json, found, history_json, render_history)


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN]...")
@click.option(
    "--all",
    "every_live",
    is_flag=True,
    help="Cancel every live run (pending, analyzing, predicting, settling).",
)
@click.option(
    "--reason",
    default=CANCEL_REASON,
    show_default=True,
    envvar="RETRO_CANCEL_REASON",
    show_envvar=True,
    help="Reason recorded on each RunCancelled event.",
)
@json_option
@connection_options
def cancel(
    run_ids: tuple[str, ...],
    every_live: bool,
    reason: str,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Cancel live runs (RunCancelled): remove their waiting jobs from BullMQ.

    A job a worker already runs (active) cannot be removed: it is left to finish
    and its result is ignored. All or nothing: an unknown run, or a run already
    done, failed or cancelled, is refused (exit 2) and nothing is written. Safe
    beside a running daemon.
    """
    if bool(run_ids) == every_live:
        raise click.UsageError("give run ids or --all (one of them, not both)")
    if not reason.strip():
        raise click.UsageError("--reason must not be empty")
    settings = settings_from(database_url, redis_url, log_format=log_format)
    setup_logging(verbose, settings.log_format)

    async def go() -> CancelReport:
        async with App(settings) as retro:
            return await cancel_runs(
                retro, list(run_ids), every_live=every_live, now=utcnow(), reason=reason.strip()
            )

    report = execute(go(), verbose)
    emit(as_json, report, cancel_json, render_cancel)
