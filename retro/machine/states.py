"""Where a run stands and where it may go (DESIGN §3): states, steps, the
transition table and its lookups, and :class:`Run`, the projection of one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from retro.backfill import LEGACY_BACKFILL_ID
from retro.events import Phase


class State(StrEnum):
    """Where a run stands. ``done``, ``failed`` and ``cancelled`` are terminal."""

    PENDING = "pending"
    ANALYZING = "analyzing"
    PREDICTING = "predicting"
    SETTLING = "settling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Step(StrEnum):
    """Where a run stands inside its current phase."""

    ENTER = "enter"  # just entered: check the data, then request a job
    JOB = "job"  # a job is outstanding (``job_id``)
    FAILED = "failed"  # the last attempt failed: retry or give up
    BACKOFF = "backoff"  # a retry is scheduled for ``not_before``
    FINISHED = "finished"  # the phase is finished (settlement: complete the run)


TERMINAL = frozenset({State.DONE, State.FAILED, State.CANCELLED})
IN_FLIGHT = frozenset({State.ANALYZING, State.PREDICTING, State.SETTLING})
PHASE_OF: Mapping[State, Phase] = {
    State.ANALYZING: Phase.ANALYSIS,
    State.PREDICTING: Phase.PREDICTIONS,
    State.SETTLING: Phase.SETTLEMENT,
}
SETTLED_STATUSES = frozenset({"finished", "awarded"})
"""Match statuses that allow settlement (``awarded`` is the provider's equivalent)."""
PLAYABLE_STATUSES = frozenset({"scheduled", "live"}) | SETTLED_STATUSES
CALLED_OFF_STATUSES = frozenset({"postponed", "cancelled"})
NEW = "new"  # pseudo-state before RunSeeded; never stored

LIVE = (State.PENDING, State.ANALYZING, State.PREDICTING, State.SETTLING)
"""States a run can still leave: pending and in flight (not terminal)."""
_PHASES = [State.ANALYZING, State.PREDICTING, State.SETTLING]
ANY_STEP = sorted(Step)
OPEN = [Step.ENTER, Step.JOB, Step.FAILED, Step.BACKOFF]
"""Steps in which the data can finish a phase (``decide`` checks the data before the step)."""
TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "RunSeeded", "source": NEW, "dest": State.PENDING, "steps": ANY_STEP},
    {
        "trigger": "AnalysisRequested",
        "source": State.PENDING,
        "dest": State.ANALYZING,
        "steps": [Step.ENTER],
    },
    {
        "trigger": "AnalysisRequested",
        "source": State.ANALYZING,
        "dest": None,
        "steps": [Step.BACKOFF],
    },
    {
        "trigger": "AnalysisSkipped",
        "source": State.PENDING,
        "dest": State.PREDICTING,
        "steps": [Step.ENTER],
    },
    {
        "trigger": "AnalysisCompleted",
        "source": State.ANALYZING,
        "dest": State.PREDICTING,
        "steps": OPEN,
    },
    {
        "trigger": "PredictionsRequested",
        "source": State.PREDICTING,
        "dest": None,
        "steps": [Step.ENTER, Step.BACKOFF],
    },
    {"trigger": "PredictionsShort", "source": State.PREDICTING, "dest": None, "steps": [Step.JOB]},
    {
        "trigger": "PredictionsCompleted",
        "source": State.PREDICTING,
        "dest": State.SETTLING,
        "steps": OPEN,
    },
    {
        "trigger": "SettlementRequested",
        "source": State.SETTLING,
        "dest": None,
        "steps": [Step.ENTER, Step.BACKOFF],
    },
    {"trigger": "SettlementSkipped", "source": State.SETTLING, "dest": None, "steps": OPEN},
    {"trigger": "SettlementCompleted", "source": State.SETTLING, "dest": None, "steps": OPEN},
    {"trigger": "JobFailed", "source": _PHASES, "dest": None, "steps": [Step.JOB]},
    {"trigger": "PhaseTimedOut", "source": _PHASES, "dest": None, "steps": [Step.JOB]},
    {"trigger": "RetryScheduled", "source": _PHASES, "dest": None, "steps": [Step.FAILED]},
    {"trigger": "JobReenqueued", "source": _PHASES, "dest": None, "steps": [Step.JOB]},
    {
        "trigger": "RunCompleted",
        "source": State.SETTLING,
        "dest": State.DONE,
        "steps": [Step.FINISHED],
    },
    {"trigger": "RunFailed", "source": list(LIVE), "dest": State.FAILED, "steps": ANY_STEP},
    {"trigger": "RunCancelled", "source": list(LIVE), "dest": State.CANCELLED, "steps": ANY_STEP},
    {"trigger": "RunRearmed", "source": State.FAILED, "dest": State.PENDING, "steps": ANY_STEP},
]
"""THE transition table, as data: each event type (``trigger``) is legal from each
``source`` state in the listed ``steps`` only, and leads to ``dest`` (``None``: the
state stays). The pairs are the ones :func:`decide` can produce (``RunFailed`` and
``RunCancelled`` also come from the operator and the shell, in any step). Per-event
rules on top (phase, job id, attempt) live in the event's mutator in :func:`evolve`.

A plain table rather than a ``transitions`` Machine: legality is a (state, step)
pair, and a Machine keys on one state string, so it would need a synthetic state
per pair (whose names would leak into the diagrams in the docs) and still a second
lookup for the step; a dict lookup is all it was used for (no callbacks)."""


