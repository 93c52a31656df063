"""The ``outbox`` rows: notifications recorded in the transaction of the event that
causes them, sent after commit by the daemon (:mod:`retro.notify`): intent before
effect, as for jobs (DESIGN §4).

Recording is on for an engine made with the execution option :data:`OPTION` set
to a :class:`Recorder` (:class:`retro.app.App` does so when ``notify_url`` is set);
then :func:`after_append`, which :func:`retro.store.runs.append` calls in its
transaction, records

- a ``run.failed`` notification for each ``RunFailed`` appended;
- a ``backfill.finished`` notification when the append ended the last live run of
  its backfill. On PostgreSQL the backfill's row is locked (``FOR UPDATE``) before
  its live runs are counted, so of two rival daemons ending its last two runs at
  once exactly one sees none left: the second waits for the first to commit, and
  its count (a new snapshot under READ COMMITTED) sees the first's run ended. On
  SQLite one writer at a time gives the same.

Without the option nothing is recorded (a store without ``notify_url`` does not
grow; a URL configured later sends only what happens from then on). A record is
idempotent on its key (``INSERT … ON CONFLICT DO NOTHING``).

The sender claims due rows (:func:`claim`: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, then a lease pushed into ``next_try_at``), so rival daemons do not
both send one; a sender that dies holding a claim leaves the row due again once
the lease ends. Delivery is at least once: the receiver dedups by key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retro.events import Event, RunFailed, RunRearmed
from retro.machine import TERMINAL, Run, State
from retro.notification import (
    FAILED_RUNS_SHOWN,
    FailedRun,
    Notification,
    backfill_finished,
    run_failed,
)
from retro.store.schema import backfill_events, backfill_runs, backfills, matches, outbox
from retro.text import json_safe

OPTION = "retro_outbox"
"""The engine execution option that turns recording on; its value is a :class:`Recorder`."""


class Recorder:
    """Turns recording on for an engine (the value of :data:`OPTION`), and counts
    the notifications this process recorded (``recorded``; counted before commit,
    so a hint: the daemon wakes its sender and reaches the ``after_notify_commit``
    crash point when it grew across a committed append)."""

    def __init__(self) -> None:
        self.recorded = 0


def recorder_of(bind: AsyncConnection | AsyncEngine) -> Recorder | None:
    """The :class:`Recorder` of ``bind``'s execution options, or ``None`` (off)."""
    if isinstance(bind, AsyncEngine):
        value = bind.sync_engine.get_execution_options().get(OPTION)
    elif bind.sync_connection is not None:
        value = bind.sync_connection.get_execution_options().get(OPTION)
    else:
        value = None
    return value if isinstance(value, Recorder) else None


async def record(conn: AsyncConnection, note: Notification, *, at: datetime) -> bool:
    """Insert ``note`` (due at once, created ``at``, aware UTC) unless its key is
    already there; ``True`` when inserted. In ``conn``'s transaction."""
    row = {
        "id": note.key,
        "kind": note.kind,
        "payload": json_safe(json.dumps(note.payload, sort_keys=True, ensure_ascii=False)),
        "created_at": at,
        "attempts": 0,
        "next_try_at": at,
    }
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(outbox)
        .values(row)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(outbox.c.id)
    )
    return (await conn.execute(statement)).first() is not None


async def after_append(
    conn: AsyncConnection, before: Run | None, events: Sequence[Event], after: Sequence[Run]
) -> int:
    """Record the notifications ``events`` cause (``after``: the projection after
    each; ``before``: the run they were decided on, ``None`` for a seed), if
    recording is on for ``conn``. Returns how many were recorded.

    Raises:
        sqlalchemy.exc.DBAPIError: the database refused a read or the insert; the
            caller's transaction must roll back (the events with it).
    """
    recorder = recorder_of(conn)
    if recorder is None:
        return 0
    recorded = 0
    prior = before
    for event, current in zip(events, after, strict=True):
        if isinstance(event, RunFailed):
            recorded += await _run_failed(conn, prior, current, event)
        prior = current
    final = after[-1]
    if final.state in TERMINAL and (before is None or before.state not in TERMINAL):
        recorded += await _finished(conn, final.backfill_id, at=events[-1].at)
    recorder.recorded += recorded
    return recorded


async def _run_failed(conn: AsyncConnection, prior: Run | None, run: Run, event: RunFailed) -> int:
    teams = (
        await conn.execute(
            select(matches.c.home_team, matches.c.away_team).where(matches.c.id == run.match_id)
        )
    ).first()
    label = await conn.scalar(select(backfills.c.label).where(backfills.c.id == run.backfill_id))
    note = run_failed(
        run_id=run.id,
        seq=run.version,
        match_id=run.match_id,
        reason=event.reason,
        at=event.at,
        phase=None if prior is None or prior.phase is None else str(prior.phase),
        attempt=run.attempt,
        home_team=None if teams is None else teams[0],
        away_team=None if teams is None else teams[1],
        backfill_id=run.backfill_id,
        backfill_label=label,
    )
    return int(await record(conn, note, at=event.at))


