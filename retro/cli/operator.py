"""Operator commands over runs: ``retro start``, ``retry``, ``verify``, ``history``
and ``cancel``. Each parses, opens the app, calls one method and renders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from retro import commands
from retro.backfill import LEGACY_LABEL, SCAN_LABEL
from retro.cli.common import (
    connection_options,
    emit,
    json_option,
    open_settings,
    print_json,
    with_app,
)
from retro.cli.render import (
    err,
    out,
    plural,
    render_cancel,
    render_history,
    render_start,
)
from retro.commands import CANCEL_REASON, REPROCESS
from retro.commands import cancel as cancel_runs
from retro.commands import history as run_history
from retro.errors import EXIT_FAILURE, EXIT_OK
from retro.lookup import Of
from retro.report import cancel_json, history_json, start_json, verify_json
from retro.scheduler import utcnow
from retro.text import escape

F = TypeVar("F", bound=Callable[..., Any])

SHOWN = 20
"""Runs ``retro verify`` names in its text output per finding (``--json`` has all)."""


def _label(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A backfill label: 1 to 80 printable characters, not the reserved ``scan`` (the
    periodic scan's) nor ``before-backfills`` (runs from before backfills)."""
    if value is None:
        return None
    text = value.strip()
    if not 1 <= len(text) <= 80 or not text.isprintable():
        raise click.BadParameter("a label is 1 to 80 printable characters")
    if text in (SCAN_LABEL, LEGACY_LABEL):
        raise click.BadParameter(f"{text!r} is reserved for retro's own backfills")
    return text


@click.command()
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
@click.option(
    "--label",
    callback=_label,
    default=None,
    help="Name the backfill (e.g. INC-123); default: its window, <from>..<to>.",
)
@json_option
@connection_options
def start(
    days: int,
    dry_run: bool,
    reprocess: str,
    label: str | None,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Scan for gap matches and seed one backfill run per match."""
    settings = open_settings(database_url, redis_url, verbose, log_format)

    report = with_app(
        settings,
        verbose,
        lambda retro: commands.start(
            retro, days=days, now=utcnow(), dry_run=dry_run, reprocess=reprocess, label=label
        ),
        redis=False,
    )
    emit(as_json, report, start_json, render_start)


def of_option(verb: str) -> Callable[[F], F]:
    """``--of auto|run|match`` of ``cancel`` and ``retry`` (command line only: it
    chooses which runs the command touches)."""
    return click.option(
        "--of",
        type=click.Choice([str(o) for o in Of]),
        default=str(Of.AUTO),
        show_default=True,
        help=f"Read each id as a run id or run-id prefix (run), a match id (match), or "
        f"whichever it is (auto; both is exit 2). A match id {verb}.",
    )


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN|PREFIX|MATCH]...")
@click.option(
    "--failed",
    is_flag=True,
    help="Re-arm every failed run.",
)
@of_option("means its latest failed run")
@connection_options
def retry(
    run_ids: tuple[str, ...],
    failed: bool,
    of: str,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Re-arm failed runs (RunRearmed): they start again from pending.

    Each id is a run id, a unique run-id prefix of at least 6 characters, or a match
    id (its latest failed run). All or nothing: an id that names no failed run, or is
    ambiguous, is refused (exit 2) and nothing is written.
    """
    if bool(run_ids) == failed:
        raise click.UsageError("give run ids or --failed (one of them, not both)")
    settings = open_settings(database_url, redis_url, verbose, log_format)

    rearmed = with_app(
        settings,
        verbose,
        lambda retro: commands.retry(retro, list(run_ids), failed=failed, now=utcnow(), of=Of(of)),
        redis=False,
    )
    out.print(
        f"Re-armed {plural(len(rearmed), 'run')}"
        + (": " + ", ".join(r.id for r in rearmed) if rearmed else "."),
        soft_wrap=True,
    )


@click.command()
@json_option
@connection_options
def verify(
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Rebuild every run from its events; exit 1 if a stored projection drifted or a
    run's history cannot be replayed (an illegal or unknown event)."""
    settings = open_settings(database_url, redis_url, verbose, log_format)

    audit = with_app(
        settings,
        verbose,
        lambda retro: commands.verify(retro),
        redis=False,
    )
    if as_json:
        print_json(verify_json(audit))
        raise SystemExit(EXIT_OK if audit.ok else EXIT_FAILURE)
    illegal = list(audit.illegal.items())
    for run_id, why in illegal[:SHOWN]:
        err.print(
            f"retro: error: run {escape(run_id)} cannot be replayed: {escape(why)}", markup=False
        )
    if len(illegal) > SHOWN:
        err.print(
            f"retro: error: … and {plural(len(illegal) - SHOWN, 'more run')} that cannot be "
            "replayed (retro verify --json lists them all)",
            markup=False,
        )
    if audit.drifted:
        more = len(audit.drifted) - SHOWN
        err.print(
            f"retro: drift: {plural(len(audit.drifted), 'run differs', 'runs differ')} "
            "from their events: "
            + ", ".join(escape(r) for r in audit.drifted[:SHOWN])
            + (f", … and {more} more (retro verify --json lists them all)" if more > 0 else ""),
            markup=False,
        )
    if not audit.ok:
        raise SystemExit(EXIT_FAILURE)
    out.print(
        f"{plural(audit.runs, 'run')}, {plural(audit.events, 'event')}: every projection "
        "equals the replay of its events."
    )


@click.command()
@click.argument("ident", metavar="RUN|PREFIX|MATCH")
@click.option(
    "--of",
    type=click.Choice(["auto", "run", "match"]),
    default="auto",
    show_default=True,
    envvar="RETRO_HISTORY_OF",
    show_envvar=True,
    help="Read the id as a run id or run-id prefix (run), a match id (match), or "
    "whichever it is (auto; both is exit 2).",
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

    The id is a run id, a unique run-id prefix of at least 6 characters, or a match
    id: every run of that match, newest first. Unknown or ambiguous: exit 2.
    """
    settings = open_settings(database_url, redis_url, verbose, log_format)

    found = with_app(settings, verbose, lambda retro: run_history(retro, ident, of=of), redis=False)
    emit(as_json, found, history_json, render_history)


@click.command()
@click.argument("run_ids", nargs=-1, metavar="[RUN|PREFIX|MATCH]...")
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
@of_option("means its live run")
@json_option
@connection_options
def cancel(
    run_ids: tuple[str, ...],
    every_live: bool,
    reason: str,
    of: str,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Cancel live runs (RunCancelled): remove their waiting jobs from BullMQ.

    Each id is a run id, a unique run-id prefix of at least 6 characters, or a match
    id (its live run). A job a worker already runs (active) cannot be removed: it is
    left to finish and its result is ignored. All or nothing: an id that names no
    run or is ambiguous, or a run already done, failed or cancelled, is refused
    (exit 2) and nothing is written. Safe beside a running daemon.
    """
    if bool(run_ids) == every_live:
        raise click.UsageError("give run ids or --all (one of them, not both)")
    if not reason.strip():
        raise click.UsageError("--reason must not be empty")
    settings = open_settings(database_url, redis_url, verbose, log_format)

    report = with_app(
        settings,
        verbose,
        lambda retro: cancel_runs(
            retro,
            list(run_ids),
            every_live=every_live,
            now=utcnow(),
            reason=reason.strip(),
            of=Of(of),
        ),
    )
    emit(as_json, report, cancel_json, render_cancel)
