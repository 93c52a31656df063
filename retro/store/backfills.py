"""The ``backfills`` rows and their ``backfill_actions`` (:mod:`retro.backfill`).

``create`` writes a backfill and its ``BackfillCreated`` action in the caller's
transaction; ``start`` calls it in the transaction of the backfill's first
``RunSeeded``, so a backfill exists only once it has seeded a run. ``tallies``
counts each backfill's runs by state (one ``GROUP BY``); ``find`` reads what an
operator's ``ID|LABEL`` may name; ``set_paused`` and ``set_cancelled`` update the
row (on PostgreSQL a row lock, which an append's ``FOR SHARE`` read of the row
waits for: :func:`retro.store.runs.append`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from retro.backfill import LIVE_STATES, Action, ActionType, Backfill, Tally
from retro.store.schema import backfill_actions, backfill_runs, backfills

MIN_PREFIX = 6
"""The shortest id prefix :func:`find` matches (characters)."""


def backfill_row(backfill: Backfill) -> dict[str, Any]:
    """The ``backfills`` row for ``backfill``."""
    return {
        "id": backfill.id,
        "label": backfill.label,
        "window_from": backfill.window_from,
        "window_to": backfill.window_to,
        "created_at": backfill.created_at,
        "created_by": backfill.created_by,
        "options": json.dumps(dict(backfill.options), sort_keys=True),
        "gap_counts": json.dumps(dict(backfill.gap_counts), sort_keys=True),
        "paused": backfill.paused,
        "cancelled_at": backfill.cancelled_at,
    }


def backfill_from_row(row: RowMapping) -> Backfill:
    """A :class:`Backfill` from a ``backfills`` row."""
    return Backfill(
        id=row["id"],
        label=row["label"],
        window_from=row["window_from"],
        window_to=row["window_to"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        options=_object(row["options"]),
        gap_counts=_object(row["gap_counts"]),
        paused=bool(row["paused"]),
        cancelled_at=row["cancelled_at"],
    )


def _object(text: str) -> Mapping[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object: {text[:40]!r}")
    return value


async def create(conn: AsyncConnection, backfill: Backfill) -> None:
    """Insert ``backfill`` and its ``BackfillCreated`` action (by its ``created_by``,
    at its ``created_at``), in ``conn``'s transaction."""
    await conn.execute(insert(backfills).values(backfill_row(backfill)))
    await record(
        conn,
        Action(
            backfill_id=backfill.id,
            type=ActionType.CREATED,
            by=backfill.created_by,
            at=backfill.created_at,
            data={"label": backfill.label, "options": dict(backfill.options)},
        ),
    )


async def record(conn: AsyncConnection, action: Action) -> None:
    """Append ``action`` to ``backfill_actions``, in ``conn``'s transaction."""
    await conn.execute(
        insert(backfill_actions).values(
            backfill_id=action.backfill_id,
            type=str(action.type),
            data=json.dumps(dict(action.data), sort_keys=True),
            by=action.by,
            at=action.at,
        )
    )


async def get(conn: AsyncConnection, backfill_id: str) -> Backfill | None:
    """The backfill ``backfill_id``, or ``None``."""
    row = (
        (await conn.execute(select(backfills).where(backfills.c.id == backfill_id)))
        .mappings()
        .first()
    )
    return None if row is None else backfill_from_row(row)


async def all_backfills(conn: AsyncConnection, *, limit: int | None = None) -> list[Backfill]:
    """Every backfill (the ``limit`` newest, if given), newest first."""
    query = select(backfills).order_by(backfills.c.created_at.desc(), backfills.c.id)
    if limit is not None:
        query = query.limit(limit)
    rows = await conn.execute(query)
    return [backfill_from_row(row) for row in rows.mappings()]


async def count(conn: AsyncConnection) -> int:
    """How many backfills are stored."""
    return int(await conn.scalar(select(func.count()).select_from(backfills)) or 0)


async def actions(conn: AsyncConnection, backfill_id: str) -> list[Action]:
    """What was done to ``backfill_id``, oldest first."""
    rows = await conn.execute(
        select(backfill_actions)
        .where(backfill_actions.c.backfill_id == backfill_id)
        .order_by(backfill_actions.c.id)
    )
    return [
        Action(
            backfill_id=row["backfill_id"],
            type=ActionType(row["type"]),
            by=row["by"],
            at=row["at"],
            data=_object(row["data"]),
        )
        for row in rows.mappings()
    ]


