"""How far the runs have come and when they should end: percent done and an ETA
from the recent hand-off rate (``retro status``), for every run or for one
backfill's runs (:func:`summaries`: ``retro backfills``, ``retro status``, the board).

A backfill's progress is its finished runs (done, failed, cancelled) out of the
runs it seeded, 100 % exactly when none of its runs is live; its ETA is this
module's rule applied to its own runs: the hand-off rate of its runs, the
hand-offs its live runs still need.

A *hand-off* is an event that finishes a phase and passes the match on to the next
stage (:data:`retro.events.HANDOFF_TYPES`: ``AnalysisCompleted``/``Skipped``,
``PredictionsCompleted``, ``SettlementCompleted``/``Skipped``). A run that ends
``done`` has exactly three. The ETA is::

    rate = hand-offs in the window / measured_over          (per minute)
    ETA  = hand-offs left / rate

where the window is the last ``window`` seconds (default 600), ``measured_over``
is that window shortened to the age of the oldest event of any kind inside it
(a daemon that started 2 minutes ago is measured over 2 minutes, not 10), but
never below :data:`MIN_SPAN` seconds, and *hand-offs left* counts 3 for each
pending or analyzing run, 2 for each predicting run and 1 for each settling run.
Without a hand-off in the window the rate is unknown and so is the ETA.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from retro.backfill import Backfill, BackfillState, Tally, percent_finished
from retro.machine import PHASE_OF, State
from retro.stages import STAGES
from retro.store import backfills, runs
from retro.store.runs import Handoffs

DEFAULT_WINDOW = 600.0
"""Seconds of recent history the hand-off rate is measured over."""
HANDOFFS_LEFT: dict[str, int] = {
    str(State.PENDING): len(STAGES),
    **{str(state): STAGES[phase].handoffs_left for state, phase in PHASE_OF.items()},
}
"""Hand-offs a live run still needs, by state: every stage for a pending run, the
stage it is in and every later one otherwise (from :data:`retro.stages.STAGES`)."""
MIN_SPAN = 60.0
"""Seconds: the shortest span a rate is measured over (one burst is not a rate)."""


@dataclass(frozen=True)
class Progress:
    """Where the backfill stands and when it should end.

    Attributes:
        total: every run stored (any state).
        done, failed, cancelled, live: runs in those states; ``live`` is pending,
            analyzing, predicting and settling together.
        percent_done: ``100 * done / total`` (0.0 without runs); failed and
            cancelled runs count in ``total`` but not as done.
        window: seconds of history asked for.
        measured_over: seconds the rate was measured over (see the module doc).
        handoffs: hand-off events inside the window.
        handoffs_left: hand-offs the live runs still need.
        rate: hand-offs per minute, ``None`` without a hand-off in the window.
        eta: seconds until the live runs are done at ``rate``; ``0.0`` when nothing
            is left, ``None`` when unknown (no recent rate).
    """

    total: int
    done: int
    failed: int
    cancelled: int
    live: int
    percent_done: float
    window: float
    measured_over: float
    handoffs: int
    handoffs_left: int
    rate: float | None
    eta: float | None

    @property
    def finished(self) -> int:
        """Runs that ended: done, failed or cancelled."""
        return self.done + self.failed + self.cancelled

    @property
    def percent_finished(self) -> float:
        """``100 * finished / total``, 100.0 exactly when no run is live
        (:func:`retro.backfill.percent_finished`): a backfill's progress."""
        return percent_finished(self.finished, self.total)


async def measure(
    conn: AsyncConnection,
    *,
    counts: Mapping[str, int],
    now: datetime,
    window: float,
    backfill_id: str | None = None,
) -> Progress:
    """The :class:`Progress` at ``now`` (aware UTC) from ``counts`` (runs by state)
    and the events of the last ``window`` seconds; with ``backfill_id``, of that
    backfill's runs alone (``counts`` must then be theirs): the hand-off rate of
    its runs, the hand-offs its live runs still need."""
    recent = await runs.handoffs_since(
        conn, now - timedelta(seconds=window), backfill_id=backfill_id
    )
    left = await runs.phases_left(conn, HANDOFFS_LEFT, backfill_id=backfill_id)
    return estimate(counts, recent, left, now=now, window=window)


