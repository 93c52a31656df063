"""The run log and its projection: append events, read runs, find due runs.

``append`` is the one write path: it inserts the events into
``backfill_events`` and updates the ``backfill_runs`` projection in the same
transaction, guarded by the run's ``version`` (and records the notifications they
cause there too: :mod:`retro.store.outbox`). A lost race (a rival daemon
appended first) surfaces as :class:`ConcurrencyError`; a second live run of a
match as :class:`LiveRunExists`; any other refusal as :class:`AppendRejected`
(translated by constraint name in :mod:`retro.store.constraints`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, text, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from retro.events import (
    HANDOFF_TYPES,
    Event,
    RunRearmed,
    RunSeeded,
    UnknownEvent,
    from_record,
    to_record,
)
from retro.machine import (
    IN_FLIGHT,
    TERMINAL,
    IllegalTransition,
    Policy,
    Run,
    State,
    Step,
    backoff_over,
    evolve,
    project,
    seed,
)
from retro.store.constraints import AppendRejected as AppendRejected  # re-exported
from retro.store.constraints import ConcurrencyError as ConcurrencyError
from retro.store.constraints import LiveRunExists as LiveRunExists
from retro.store.constraints import translate
from retro.store.outbox import after_append
from retro.store.schema import IN_FLIGHT_SQL, backfill_events, backfill_runs
from retro.text import escape


def run_row(run: Run) -> dict[str, Any]:
    """The ``backfill_runs`` row for ``run``."""
    return {
        "id": run.id,
        "match_id": run.match_id,
        "state": str(run.state),
        "step": str(run.step),
        "attempt": run.attempt,
        "job_id": run.job_id,
        "requested_at": run.requested_at,
        "adopted_created_at": run.adopted_created_at,
        "judged_created_at": run.judged_created_at,
        "not_before": run.not_before,
        "next_check_at": run.next_check_at,
        "gaps": ",".join(run.gaps),
        "found": run.found,
        "expected": run.expected,
        "last_error": run.last_error,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "finished_at": run.finished_at,
        "version": run.version,
        "reenqueues": run.reenqueues,
        "timed_out": run.timed_out,
        "backfill_id": run.backfill_id,
    }


def run_from_row(row: RowMapping) -> Run:
    """A :class:`Run` from a ``backfill_runs`` row."""
    return Run(
        id=row["id"],
        match_id=row["match_id"],
        state=State(row["state"]),
        step=Step(row["step"]),
        attempt=row["attempt"],
        job_id=row["job_id"],
        requested_at=row["requested_at"],
        adopted_created_at=row["adopted_created_at"],
        judged_created_at=row["judged_created_at"],
        not_before=row["not_before"],
        next_check_at=row["next_check_at"],
        gaps=tuple(g for g in row["gaps"].split(",") if g),
        found=row["found"],
        expected=row["expected"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reenqueues=row["reenqueues"],
        timed_out=bool(row["timed_out"]),
        backfill_id=row["backfill_id"],
        finished_at=row["finished_at"],
        version=row["version"],
    )


async def append(
    conn: AsyncConnection,
    run: Run | None,
    events: Sequence[Event],
    *,
    projected: Sequence[Run] | None = None,
) -> Run:
    """Append ``events`` to ``run``'s log and update its projection, in ``conn``'s transaction.

    ``run`` is the projection the events were decided on (``None`` when the
    first event is ``RunSeeded``). ``projected`` is the projection after each
    event as the caller already computed it (the tick's
    :class:`~retro.machine.Plan`): it is stored as given, nothing is evolved again.
    Without it (seed, re-arm, cancel, give-up) the events are evolved here. The
    caller commits; after any of the errors below the caller must roll the
    transaction back.

    When recording is on for ``conn`` (``notify_url``), the notifications the
    events cause (a run failed, its backfill finished) are recorded in the same
    transaction (:func:`retro.store.outbox.after_append`).

    Raises:
        ConcurrencyError: a rival appended first (seq taken or version moved).
        LiveRunExists: the match already has a live run (on ``RunSeeded`` or
            ``RunRearmed``).
        AppendRejected: the database refused the events for another reason
            (a constraint or trigger retro does not own); not a race.
        IllegalTransition: an event is impossible in the run's state.
    """
    if not events:
        raise ValueError("nothing to append")
    if projected is None:
        projected = _project_onto(run, events)
    if len(projected) != len(events):
        raise ValueError("one projection per event")
    current = run
    rows = []
    for event, current in zip(events, projected, strict=True):
        type_, data, at = to_record(event)
        rows.append(
            {
                "run_id": current.id,
                "seq": current.version,
                "type": type_,
                "data": json.dumps(data, sort_keys=True),
                "at": at,
            }
        )
    assert current is not None
    try:
        await conn.execute(insert(backfill_events), rows)
        if run is None:
            await conn.execute(insert(backfill_runs).values(run_row(current)))
        else:
            result = await conn.execute(
                update(backfill_runs)
                .where(backfill_runs.c.id == run.id, backfill_runs.c.version == run.version)
                .values(run_row(current))
            )
            if result.rowcount != 1:
                raise ConcurrencyError(f"run {run.id} moved past version {run.version}")
    except IntegrityError as exc:
        raise translate(exc, current.id) from exc
    await after_append(conn, run, events, projected)  # notifications, same transaction
    return current


def _project_onto(run: Run | None, events: Sequence[Event]) -> list[Run]:
    """The projection after each of ``events``, from ``run`` (``None``: a seed first)."""
    current = run
    after: list[Run] = []
    for event in events:
        if current is None:
            if not isinstance(event, RunSeeded):
                raise ValueError("a new run must start with RunSeeded")
            current = seed(event)
        else:
            current = evolve(current, event)
        after.append(current)
    return after


async def get(
    conn: AsyncConnection, run_id: str, *, lock: bool = False, wait: bool = False
) -> Run | None:
    """The run ``run_id``, or ``None``. ``lock=True`` takes ``FOR UPDATE SKIP LOCKED``
    (PostgreSQL): ``None`` also when a rival holds it. ``wait=True`` takes a plain
    ``FOR UPDATE`` instead: it waits for a rival's transaction to end."""
    query = select(backfill_runs).where(backfill_runs.c.id == run_id)
    if wait:
        query = query.with_for_update()
    elif lock:
        query = query.with_for_update(skip_locked=True)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else run_from_row(row)