async def tallies(conn: AsyncConnection, *, backfill_id: str | None = None) -> dict[str, Tally]:
    """Each backfill's runs by state, by backfill id (one ``GROUP BY backfill_id,
    state`` over ``backfill_runs``, served by ``ix_backfill_runs_backfill_id``);
    only ``backfill_id``'s with it. A backfill without runs is absent."""
    query = select(backfill_runs.c.backfill_id, backfill_runs.c.state, func.count()).group_by(
        backfill_runs.c.backfill_id, backfill_runs.c.state
    )
    if backfill_id is not None:
        query = query.where(backfill_runs.c.backfill_id == backfill_id)
    counted: dict[str, dict[str, int]] = {}
    for owner, state, n in await conn.execute(query):
        counted.setdefault(owner, {})[state] = int(n)
    return {owner: Tally(by_state) for owner, by_state in counted.items()}


async def find(conn: AsyncConnection, ident: str) -> list[Backfill]:
    """The backfills ``ident`` may name, newest first: the one whose id it is; else
    those whose id starts with it (``ident`` of :data:`MIN_PREFIX` characters or
    more) and those labelled exactly ``ident``. The caller decides what several
    mean (``retro.backfill_commands.resolve``: ambiguous)."""
    exact = await get(conn, ident)
    if exact is not None:
        return [exact]
    named = backfills.c.label == ident
    if len(ident) >= MIN_PREFIX:
        prefix = func.substr(backfills.c.id, 1, len(ident)) == ident  # no LIKE wildcards
        named = or_(named, prefix)
    rows = await conn.execute(
        select(backfills).where(named).order_by(backfills.c.created_at.desc(), backfills.c.id)
    )
    return [backfill_from_row(row) for row in rows.mappings()]


async def set_paused(conn: AsyncConnection, backfill_id: str, paused: bool) -> bool:
    """Set ``backfill_id``'s ``paused`` flag, in ``conn``'s transaction; ``True`` when
    it changed (``False``: it already was). On PostgreSQL the ``UPDATE`` holds the
    row lock to commit, so a rival's append waiting on the row (``FOR SHARE``,
    :func:`retro.store.runs.append`) sees the new flag."""
    result = await conn.execute(
        update(backfills)
        .where(backfills.c.id == backfill_id, backfills.c.paused.is_(not paused))
        .values(paused=paused)
    )
    return bool(result.rowcount)


async def set_cancelled(conn: AsyncConnection, backfill_id: str, at: datetime) -> None:
    """Mark ``backfill_id`` cancelled at ``at`` (aware UTC; the first cancel's
    instant is kept), and paused, in ``conn``'s transaction.

    The pause is what holds the backfill's runs once the cancel commits: every
    daemon then starts no new job for them (:func:`retro.store.runs.refuse_if_paused`),
    so a ``cancel --backfill`` interrupted before it cancelled each run leaves the
    rest held, not healing under a backfill that says ``cancelled``; cancelling it
    again cancels them."""
    await conn.execute(
        update(backfills)
        .where(backfills.c.id == backfill_id, backfills.c.cancelled_at.is_(None))
        .values(cancelled_at=at, paused=True)
    )


async def cancelled_ids(conn: AsyncConnection) -> frozenset[str]:
    """The ids of every cancelled backfill (:attr:`Backfill.cancelled_at` set)."""
    rows = await conn.execute(select(backfills.c.id).where(backfills.c.cancelled_at.is_not(None)))
    return frozenset(r for (r,) in rows)


async def paused_ids(conn: AsyncConnection) -> frozenset[str]:
    """The ids of every paused backfill (:attr:`Backfill.paused`)."""
    rows = await conn.execute(select(backfills.c.id).where(backfills.c.paused.is_(True)))
    return frozenset(r for (r,) in rows)


async def paused_live(conn: AsyncConnection) -> dict[str, tuple[str, int]]:
    """Every paused backfill: id -> (label, its live runs), in one query (the tick
    reads it once per tick; the paused are few)."""
    live = and_(
        backfill_runs.c.backfill_id == backfills.c.id,
        backfill_runs.c.state.in_(LIVE_STATES),
    )
    rows = await conn.execute(
        select(backfills.c.id, backfills.c.label, func.count(backfill_runs.c.id))
        .select_from(backfills.outerjoin(backfill_runs, live))
        .where(backfills.c.paused.is_(True))
        .group_by(backfills.c.id, backfills.c.label)
    )
    return {backfill_id: (label, int(n)) for backfill_id, label, n in rows}
