"""Finding runs and backfills by what an operator typed: the query behind
``retro runs`` (filters in SQL, newest first) and runs by run-id prefix
(:mod:`retro.lookup` decides what the matches mean; backfills are found by
:func:`retro.store.backfills.find`).

Newest first is ``created_at DESC, id DESC``, served by the index
``ix_backfill_runs_created_at`` (``created_at``, ``id``), read backwards: a page of
the newest runs reads that many index entries, however long the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from retro.machine import Run, State
from retro.store.runs import run_from_row
from retro.store.schema import backfill_runs, backfills, matches

NEWEST_FIRST = (backfill_runs.c.created_at.desc(), backfill_runs.c.id.desc())
"""Runs newest first (``ix_backfill_runs_created_at``, read backwards); ``id`` breaks
ties between runs seeded in the same instant."""


@dataclass(frozen=True)
class Listed:
    """One run as ``retro runs`` shows it: the run, its match's teams (``None`` when
    the host's ``matches`` row is gone) and its backfill's label (``None`` when the
    backfill row is missing)."""

    run: Run
    home_team: str | None
    away_team: str | None
    backfill_label: str | None


def _filters(
    *,
    states: Sequence[State] | None,
    backfill_id: str | None,
    match_id: str | None,
    since: datetime | None,
) -> list[Any]:
    conditions: list[Any] = []
    if states is not None:
        conditions.append(backfill_runs.c.state.in_(sorted(str(s) for s in states)))
    if backfill_id is not None:
        conditions.append(backfill_runs.c.backfill_id == backfill_id)
    if match_id is not None:
        conditions.append(backfill_runs.c.match_id == match_id)
    if since is not None:
        conditions.append(backfill_runs.c.created_at >= since)
    return conditions


async def find_runs(
    conn: AsyncConnection,
    *,
    states: Sequence[State] | None = None,
    backfill_id: str | None = None,
    match_id: str | None = None,
    since: datetime | None = None,
    limit: int,
) -> tuple[list[Listed], int]:
    """Up to ``limit`` runs, newest (``created_at``) first, that are in one of
    ``states``, belong to backfill ``backfill_id``, are of match ``match_id`` and
    were created at or after ``since`` (aware UTC); a filter left ``None`` does not
    filter. Returns the runs and how many runs pass the filters in all (two
    queries: the page, then the count).
    """
    conditions = _filters(states=states, backfill_id=backfill_id, match_id=match_id, since=since)
    query = (
        select(
            backfill_runs,
            matches.c.home_team.label("home_team"),
            matches.c.away_team.label("away_team"),
            backfills.c.label.label("backfill_label"),
        )
        .select_from(
            backfill_runs.outerjoin(matches, matches.c.id == backfill_runs.c.match_id).outerjoin(
                backfills, backfills.c.id == backfill_runs.c.backfill_id
            )
        )
        .where(*conditions)
        .order_by(*NEWEST_FIRST)
        .limit(limit)
    )
    rows = (await conn.execute(query)).mappings().all()
    listed = [
        Listed(
            run=run_from_row(row),
            home_team=row["home_team"],
            away_team=row["away_team"],
            backfill_label=row["backfill_label"],
        )
        for row in rows
    ]
    if len(listed) < limit:
        return listed, len(listed)
    total = await conn.scalar(select(func.count()).select_from(backfill_runs).where(*conditions))
    return listed, int(total or 0)


async def runs_with_prefix(
    conn: AsyncConnection, prefix: str, *, limit: int
) -> tuple[list[Run], int]:
    """Up to ``limit`` runs whose id starts with ``prefix`` (case-sensitive on every
    backend), newest first, and how many there are in all."""
    # LIKE alone is case-insensitive on SQLite; the substr comparison is exact everywhere.
    condition = [
        backfill_runs.c.id.startswith(prefix, autoescape=True),
        func.substr(backfill_runs.c.id, 1, len(prefix)) == prefix,
    ]
    rows = await conn.execute(
        select(backfill_runs).where(*condition).order_by(*NEWEST_FIRST).limit(limit)
    )
    found = [run_from_row(row) for row in rows.mappings()]
    if len(found) < limit:
        return found, len(found)
    total = await conn.scalar(select(func.count()).select_from(backfill_runs).where(*condition))
    return found, int(total or 0)