async def events_of(conn: AsyncConnection, run_id: str) -> list[Event]:
    """Every event of ``run_id`` in seq order.

    Raises:
        UnknownEvent: a stored event is not known to this version.
    """
    rows = await conn.execute(
        select(backfill_events.c.type, backfill_events.c.data, backfill_events.c.at)
        .where(backfill_events.c.run_id == run_id)
        .order_by(backfill_events.c.seq)
    )
    return [from_record(t, json.loads(d), at) for t, d, at in rows]


async def replay(conn: AsyncConnection, run_id: str) -> Run:
    """The projection of ``run_id`` rebuilt from its events alone."""
    return project(await events_of(conn, run_id))


async def all_ids(conn: AsyncConnection) -> list[str]:
    """Every run id, oldest first."""
    rows = await conn.execute(select(backfill_runs.c.id).order_by(backfill_runs.c.created_at))
    return [r for (r,) in rows]


@dataclass(frozen=True)
class Due:
    """Runs a tick should look at, in this order: ``in_flight`` ids (they hold a
    ``max_in_flight`` slot), then ``resuming`` ids (their retry back-off is over)
    and ``pending`` ids, each of which must take a free slot before it goes on."""

    in_flight: list[str]
    resuming: list[str]
    pending: list[str]


HOLDS_SLOT_SQL = f"{IN_FLIGHT_SQL} AND (step != '{Step.BACKOFF}' OR timed_out)"
""":attr:`retro.machine.Run.holds_slot` as a condition on ``backfill_runs``; it contains
``IN_FLIGHT_SQL`` literally, so the partial index ``ix_backfill_runs_in_flight``
serves it."""