async def _finished(conn: AsyncConnection, backfill_id: str, *, at: datetime) -> int:
    """Record ``backfill.finished`` if ``backfill_id`` has no live run left (its row
    locked first: see the module)."""
    row = (
        (
            await conn.execute(
                select(backfills).where(backfills.c.id == backfill_id).with_for_update()
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return 0  # runs of a backfill with no row: nothing to name
    of_backfill = backfill_runs.c.backfill_id == backfill_id
    counts = {
        str(state): int(n)
        for state, n in await conn.execute(
            select(backfill_runs.c.state, func.count())
            .where(of_backfill)
            .group_by(backfill_runs.c.state)
        )
    }
    if any(state not in {str(s) for s in TERMINAL} for state in counts):
        return 0  # a run of it is still live
    failed = [
        FailedRun(run_id=r, match_id=m, reason=e)
        for r, m, e in await conn.execute(
            select(backfill_runs.c.id, backfill_runs.c.match_id, backfill_runs.c.last_error)
            .where(of_backfill, backfill_runs.c.state == str(State.FAILED))
            .order_by(backfill_runs.c.finished_at, backfill_runs.c.id)
            .limit(FAILED_RUNS_SHOWN)
        )
    ]
    rearms = await conn.scalar(
        select(func.count())
        .select_from(
            backfill_events.join(backfill_runs, backfill_events.c.run_id == backfill_runs.c.id)
        )
        .where(of_backfill, backfill_events.c.type == RunRearmed.TYPE)
    )
    note = backfill_finished(
        backfill_id=backfill_id,
        label=row["label"],
        n=int(rearms or 0),
        created_at=row["created_at"],
        at=at,
        cancelled=row["cancelled_at"] is not None,
        counts={s: counts.get(s, 0) for s in ("done", "failed", "cancelled")},
        failed=failed,
    )
    return int(await record(conn, note, at=at))


# --- the sender's side ----------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """An outbox row the sender claimed: ``key``, ``kind``, ``payload`` (the JSON
    text to POST), ``attempts`` (this try included) and ``created_at`` (aware UTC)."""

    key: str
    kind: str
    payload: str
    attempts: int
    created_at: datetime


async def claim(
    conn: AsyncConnection, *, now: datetime, limit: int, lease: float, horizon: float
) -> list[Claimed]:
    """Claim up to ``limit`` due rows, oldest first, in ``conn``'s transaction (the
    caller commits at once): each gets ``attempts + 1`` and ``next_try_at = now +
    lease`` (seconds), so a sender that dies sending leaves it due again then.

    Due: not sent, not given up, and never tried, or its ``next_try_at`` passed at
    ``now`` (aware UTC), or lies more than ``horizon`` seconds ahead (longer than any
    back-off or lease: the wall clock went back since, and must not hold it).
    Rows a rival holds are skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL)."""
    if limit <= 0:
        return []
    due = and_(
        outbox.c.sent_at.is_(None),
        outbox.c.next_try_at.is_not(None),
        or_(
            outbox.c.attempts == 0,
            outbox.c.next_try_at <= now,
            outbox.c.next_try_at > now + timedelta(seconds=horizon),
        ),
    )
    rows = (
        await conn.execute(
            select(
                outbox.c.id, outbox.c.kind, outbox.c.payload, outbox.c.attempts, outbox.c.created_at
            )
            .where(due)
            # Oldest first; of one append's notifications, a run's failure before the
            # finish of the backfill it ended (a receiver reads them in that order).
            .order_by(
                outbox.c.created_at, case((outbox.c.kind == "run.failed", 0), else_=1), outbox.c.id
            )
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return []
    await conn.execute(
        update(outbox)
        .where(outbox.c.id.in_([r.id for r in rows]))
        .values(attempts=outbox.c.attempts + 1, next_try_at=now + timedelta(seconds=lease))
    )
    return [
        Claimed(
            key=r.id,
            kind=r.kind,
            payload=r.payload,
            attempts=r.attempts + 1,
            created_at=r.created_at,
        )
        for r in rows
    ]


async def next_due(conn: AsyncConnection) -> datetime | None:
    """The earliest ``next_try_at`` (aware UTC) of a row not sent nor given up, or
    ``None`` when there is none."""
    value: datetime | None = await conn.scalar(
        select(func.min(outbox.c.next_try_at)).where(
            outbox.c.sent_at.is_(None), outbox.c.next_try_at.is_not(None)
        )
    )
    return value


async def mark_sent(conn: AsyncConnection, key: str, *, now: datetime) -> None:
    """The receiver accepted ``key`` at ``now`` (aware UTC): it is never tried again."""
    await conn.execute(
        update(outbox)
        .where(outbox.c.id == key)
        .values(sent_at=now, next_try_at=None, last_error=None)
    )


async def mark_failed(
    conn: AsyncConnection, key: str, *, error: str, next_try_at: datetime | None
) -> None:
    """A try of ``key`` failed with ``error`` (one masked line): try again at
    ``next_try_at`` (aware UTC), or never (``None``: given up)."""
    await conn.execute(
        update(outbox)
        .where(outbox.c.id == key, outbox.c.sent_at.is_(None))
        .values(last_error=error, next_try_at=next_try_at)
    )


@dataclass(frozen=True)
class Row:
    """One outbox row as stored, for ``status``-like reads and tests."""

    key: str
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    next_try_at: datetime | None
    sent_at: datetime | None
    last_error: str | None


async def rows(conn: AsyncConnection) -> list[Row]:
    """Every outbox row, oldest first."""
    result = await conn.execute(select(outbox).order_by(outbox.c.created_at, outbox.c.id))
    return [
        Row(
            key=r["id"],
            kind=r["kind"],
            payload=json.loads(r["payload"]),
            created_at=r["created_at"],
            attempts=r["attempts"],
            next_try_at=r["next_try_at"],
            sent_at=r["sent_at"],
            last_error=r["last_error"],
        )
        for r in result.mappings()
    ]