def _sources(row: Mapping[str, object]) -> list[str]:
    source = row["source"]
    return [str(s) for s in source] if isinstance(source, list) else [str(source)]


def _steps(row: Mapping[str, object]) -> frozenset[Step]:
    steps = row["steps"]
    assert isinstance(steps, list)
    return frozenset(Step(s) for s in steps)


_LEGAL: dict[tuple[str, str], tuple[State | None, frozenset[Step]]] = {
    (str(row["trigger"]), source): (
        None if row["dest"] is None else State(str(row["dest"])),
        _steps(row),
    )
    for row in TRANSITIONS
    for source in _sources(row)
}


class IllegalTransition(ValueError):
    """An event cannot happen in the run's current state (a corrupt or foreign history)."""


def target(state: str, trigger: str, step: Step | None = None) -> State:
    """The state that ``trigger`` leads to from ``state`` (in ``step``, if given).

    Raises:
        IllegalTransition: the transition table has no such transition.
    """
    found = _LEGAL.get((trigger, str(state)))
    if found is None:
        raise IllegalTransition(f"{trigger} is not allowed in state {state}")
    dest, steps = found
    if step is not None and step not in steps:
        raise IllegalTransition(f"{trigger} is not allowed in state {state} at step {step}")
    return State(state) if dest is None else dest


def legal_triggers(state: State) -> set[str]:
    """Event types that may happen in ``state`` (in some step)."""
    return {trigger for trigger, source in _LEGAL if source == str(state)}


def legal_steps(state: State, trigger: str) -> frozenset[Step]:
    """The steps of ``state`` in which ``trigger`` may happen (empty: never)."""
    found = _LEGAL.get((trigger, str(state)))
    return frozenset() if found is None else found[1]


@dataclass(frozen=True)
class Run:
    """The projection of one run: everything the decision needs, rebuilt from events.

    Instants are aware UTC. ``attempt`` counts the jobs requested in the current
    phase; ``version`` is the seq of the last applied event; ``reenqueues`` counts
    the re-adds of a lost job in a row (reset by the next request).
    """

    id: str
    match_id: str
    state: State
    step: Step
    attempt: int
    job_id: str | None
    requested_at: datetime | None
    adopted_created_at: datetime | None
    judged_created_at: datetime | None
    not_before: datetime | None
    next_check_at: datetime | None
    gaps: tuple[str, ...]
    found: int | None
    expected: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    version: int
    reenqueues: int = 0
    """Lost jobs re-enqueued since the last ``…Requested`` (``JobReenqueued`` events)."""
    timed_out: bool = False
    """The last verdict of this phase was a timeout (``PhaseTimedOut``) and its job may
    still be running in BullMQ, so the run keeps its ``max_in_flight`` slot through
    its back-off. Cleared by the next ``…Requested`` (which adopts that job if it is
    still there), when the run changes state (a new phase, or an end) and when its
    settlement phase finishes."""
    backfill_id: str = LEGACY_BACKFILL_ID
    """The backfill that seeded the run (``RunSeeded.backfill_id``)."""

    @property
    def phase(self) -> Phase | None:
        """The phase the run is in, or ``None`` (pending or terminal)."""
        return PHASE_OF.get(self.state)

    @property
    def holds_slot(self) -> bool:
        """Whether the run holds a ``max_in_flight`` slot: it is in flight (analyzing,
        predicting, settling), not entering a phase and not sleeping out a retry
        back-off, unless that back-off follows a timeout (``timed_out``: BullMQ may
        still run the job judged, which the retry adopts). It then has a job
        requested, queued or active (or possibly active), or is judging one
        (``failed``) or finishing its settlement. A run entering a phase has no job
        yet and holds none: the tick's plan goes on to the request in the same
        step, so it only rests there while its backfill is paused (issue 11), and
        it takes a free slot again, as a start does, before its request. The SQL
        twin is :data:`retro.store.runs.HOLDS_SLOT_SQL`."""
        return (
            self.state in IN_FLIGHT
            and self.step is not Step.ENTER
            and (self.step is not Step.BACKOFF or self.timed_out)
        )