async def due(
    conn: AsyncConnection, *, now: datetime, max_in_flight: int, policy: Policy | None = None
) -> Due:
    """Runs a tick should look at, within the ``max_in_flight`` cap (aware UTC ``now``).

    Every run that holds a slot (:attr:`Run.holds_slot`) is due. The free slots
    (``max_in_flight`` less the holders) are offered by :func:`starters`: first to
    runs whose back-off is over, then to pending runs. ``next_check_at`` is a
    deadline only for a back-off: elsewhere it is when the run last changed, and a
    wall clock that went back since must not hold the run until the clock catches
    up (issue 9). The holders are bounded by the cap and the pending query reads
    at most the free slots by index, so the cost does not grow with the pending
    backlog; the back-off query reads every run in back-off (id, attempt, time).
    """
    holders = (
        await conn.execute(
            select(backfill_runs.c.id)
            .where(text(HOLDS_SLOT_SQL))  # contains IN_FLIGHT_SQL: ix_backfill_runs_in_flight
            .order_by(backfill_runs.c.next_check_at)
        )
    ).all()
    resuming, pending_ = await _starters(
        conn, now=now, limit=max_in_flight - len(holders), policy=policy or Policy()
    )
    return Due(in_flight=[r for (r,) in holders], resuming=resuming, pending=pending_)


async def next_backoff_end(conn: AsyncConnection, *, now: datetime) -> datetime | None:
    """The earliest end (``not_before``, aware UTC) of a retry back-off still running
    at ``now``, or ``None`` when none is: when the daemon must look again at the
    latest (one query on the in-flight partial index). A back-off already over is
    not one: its run waits for a free slot, and the tick that frees a slot offers
    it at once (its refill passes), so waking for it would only spin."""
    value: datetime | None = await conn.scalar(
        select(func.min(backfill_runs.c.next_check_at)).where(
            text(IN_FLIGHT_SQL),
            backfill_runs.c.step == str(Step.BACKOFF),
            backfill_runs.c.next_check_at > now,
        )
    )
    return value


async def starters(
    conn: AsyncConnection, *, now: datetime, limit: int, policy: Policy | None = None
) -> list[str]:
    """Up to ``limit`` run ids that need a free slot to go on, in the order they
    get one: runs whose retry back-off is over at ``now`` (aware UTC; under
    ``policy``, default :class:`Policy`), earliest ``not_before`` first, then
    pending runs, oldest first.

    A back-off that is over goes before every pending run: its run started
    before them (pending runs start oldest first), has spent host work already
    and is one retry from finishing its phase, so it is served first and its wait
    for a slot stays bounded however long the backlog; pending-first would leave
    it until the whole backlog had started. The caller still takes each slot
    under :func:`slot_free`.
    """
    resuming, pending_ = await _starters(conn, now=now, limit=limit, policy=policy or Policy())
    return resuming + pending_


async def _starters(
    conn: AsyncConnection, *, now: datetime, limit: int, policy: Policy
) -> tuple[list[str], list[str]]:
    if limit <= 0:
        return [], []
    rows = await conn.execute(
        select(backfill_runs.c.id, backfill_runs.c.attempt, backfill_runs.c.next_check_at)
        .where(
            text(IN_FLIGHT_SQL),
            backfill_runs.c.step == str(Step.BACKOFF),
            backfill_runs.c.timed_out.is_(False),  # a timed-out back-off holds its slot
        )
        .order_by(backfill_runs.c.next_check_at, backfill_runs.c.id)
    )
    resuming = [
        run_id
        for run_id, attempt, next_check in rows
        if backoff_over(next_check, attempt, now, policy)
    ][:limit]
    return resuming, await pending(conn, limit=limit - len(resuming))


async def pending(conn: AsyncConnection, *, limit: int) -> list[str]:
    """Up to ``limit`` pending run ids, oldest first (by index): whatever the wall
    clock says now, as a pending run waits for nothing but a slot."""
    if limit <= 0:
        return []
    rows = await conn.execute(
        select(backfill_runs.c.id)
        .where(backfill_runs.c.state == str(State.PENDING))
        .order_by(backfill_runs.c.next_check_at, backfill_runs.c.id)
        .limit(limit)
    )
    return [r for (r,) in rows]


