"""Per-backfill progress for the board until the backfill read model lands on main
(``retro.progress.summaries`` with ``retro.backfill.Tally``, issue 11 point 2).

The shapes and the signature are that read model's, so the board swaps to it by one
import line in :mod:`retro.board.queries` (then this module goes):

    from retro.progress import BackfillSummary, summaries

The rule is :mod:`retro.progress`'s, per backfill: progress is finished runs (done,
failed, cancelled) out of seeded runs; the rate is its runs' hand-offs in the last
``window`` seconds over the span since its oldest event in it (at least
``MIN_SPAN``); the ETA is its hand-offs left at that rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from retro.backfill import Backfill, BackfillState
from retro.events import HANDOFF_TYPES
from retro.machine import LIVE, TERMINAL, State, Step
from retro.progress import DEFAULT_WINDOW, HANDOFFS_LEFT, MIN_SPAN, Progress
from retro.store import backfills
from retro.store.schema import backfill_events, backfill_runs


@dataclass(frozen=True)
class Tally:
    """A backfill's runs by state (``by_state``: run state as text -> runs)."""

    by_state: Mapping[str, int] = field(default_factory=dict)

    def of(self, state: str) -> int:
        """Runs in ``state`` (0 if none)."""
        return self.by_state.get(state, 0)

    @property
    def seeded(self) -> int:
        """Every run the backfill seeded."""
        return sum(self.by_state.values())

    @property
    def done(self) -> int:
        return self.of(State.DONE)

    @property
    def failed(self) -> int:
        return self.of(State.FAILED)

    @property
    def cancelled(self) -> int:
        return self.of(State.CANCELLED)

    @property
    def live(self) -> int:
        """Runs not ended: pending, analyzing, predicting or settling."""
        return sum(self.of(state) for state in LIVE)

    @property
    def finished(self) -> int:
        """Runs ended: done, failed or cancelled."""
        return sum(self.of(state) for state in TERMINAL)


@dataclass(frozen=True)
class BackfillSummary:
    """One backfill with its runs by state and its progress (rate and ETA from its own
    runs alone)."""

    backfill: Backfill
    tally: Tally
    progress: Progress

    @property
    def state(self) -> BackfillState:
        """running, paused, finished or cancelled (:meth:`Backfill.state`)."""
        return self.backfill.state(live=self.tally.live)


async def summaries(
    conn: AsyncConnection,
    *,
    now: datetime,
    window: float = DEFAULT_WINDOW,
    backfill_id: str | None = None,
) -> list[BackfillSummary]:
    """Every backfill (only ``backfill_id`` with it), newest first, with its tally and
    progress at ``now`` (aware UTC): four queries whatever the number of backfills."""
    if backfill_id is None:
        rows = await backfills.all_backfills(conn)
    else:
        one = await backfills.get(conn, backfill_id)
        rows = [] if one is None else [one]
    if not rows:
        return []
    counts, recent, left = await _by_backfill(conn, now=now, window=window, backfill_id=backfill_id)
    return [
        _summary(row, counts.get(row.id, {}), recent.get(row.id), left.get(row.id, 0), now, window)
        for row in rows
    ]


def _summary(
    backfill: Backfill,
    counts: Mapping[str, int],
    recent: tuple[int, datetime | None] | None,
    left: int,
    now: datetime,
    window: float,
) -> BackfillSummary:
    tally = Tally(dict(counts))
    handoffs, oldest = recent or (0, None)
    span = window if oldest is None else min(window, (now - oldest).total_seconds())
    span = max(span, min(MIN_SPAN, window))
    rate = handoffs / span * 60 if handoffs else None
    eta = 0.0 if left == 0 else (left / rate * 60 if rate else None)
    total = tally.seeded
    progress = Progress(
        total=total,
        done=tally.done,
        failed=tally.failed,
        cancelled=tally.cancelled,
        live=tally.live,
        percent_done=100.0 * tally.done / total if total else 0.0,
        window=window,
        measured_over=span,
        handoffs=handoffs,
        handoffs_left=left,
        rate=rate,
        eta=eta,
    )
    return BackfillSummary(backfill, tally, progress)


async def _by_backfill(
    conn: AsyncConnection, *, now: datetime, window: float, backfill_id: str | None
) -> tuple[dict[str, dict[str, int]], dict[str, tuple[int, datetime | None]], dict[str, int]]:
    """Runs by state, (hand-offs, oldest event of any type) in the last ``window``
    seconds, and hand-offs left, each by backfill id (``backfill_id``: that one only)."""
    runs = backfill_runs.c
    scope = [] if backfill_id is None else [runs.backfill_id == backfill_id]
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for owner, state, n in await conn.execute(
        select(runs.backfill_id, runs.state, func.count())
        .where(*scope)
        .group_by(runs.backfill_id, runs.state)
    ):
        counts[owner][state] = int(n)
    events = backfill_events.c
    is_handoff = case((events.type.in_(HANDOFF_TYPES), 1), else_=0)
    recent: dict[str, tuple[int, datetime | None]] = {}
    for owner, n, oldest in await conn.execute(
        select(runs.backfill_id, func.sum(is_handoff), func.min(events.at))
        .select_from(backfill_events.join(backfill_runs, events.run_id == runs.id))
        .where(events.at >= now - timedelta(seconds=window), *scope)
        .group_by(runs.backfill_id)
    ):
        recent[owner] = (int(n or 0), oldest)
    left: dict[str, int] = defaultdict(int)
    for owner, state, step, n in await conn.execute(
        select(runs.backfill_id, runs.state, runs.step, func.count())
        .where(runs.state.not_in([str(s) for s in TERMINAL]), *scope)
        .group_by(runs.backfill_id, runs.state, runs.step)
    ):
        finished = state == str(State.SETTLING) and step == str(Step.FINISHED)
        left[owner] += 0 if finished else HANDOFFS_LEFT.get(state, 0) * int(n)
    return counts, recent, left
