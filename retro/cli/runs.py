"""``retro runs``: runs with filters, newest first (issue 11), as a table or as
``retro.runs/1`` JSON (docs/json.md)."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import click

from retro.cli.common import connection_options, emit, json_option, open_settings, with_app
from retro.cli.render import out, plural, shown
from retro.cli.tables import IdTable
from retro.errors import UsageError
from retro.lookup import (
    DEFAULT_LIMIT,
    LIVE_WORD,
    MAX_LIMIT,
    RunFilter,
    RunList,
    list_runs,
    parse_since,
    parse_states,
)
from retro.machine import TERMINAL, State
from retro.report import iso, masked
from retro.scheduler import utcnow
from retro.store.listing import Listed


def _states(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[State, ...] | None:
    try:
        return parse_states(value)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


def _when(instant: datetime | None) -> str:
    return "-" if instant is None else instant.strftime("%Y-%m-%d %H:%M")


def _teams(item: Listed) -> str:
    if item.home_team is None and item.away_team is None:
        return "-"
    return f"{item.home_team or '?'} v {item.away_team or '?'}"


def _state(item: Listed) -> str:
    """``analyzing/job`` for a live run; a terminal run's state alone."""
    run = item.run
    return str(run.state) if run.state in TERMINAL else f"{run.state}/{run.step}"


def render_runs(found: RunList) -> None:
    """The runs as an :class:`IdTable` (ids never cut), then how many more there are."""
    if not found.runs:
        out.print("No runs match.")
        return
    table = IdTable(
        "run",
        "match",
        "teams",
        "state",
        "attempt",
        "backfill",
        "created (UTC)",
        "updated (UTC)",
        "last error",
        ids={"run", "match"},
        title=f"Runs, newest first: {len(found.runs)} of {found.total}",
    )
    for item in found.runs:
        run = item.run
        table.add_row(
            shown(run.id),
            shown(run.match_id),
            shown(_teams(item)),
            _state(item),
            str(run.attempt),
            shown(item.backfill_label if item.backfill_label is not None else run.backfill_id),
            _when(run.created_at),
            _when(run.updated_at),
            shown(run.last_error or "-"),
        )
    out.print(table)
    if found.more:
        out.print(f"… {plural(found.more, 'more run')}; use --limit (at most {MAX_LIMIT}).")


def runs_json(found: RunList, *, now: datetime) -> dict[str, Any]:
    """``retro runs --json`` (``retro.runs/1``)."""
    filters = found.filters
    return {
        "schema": "retro.runs/1",
        "generated_at": iso(now),
        "filters": {
            "states": None if filters.states is None else [str(s) for s in filters.states],
            "backfill": None
            if found.backfill is None
            else {"id": found.backfill.id, "label": found.backfill.label},
            "match_id": filters.match_id,
            "since": iso(filters.since),
            "limit": filters.limit,
        },
        "total": found.total,
        "more": found.more,
        "runs": [
            {
                "run_id": item.run.id,
                "match_id": item.run.match_id,
                "home_team": item.home_team,
                "away_team": item.away_team,
                "state": str(item.run.state),
                "step": str(item.run.step),
                "phase": None if item.run.phase is None else str(item.run.phase),
                "attempt": item.run.attempt,
                "job_id": item.run.job_id,
                "backfill_id": item.run.backfill_id,
                "backfill_label": item.backfill_label,
                "created_at": iso(item.run.created_at),
                "updated_at": iso(item.run.updated_at),
                "finished_at": iso(item.run.finished_at),
                "last_error": masked(item.run.last_error),
            }
            for item in found.runs
        ],
    }


@click.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    callback=_states,
    help=f"Only runs in this state: pending, analyzing, predicting, settling, done, failed, "
    f"cancelled, or {LIVE_WORD} (the first four). Repeat it or separate states by commas.",
)
@click.option(
    "--backfill",
    help="Only runs of this backfill: its id, an id prefix (6 or more characters) or its label.",
)
@click.option("--match", "match_id", help="Only runs of this match id (exact).")
@click.option(
    "--since",
    help="Only runs created at or after this: an ISO-8601 date or instant (UTC unless it "
    "has an offset; 2025-05-26, 2025-05-26T12:00Z) or a duration back from now (30m, 2h, 7d).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LIMIT),
    default=DEFAULT_LIMIT,
    show_default=True,
    envvar="RETRO_RUNS_LIMIT",
    show_envvar=True,
    help="Show at most this many runs (the newest).",
)
@json_option
@connection_options
def runs(
    states: tuple[State, ...] | None,
    backfill: str | None,
    match_id: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    database_url: str | None,
    redis_url: str | None,
    verbose: bool,
    log_format: str | None,
) -> None:
    """Runs, newest (created) first, with their match, teams, state, attempt, backfill,
    times and last error. Filters combine: a run must pass every one given.

    A --backfill or --since that names nothing valid is exit 2.
    """
    now = utcnow()
    try:
        start = None if since is None else parse_since(since, now=now)
    except UsageError as exc:
        raise click.BadParameter(str(exc), param_hint="'--since'") from None
    settings = open_settings(database_url, redis_url, verbose, log_format)
    filters = RunFilter(
        states=states, backfill=backfill, match_id=match_id, since=start, limit=limit
    )
    found = with_app(settings, verbose, lambda retro: list_runs(retro, filters), redis=False)
    emit(as_json, found, partial(runs_json, now=now), render_runs)