async def count_in_flight(conn: AsyncConnection) -> int:
    """Runs between pending and done (analyzing, predicting, settling), in back-off
    or not."""
    value = await conn.scalar(
        select(func.count()).where(backfill_runs.c.state.in_([str(s) for s in IN_FLIGHT]))
    )
    return int(value or 0)


async def count_holding(conn: AsyncConnection) -> int:
    """Runs that hold a ``max_in_flight`` slot (:attr:`Run.holds_slot`)."""
    value = await conn.scalar(
        select(func.count()).select_from(backfill_runs).where(text(HOLDS_SLOT_SQL))
    )
    return int(value or 0)


async def slot_free(conn: AsyncConnection, max_in_flight: int) -> bool:
    """Whether a run may take a slot under ``max_in_flight`` (a pending run before
    its first event, a run whose back-off is over before its retry); on PostgreSQL
    rival daemons take this decision one at a time (advisory lock held to commit).

    The count runs after the lock, so it sees every slot a rival took and
    committed before; a run entering back-off needs no lock to release its slot,
    as a rival that misses the release only waits a tick longer.
    """
    await serialize_starts(conn)
    return await count_holding(conn) < max_in_flight


async def serialize_starts(conn: AsyncConnection) -> None:
    """On PostgreSQL, take a transaction-scoped advisory lock so rival daemons
    take slots one at a time (keeps ``max_in_flight`` exact)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(7412004)"))


async def counts_by_state(conn: AsyncConnection) -> dict[str, int]:
    """Number of runs in each state (states with none are absent)."""
    rows = await conn.execute(
        select(backfill_runs.c.state, func.count()).group_by(backfill_runs.c.state)
    )
    return {state: int(n) for state, n in rows}


async def list_runs(
    conn: AsyncConnection, *, states: Sequence[State] | None = None, limit: int = 1000
) -> list[Run]:
    """Runs (optionally only in ``states``), most recently updated first."""
    query = select(backfill_runs).order_by(backfill_runs.c.updated_at.desc()).limit(limit)
    if states is not None:
        query = query.where(backfill_runs.c.state.in_([str(s) for s in states]))
    return [run_from_row(r) for r in (await conn.execute(query)).mappings()]


async def idle(conn: AsyncConnection, *, ignore: Collection[str] = ()) -> bool:
    """True when no run is left that is not terminal, apart from the ``ignore`` ids."""
    query = select(func.count()).where(backfill_runs.c.state.not_in([str(s) for s in TERMINAL]))
    if ignore:
        query = query.where(backfill_runs.c.id.not_in(sorted(ignore)))
    return not await conn.scalar(query)


def blocking_run_clause(cooldown_start: datetime, *, reprocess: Sequence[str] = ()) -> Any:
    """SQL condition on ``backfill_runs`` for a run that keeps its match from being
    seeded again: still live, or ended after ``cooldown_start`` (DESIGN §3 cooldown).

    ``reprocess`` names terminal states whose runs do not hold a match in cooldown
    (``retro start --reprocess failed``); ``"all"`` lifts the cooldown entirely.
    """
    live = backfill_runs.c.finished_at.is_(None)
    if "all" in reprocess:
        return live
    cooling = backfill_runs.c.finished_at > cooldown_start
    if reprocess:
        cooling = and_(cooling, backfill_runs.c.state.not_in(list(reprocess)))
    return or_(live, cooling)


async def rearm(conn: AsyncConnection, run: Run, *, now: datetime) -> Run:
    """Append ``RunRearmed`` to a failed run (operator retry).

    Raises:
        IllegalTransition: the run is not ``failed``.
        ConcurrencyError: a rival wrote first.
        LiveRunExists: the match has another live run.
        AppendRejected: the database refused the event for another reason.
    """
    return await append(conn, run, [RunRearmed(at=now)])


@dataclass(frozen=True)
class Audit:
    """Replay of every run: events read, runs checked, runs whose projection drifted,
    and runs whose history cannot be replayed (``illegal``: run id -> why, one line:
    an event impossible at that point, or an event type this version does not know).
    """

    events: int
    runs: int
    drifted: list[str]
    illegal: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No run drifted and every history replays."""
        return not self.drifted and not self.illegal