def estimate(
    counts: Mapping[str, int], recent: Handoffs, left: int, *, now: datetime, window: float
) -> Progress:
    """The :class:`Progress` from ``counts`` (runs by state), the ``recent`` hand-offs
    (those of the last ``window`` seconds before ``now``, aware UTC) and the
    hand-offs ``left`` (the rule: this module's doc). Pure."""
    total = sum(counts.values())
    done, failed, cancelled = (counts.get(s, 0) for s in ("done", "failed", "cancelled"))
    span = window
    if recent.oldest_event_at is not None:
        span = min(window, (now - recent.oldest_event_at).total_seconds())
    span = max(span, min(MIN_SPAN, window))
    rate = recent.count / span * 60 if recent.count else None
    if left == 0:
        eta: float | None = 0.0
    elif rate:
        eta = left / rate * 60
    else:
        eta = None
    return Progress(
        total=total,
        done=done,
        failed=failed,
        cancelled=cancelled,
        live=total - done - failed - cancelled,
        percent_done=100.0 * done / total if total else 0.0,
        window=window,
        measured_over=span,
        handoffs=recent.count,
        handoffs_left=left,
        rate=rate,
        eta=eta,
    )


@dataclass(frozen=True)
class BackfillSummary:
    """One backfill as ``retro backfills``, ``retro status`` and the board show it.

    Attributes:
        backfill: its ``backfills`` row.
        tally: its runs by state.
        progress: its progress and ETA, from its own runs alone
            (:meth:`Progress.percent_finished` is the backfill's progress: finished
            runs out of seeded runs).
    """

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
    live_only: bool = False,
    limit: int | None = None,
    backfill_id: str | None = None,
) -> list[BackfillSummary]:
    """Every backfill (the ``limit`` newest; only those with a live run with
    ``live_only``; only ``backfill_id`` with it) with its tally and progress at
    ``now`` (aware UTC), newest first.

    Four queries whatever the number of backfills: the rows, the runs by backfill
    and state, the hand-offs of the last ``window`` seconds by backfill, and the
    hand-offs left by backfill (:mod:`retro.store.runs`).
    """
    tallied = await backfills.tallies(conn, backfill_id=backfill_id)
    if backfill_id is not None:
        one = await backfills.get(conn, backfill_id)
        rows = [] if one is None else [one]
    elif live_only:
        live = {owner for owner, tally in tallied.items() if tally.live}
        rows = [b for b in await backfills.all_backfills(conn) if b.id in live]
    else:
        rows = await backfills.all_backfills(conn, limit=limit)
    if not rows:
        return []
    since = now - timedelta(seconds=window)
    recent = await runs.handoffs_by_backfill(conn, since, backfill_id=backfill_id)
    left = await runs.phases_left_by_backfill(conn, HANDOFFS_LEFT, backfill_id=backfill_id)
    none = runs.Handoffs(count=0, oldest_event_at=None)
    found = []
    for row in rows:
        tally = tallied.get(row.id, Tally())
        progress = estimate(
            tally.by_state, recent.get(row.id, none), left.get(row.id, 0), now=now, window=window
        )
        found.append(BackfillSummary(row, tally, progress))
    return found


def describe_eta(progress: Progress) -> str:
    """One line: ``ETA ~3 min at 12.0 hand-offs/min over the last 10 min (36 left)``,
    ``ETA unknown: no hand-off in the last 10 min``, or ``nothing left to do``."""
    if progress.eta == 0.0:
        return "ETA: nothing left to do"
    over = _duration(progress.measured_over)
    if progress.eta is None or progress.rate is None:
        return (
            f"ETA unknown: no hand-off in the last {_duration(progress.window)} "
            f"({progress.handoffs_left} hand-offs left)"
        )
    return (
        f"ETA ~{_duration(progress.eta)} at {progress.rate:.1f} hand-offs/min over the last "
        f"{over} ({progress.handoffs_left} hand-offs left; a hand-off is a phase finished, "
        "3 per run)"
    )


def short_eta(progress: Progress) -> str:
    """``ETA ~3 min``, ``ETA unknown`` or ``nothing left`` (for the watch view's bar)."""
    if progress.eta == 0.0:
        return "nothing left"
    if progress.eta is None:
        return "ETA unknown"
    return f"ETA ~{_duration(progress.eta)}"


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min``, ``2 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
