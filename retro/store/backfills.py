"""The ``backfills`` rows and their ``backfill_actions`` (:mod:`retro.backfill`).

``create`` writes a backfill and its ``BackfillCreated`` action in the caller's
transaction; ``start`` calls it in the transaction of the backfill's first
``RunSeeded``, so a backfill exists only once it has seeded a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from retro.backfill import Action, ActionType, Backfill
from retro.store.schema import backfill_actions, backfills


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


async def all_backfills(conn: AsyncConnection) -> list[Backfill]:
    """Every backfill, newest first."""
    rows = await conn.execute(select(backfills).order_by(backfills.c.created_at.desc()))
    return [backfill_from_row(row) for row in rows.mappings()]


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