async def audit(conn: AsyncConnection) -> Audit:
    """Rebuild every run from its events alone and compare with the stored projection.

    A history that cannot be replayed (:class:`~retro.machine.IllegalTransition`,
    :class:`~retro.events.UnknownEvent`) is reported for its run, not raised.
    """
    drifted: list[str] = []
    illegal: dict[str, str] = {}
    total = 0
    ids = await all_ids(conn)
    for run_id in ids:
        rows = await event_rows(conn, run_id)
        total += len(rows)
        try:
            events = [from_record(r.type, r.data, r.at) for r in rows]
            replayed = project(events)
        except (IllegalTransition, UnknownEvent) as exc:
            illegal[run_id] = escape(str(exc))
            continue
        if await get(conn, run_id) != replayed:
            drifted.append(run_id)
    return Audit(events=total, runs=len(ids), drifted=drifted, illegal=illegal)


# --- read helpers for the operator commands (status, history, cancel) ---------------


@dataclass(frozen=True)
class EventRow:
    """One stored event as written: ``seq`` (1-based), ``type``, ``data`` (the JSON
    object stored, datetimes as ISO-8601 strings) and ``at`` (aware UTC)."""

    seq: int
    type: str
    data: dict[str, Any]
    at: datetime


async def event_rows(conn: AsyncConnection, run_id: str) -> list[EventRow]:
    """Every stored event of ``run_id`` in seq order, as stored (no decoding into
    :class:`Event`, so a history shows even events this version does not know)."""
    rows = await conn.execute(
        select(
            backfill_events.c.seq,
            backfill_events.c.type,
            backfill_events.c.data,
            backfill_events.c.at,
        )
        .where(backfill_events.c.run_id == run_id)
        .order_by(backfill_events.c.seq)
    )
    return [EventRow(seq, type_, json.loads(data), at) for seq, type_, data, at in rows]


async def runs_of_match(conn: AsyncConnection, match_id: str) -> list[Run]:
    """Every run of ``match_id``, newest (by ``created_at``) first."""
    rows = await conn.execute(
        select(backfill_runs)
        .where(backfill_runs.c.match_id == match_id)
        .order_by(backfill_runs.c.created_at.desc(), backfill_runs.c.id)
    )
    return [run_from_row(r) for r in rows.mappings()]


@dataclass(frozen=True)
class Handoffs:
    """Hand-off events (:data:`HANDOFF_TYPES`) at or after ``since``: how many, and
    the instant of the oldest event of any type in that window (``None`` if none)."""

    count: int
    oldest_event_at: datetime | None


async def handoffs_since(conn: AsyncConnection, since: datetime) -> Handoffs:
    """Count hand-off events with ``at >= since`` (aware UTC)."""
    count = await conn.scalar(
        select(func.count()).where(
            backfill_events.c.at >= since, backfill_events.c.type.in_(HANDOFF_TYPES)
        )
    )
    oldest = await conn.scalar(  # min() keeps the column's type: aware UTC
        select(func.min(backfill_events.c.at)).where(backfill_events.c.at >= since)
    )
    return Handoffs(count=int(count or 0), oldest_event_at=oldest)


async def phases_left(conn: AsyncConnection, per_state: Mapping[str, int]) -> int:
    """Hand-offs still to come for the live runs: ``per_state[state]`` for each live
    run (3 for a pending or analyzing run, 2 for a predicting one, 1 for a settling
    one: :data:`retro.progress.HANDOFFS_LEFT`), 0 once its settlement finished."""
    rows = await conn.execute(
        select(backfill_runs.c.state, backfill_runs.c.step, func.count())
        .where(backfill_runs.c.state.not_in([str(s) for s in TERMINAL]))
        .group_by(backfill_runs.c.state, backfill_runs.c.step)
    )
    total = 0
    for state, step, n in rows:
        per_run = per_state.get(state, 0)
        if state == "settling" and step == str(Step.FINISHED):
            per_run = 0
        total += per_run * int(n)
    return total
