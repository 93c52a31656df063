"""THE state machine of a backfill run (DESIGN §3): states, transitions, decisions.

Pure: no I/O, no clock reads, no database. ``decide(run, facts, now=…, policy=…)``
returns the next event (or ``None``); ``plan(run, facts, now=…, policy=…)`` holds
every event one reading of the facts allows (the rules of one tick's step);
``evolve(run, event)`` applies one event through its typed mutator;
``project(events)`` folds a whole history. :data:`TRANSITIONS` is the transition
table, as data: which event may happen at which (state, step).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from retro import jobids
from retro.events import (
    REQUESTED,
    AnalysisCompleted,
    AnalysisSkipped,
    Event,
    JobFailed,
    JobReenqueued,
    Phase,
    PhaseTimedOut,
    PredictionsCompleted,
    PredictionsShort,
    Requested,
    RetryScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRearmed,
    RunSeeded,
    SettlementCompleted,
    SettlementSkipped,
)
from retro.stages import JOB_ID_FORMATS, QUEUE_WAIT_BUDGET, STAGES
from retro.text import escape


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

    @property
    def phase(self) -> Phase | None:
        """The phase the run is in, or ``None`` (pending or terminal)."""
        return PHASE_OF.get(self.state)


class JobState(StrEnum):
    """A BullMQ job state, as ``getState`` names it (``unknown``: in no state list)."""

    COMPLETED = "completed"
    FAILED = "failed"
    DELAYED = "delayed"
    PRIORITIZED = "prioritized"
    ACTIVE = "active"
    WAITING = "waiting"
    WAITING_CHILDREN = "waiting-children"
    UNKNOWN = "unknown"


class JobMeaning(StrEnum):
    """What a job state means for the run waiting on it."""

    PROGRESSING = "progressing"  # a worker holds it
    WAITING = "waiting"  # queued for a consumer (or its children, or its delay)
    FINISHED = "finished"  # completed or failed: an outcome to judge
    LOST = "lost"  # BullMQ does not hold it in any state: enqueue it again


MEANING: Mapping[JobState, JobMeaning] = {
    JobState.ACTIVE: JobMeaning.PROGRESSING,
    JobState.WAITING: JobMeaning.WAITING,
    JobState.PRIORITIZED: JobMeaning.WAITING,
    JobState.DELAYED: JobMeaning.WAITING,
    JobState.WAITING_CHILDREN: JobMeaning.WAITING,
    JobState.COMPLETED: JobMeaning.FINISHED,
    JobState.FAILED: JobMeaning.FINISHED,
    JobState.UNKNOWN: JobMeaning.LOST,
}
"""Every :class:`JobState` and its meaning (a test checks that none is missing)."""


class WaitReason(StrEnum):
    """Why a job no worker has taken is still waiting (schedule-to-start)."""

    NO_WORKER = "no-worker"
    PAUSED = "paused"
    CHILDREN = "waiting-children"
    UNKNOWN = "unknown"

    @property
    def text(self) -> str:
        """The reason in words, as ``status`` and the log show it."""
        return _WAIT_TEXT[self]


_WAIT_TEXT = {
    WaitReason.NO_WORKER: "no worker consuming it on this Redis database",
    WaitReason.PAUSED: "queue paused",
    WaitReason.CHILDREN: "waiting for children",
    WaitReason.UNKNOWN: "unknown",
}


@dataclass(frozen=True)
class JobView:
    """What BullMQ says of a job.

    ``created_at``/``processed_at``/``finished_at`` come from the job's
    ``timestamp``/``processedOn``/``finishedOn`` (milliseconds there, aware UTC here).
    ``orphaned``: the state is ``unknown`` but the job's hash is still in Redis
    (BullMQ issue 1644), which makes BullMQ ignore every ``add`` of that id.
    ``unrecognized``: the state string BullMQ gave when retro does not know it
    (``state`` is then ``waiting``). ``active_for`` (start-to-close) and
    ``waiting_for`` (schedule-to-start) are seconds, measured by the shell:
    since a worker took the job, and since it was requested while no worker has.
    """

    state: JobState
    created_at: datetime | None = None
    processed_at: datetime | None = None
    finished_at: datetime | None = None
    failed_reason: str | None = None
    orphaned: bool = False
    """The job's hash exists but its id is in no state list (BullMQ issue 1644)."""
    unrecognized: str | None = None
    """The state string BullMQ gave when retro does not know it (then ``state`` is
    waiting)."""
    unrecoverable: bool = False
    """A failed job whose worker threw BullMQ's ``UnrecoverableError`` (Node or Python):
    retrying it cannot succeed."""
    active_for: float | None = None
    """Seconds since a worker took the job (start-to-close), measured by the shell on
    clocks a jump of retro's wall clock cannot move (:mod:`retro.clock`); ``None``:
    not measured (then :func:`running_for` falls back on the timestamps)."""
    waiting_for: float | None = None
    """Seconds the job has waited for a worker since it was requested
    (schedule-to-start), measured like ``active_for``; ``None``: not measured."""

    @property
    def meaning(self) -> JobMeaning:
        """Whether the job is progressing, waiting, finished or lost; a state string
        retro does not know means waiting (never lost: no re-enqueue loop)."""
        return MEANING.get(self.state, JobMeaning.WAITING)


@dataclass(frozen=True)
class Facts:
    """What the database and the queue show for a run's match, at one instant.

    ``predictions_found`` counts expected models that have a prediction (by
    model, not rows); ``unscored`` counts the match's ``pending`` predictions.
    """

    match_found: bool
    match_status: str | None = None
    home_score: int | None = None
    away_score: int | None = None
    has_analysis: bool = False
    predictions_found: int = 0
    predictions_expected: int = 0
    unscored: int = 0
    job: JobView | None = None
    workers: int | None = None
    """Workers consuming the job's queue (``None``: not looked up)."""
    queue_paused: bool | None = None
    """The job's queue is paused (``None``: not looked up)."""
    has_external_id: bool = True
    """The match's ``external_id`` names something (:func:`has_external_id`): the
    analysis worker can look the match up. ``True`` when not looked up."""


@dataclass(frozen=True)
class Waiting:
    """A job no worker has taken: on ``queue`` for ``seconds`` (schedule-to-start),
    ``reason`` why, against its ``budget`` (seconds)."""

    queue: str
    seconds: float
    reason: WaitReason
    budget: float

    @property
    def over_budget(self) -> bool:
        """The job has waited longer than its schedule-to-start budget."""
        return self.seconds > self.budget

    @property
    def notable(self) -> bool:
        """Worth telling the operator: a known blocker, or over budget."""
        return self.reason is not WaitReason.UNKNOWN or self.over_budget

    @property
    def text(self) -> str:
        """``waiting 12 min on analysis-queue: queue paused`` (seconds under a minute)."""
        span = f"{self.seconds:.0f} s" if self.seconds < 60 else f"{self.seconds // 60:.0f} min"
        return f"waiting {span} on {self.queue}: {self.reason.text}"


def why_waiting(
    job: JobView | None, *, workers: int | None, paused: bool | None
) -> WaitReason | None:
    """Why ``job`` still waits for a consumer, or ``None`` if it is not waiting
    (finished, lost, absent, or held by a worker). ``workers``/``paused`` as in
    :class:`Facts`. An active job on a queue with no worker left waits too: its
    worker died, and only a worker that comes back re-queues it (BullMQ's stalled
    check runs in workers), so it is shown as no worker, not timed out."""
    if job is None:
        return None
    if job.meaning is JobMeaning.PROGRESSING:
        return WaitReason.NO_WORKER if workers == 0 else None
    if job.meaning is not JobMeaning.WAITING:
        return None
    if job.state == JobState.WAITING_CHILDREN:
        return WaitReason.CHILDREN
    if paused:
        return WaitReason.PAUSED
    if workers == 0:
        return WaitReason.NO_WORKER
    return WaitReason.UNKNOWN


@dataclass(frozen=True)
class Policy:
    """Retry and budget rules: seconds throughout; job ids per phase from templates.

    ``job_ids`` maps a phase to a template with ``{matchId}``, e.g.
    ``analyze-retro-{matchId}`` (DESIGN §1); the match id goes in encoded
    (:func:`retro.jobids.encode`: ``%``, ``:`` and control characters as ``%XX``).
    ``budgets`` are start-to-close, ``queue_wait_budgets`` schedule-to-start
    (DESIGN §3); a job over its schedule-to-start budget costs an attempt only with
    ``queue_wait_charged``.
    ``max_reenqueues`` bounds the re-adds of a lost job in a row.
    ``require_external_id``: a match with no ``external_id`` is never sent to the
    analysis worker; its run fails at once (:data:`NO_EXTERNAL_ID`).
    """

    max_attempts: int = 3
    require_external_id: bool = True
    max_reenqueues: int = 3
    queue_wait_charged: bool = False
    queue_wait_budgets: Mapping[Phase, float] = field(
        default_factory=lambda: dict.fromkeys(Phase, QUEUE_WAIT_BUDGET)
    )
    retry_backoff: float = 5.0
    budgets: Mapping[Phase, float] = field(
        default_factory=lambda: {phase: stage.timeout for phase, stage in STAGES.items()}
    )
    job_ids: Mapping[Phase, str] = field(default_factory=lambda: dict(JOB_ID_FORMATS))

    def job_id(self, phase: Phase, match_id: str) -> str:
        """The deterministic job id of ``phase`` for ``match_id`` (encoded:
        ``epl:2024:1`` → ``analyze-retro-epl%3A2024%3A1``)."""
        return jobids.job_id(self.job_ids[phase], match_id)

    def backoff(self, attempt: int) -> timedelta:
        """Delay before attempt ``attempt + 1``: ``retry_backoff · 2^(attempt-1)`` seconds,
        at most :data:`MAX_BACKOFF` (a long chain of attempts must not overflow)."""
        exponent = min(max(attempt - 1, 0), 64)
        return timedelta(seconds=min(self.retry_backoff * 2**exponent, MAX_BACKOFF))


MAX_BACKOFF = 86400.0
"""Longest retry back-off, seconds (a day), however many attempts came before."""

REASON_LIMIT = 500
"""Longest failure reason kept in events and the projection (characters)."""


def clip(reason: str) -> str:
    """``reason`` on one line, at most :data:`REASON_LIMIT` characters: outer blanks
    stripped, line breaks and other control characters escaped visibly (``\\n``)."""
    one_line = escape(reason.strip())
    if len(one_line) <= REASON_LIMIT:
        return one_line
    return one_line[: REASON_LIMIT - 1] + "…"


NO_EXTERNAL_ID = "no external_id"
"""Why a match missing analysis cannot heal under ``require_external_id`` (shown as
``cannot heal: no external_id``)."""


def has_external_id(value: str | None) -> bool:
    """True when a match's ``external_id`` names something: not NULL, not blank."""
    return value is not None and value.strip() != ""


def cannot_heal(*, has_analysis: bool, external_id: bool, policy: Policy) -> str | None:
    """Why a run for a match could never heal, or ``None``: a match missing analysis
    with no ``external_id`` (``external_id``: :func:`has_external_id` of it) while
    ``policy.require_external_id`` is on gives :data:`NO_EXTERNAL_ID`."""
    if policy.require_external_id and not has_analysis and not external_id:
        return NO_EXTERNAL_ID
    return None


def settleable(facts: Facts) -> str | None:
    """``None`` if the match can be settled, else why not (DESIGN §3 guard)."""
    if facts.match_status not in SETTLED_STATUSES:
        return f"match not finished (status {facts.match_status})"
    if facts.home_score is None or facts.away_score is None:
        return f"match {facts.match_status} but its score is not set"
    return None


def phase_done(phase: Phase, facts: Facts) -> bool:
    """True when the database shows ``phase``'s data (DESIGN §3: the data decides)."""
    if phase is Phase.ANALYSIS:
        return facts.has_analysis
    if phase is Phase.PREDICTIONS:
        return facts.predictions_found >= facts.predictions_expected
    return settleable(facts) is None and facts.unscored == 0


def _completed(phase: Phase, facts: Facts, now: datetime) -> Event:
    if phase is Phase.ANALYSIS:
        return AnalysisCompleted(at=now)
    if phase is Phase.PREDICTIONS:
        return PredictionsCompleted(
            at=now, found=facts.predictions_found, expected=facts.predictions_expected
        )
    return SettlementCompleted(at=now)


_MISSING = {
    Phase.ANALYSIS: "no analysis with a favourite",
    Phase.PREDICTIONS: "predictions still missing",
    Phase.SETTLEMENT: "predictions still unscored",
}


def decide(run: Run, facts: Facts, *, now: datetime, policy: Policy) -> Event | None:
    """The next event for ``run`` given ``facts`` at ``now``, or ``None`` to wait.

    Pure. ``now`` is aware UTC. A job in state ``unknown`` is never read as
    success or failure (DESIGN §4): it is lost, and ``JobReenqueued`` asks the
    shell to enqueue it again, at most ``policy.max_reenqueues`` times in a row,
    then the run fails with the reason. With ``policy.require_external_id``, an
    analysis job for a match with no ``external_id`` is never requested: the run
    fails at once (:data:`NO_EXTERNAL_ID`).
    """
    if run.state in TERMINAL:
        return None
    if not facts.match_found:
        return RunFailed(at=now, reason=clip(f"match {run.match_id} no longer exists"))
    if facts.match_status in CALLED_OFF_STATUSES:
        return RunCancelled(at=now, reason=f"match {facts.match_status}")
    if facts.match_status not in PLAYABLE_STATUSES:
        return RunFailed(at=now, reason=clip(f"unknown match status {facts.match_status!r}"))
    if run.state is State.PENDING:
        if facts.has_analysis:
            return AnalysisSkipped(at=now, reason="analysis with a favourite already present")
        return _request(Phase.ANALYSIS, run, 1, now, policy, facts)
    phase = PHASE_OF[run.state]
    if run.step is Step.FINISHED:
        return RunCompleted(at=now)
    if phase is Phase.SETTLEMENT and (why := settleable(facts)) is not None:
        if run.step is Step.JOB and facts.job is not None and facts.job.state == JobState.ACTIVE:
            # let a running settlement finish (or time out) before leaving it
            return _observe_job(run, phase, facts, now, policy)
        return SettlementSkipped(at=now, reason=why)
    if phase_done(phase, facts):
        if _finishing(run, phase, facts, now, policy):
            return None
        return _completed(phase, facts, now)
    if run.step is Step.ENTER:
        return _request(phase, run, 1, now, policy, facts)
    if run.step is Step.BACKOFF:
        if not backoff_over(run.not_before, run.attempt, now, policy):
            return None
        return _request(phase, run, run.attempt + 1, now, policy, facts)
    if run.step is Step.FAILED:
        if run.attempt >= policy.max_attempts:
            return RunFailed(
                at=now,
                reason=clip(f"{phase} failed {run.attempt} times; last: {run.last_error}"),
            )
        return RetryScheduled(at=now, phase=phase, not_before=now + policy.backoff(run.attempt))
    return _observe_job(run, phase, facts, now, policy)


def is_stale(run: Run, job: JobView) -> bool:
    """True when ``job`` finished and is no newer than a job whose outcome this phase
    already judged (and was not adopted by the current attempt): a leftover of an
    earlier attempt, e.g. resurrected by a Redis restore, never this attempt's
    outcome (DESIGN §4.1). Job timestamps are compared with job timestamps only.
    The shell removes it and enqueues anew; it costs no attempt."""
    if job.meaning is not JobMeaning.FINISHED or job.created_at is None:
        return False
    if run.judged_created_at is None or job.created_at == run.adopted_created_at:
        return False
    return job.created_at <= run.judged_created_at


def _lost(run: Run, phase: Phase, job: JobView, now: datetime, policy: Policy) -> Event:
    assert run.job_id is not None
    what = "orphaned job hash (in no state list)" if job.orphaned else "job not in BullMQ"
    if run.reenqueues >= policy.max_reenqueues:
        return RunFailed(
            at=now,
            reason=clip(
                f"{phase} job {run.job_id} lost: still {what} after "
                f"{run.reenqueues} re-enqueues in a row"
            ),
        )
    return JobReenqueued(at=now, phase=phase, job_id=run.job_id, reason=what)


def _observe_job(
    run: Run, phase: Phase, facts: Facts, now: datetime, policy: Policy
) -> Event | None:
    job = facts.job
    if job is None or is_stale(run, job):
        return None  # the shell (re-)enqueues a stale job; never a verdict
    if job.meaning is JobMeaning.LOST:
        return _lost(run, phase, job, now, policy)
    if job.state == JobState.COMPLETED:
        if phase is Phase.PREDICTIONS:
            return PredictionsShort(
                at=now,
                found=facts.predictions_found,
                expected=facts.predictions_expected,
                job_created_at=job.created_at,
            )
        return JobFailed(
            at=now,
            phase=phase,
            reason=f"job {run.job_id} completed but {_MISSING[phase]}",
            job_created_at=job.created_at,
        )
    if job.state == JobState.FAILED and job.unrecoverable:  # no retry can succeed
        return RunFailed(
            at=now,
            reason=clip(
                f"{phase} job {run.job_id} failed with UnrecoverableError: "
                f"{job.failed_reason or 'no reason given'}"
            ),
        )
    if job.state == JobState.FAILED:
        return JobFailed(
            at=now,
            phase=phase,
            reason=clip(job.failed_reason or "no reason given"),
            job_created_at=job.created_at,
        )
    if job.meaning is JobMeaning.WAITING:
        budget = policy.queue_wait_budgets[phase]
        if policy.queue_wait_charged and job.waiting_for is not None and job.waiting_for > budget:
            why = why_waiting(job, workers=facts.workers, paused=facts.queue_paused)
            return JobFailed(
                at=now,
                phase=phase,
                reason=clip(
                    f"no worker took job {run.job_id} within {budget:g} s "
                    f"(schedule-to-start): {why.text if why else 'unknown'}"
                ),
                job_created_at=job.created_at,
            )
        return None
    if job.state == JobState.ACTIVE and facts.workers != 0:
        # With no worker left on the queue the holder died: not a timeout but
        # "no worker consuming <queue>"; BullMQ re-queues it when workers return.
        budget = policy.budgets[phase]
        if running_for(run, job, now) > budget:
            return PhaseTimedOut(at=now, phase=phase, budget=budget, job_created_at=job.created_at)
    return None


def _finishing(run: Run, phase: Phase, facts: Facts, now: datetime, policy: Policy) -> bool:
    """True while the phase's data is in but BullMQ still has its job active under a
    live worker, within its start-to-close budget: the worker committed its data
    and is about to report the job finished. The run leaves the phase once BullMQ
    has the job finished (a tick is woken then), so the next phase's job is never
    outstanding beside this one and a ``max_in_flight`` slot covers one job at a
    time (issue 10). Past the budget, or with no worker left, the data wins."""
    job = facts.job
    if run.step is not Step.JOB or job is None or job.state != JobState.ACTIVE:
        return False
    if facts.workers == 0:
        return False
    return running_for(run, job, now) <= policy.budgets[phase]


def running_for(run: Run, job: JobView, now: datetime) -> float:
    """Seconds ``job`` (active) counts against its start-to-close budget.

    The shell measures it (``job.active_for``) on clocks that a jump of retro's
    wall clock cannot move (:mod:`retro.clock`). Only a caller that measured
    nothing (plain values in tests and tools) gets the fallback: ``now`` less the
    later of ``processedOn`` and the request, a ``processedOn`` ahead of ``now``
    (a worker clock ahead of ours) counting as the request.
    """
    if job.active_for is not None:
        return job.active_for
    assert run.requested_at is not None
    processed = job.processed_at
    if processed is None or processed > now:  # a worker clock ahead of ours
        processed = run.requested_at
    return (now - max(processed, run.requested_at)).total_seconds()


def backoff_over(not_before: datetime | None, attempt: int, now: datetime, policy: Policy) -> bool:
    """True when a retry back-off that ends at ``not_before`` (aware UTC) is over at ``now``.

    It is over when ``not_before`` has come, and also when ``not_before`` lies
    further ahead than the back-off that set it (``policy.backoff(attempt)``) could
    reach: only a wall clock that has since gone back puts it there, and a jump
    back must not stall a run (issue 9). Such a retry comes early; it costs no
    extra attempt.
    """
    if not_before is None or now >= not_before:
        return True
    return not_before - now > policy.backoff(attempt)


def _request(
    phase: Phase, run: Run, attempt: int, now: datetime, policy: Policy, facts: Facts
) -> Requested | RunFailed:
    if phase is Phase.ANALYSIS and cannot_heal(
        has_analysis=facts.has_analysis, external_id=facts.has_external_id, policy=policy
    ):  # the worker could not look the match up: no job, no retry
        return RunFailed(at=now, reason=clip(no_external_id_reason(run.match_id)))
    job_id = policy.job_id(phase, run.match_id)
    if (rule := jobids.refusal(job_id)) is not None:  # never reaches Redis
        reason = f"match id {run.match_id!r} gives job id {job_id!r}: {rule}"
        return RunFailed(at=now, reason=clip(reason))
    return REQUESTED[phase](at=now, job_id=job_id, attempt=attempt)


def no_external_id_reason(match_id: str) -> str:
    """The ``RunFailed`` reason of a match the analysis worker cannot look up."""
    return (
        f"cannot heal: match {match_id} has no external_id, which its analysis worker "
        "needs to look the match up (set require_external_id = false if the host's does not)"
    )


def seed(event: RunSeeded) -> Run:
    """The run that ``event`` creates (version 1, ``pending``)."""
    return Run(
        id=event.run_id,
        match_id=event.match_id,
        state=State.PENDING,
        step=Step.ENTER,
        attempt=0,
        job_id=None,
        requested_at=None,
        adopted_created_at=None,
        judged_created_at=None,
        not_before=None,
        next_check_at=event.at,
        gaps=event.gaps,
        found=event.found,
        expected=event.expected,
        last_error=None,
        created_at=event.at,
        updated_at=event.at,
        finished_at=None,
        version=1,
    )


def evolve(run: Run, event: Event) -> Run:
    """``run`` after ``event`` (one higher version).

    The table (:data:`TRANSITIONS`) says whether ``event`` may happen at the run's
    (state, step); the event's own mutator then checks its data against the run
    (phase, job id, attempt) and applies it.

    Raises:
        IllegalTransition: ``event`` cannot happen at ``run``'s (state, step), or
            its phase, job id or attempt does not match the run.
    """
    state = target(run.state, event.TYPE, run.step)
    entered = replace(run, state=state, timed_out=run.timed_out and state is run.state)
    if state is not run.state and state not in TERMINAL:
        entered = replace(
            entered,
            step=Step.ENTER,
            attempt=0,
            job_id=None,
            requested_at=None,
            adopted_created_at=None,
            judged_created_at=None,
            not_before=None,
            reenqueues=0,
        )
    new = replace(_mutate(event, entered, run), version=run.version + 1, updated_at=event.at)
    return replace(new, next_check_at=_next_check(new, event.at))


@functools.singledispatch
def _mutate(event: Event, run: Run, before: Run) -> Run:
    """``run`` (state already moved by the table) changed by ``event``; ``before`` is
    the run as the event found it, for the event's own checks. Events that change
    nothing but the state (``AnalysisSkipped``, ``AnalysisCompleted``, …) land here."""
    return run


def _same_phase(
    event: JobFailed | PhaseTimedOut | RetryScheduled | JobReenqueued, run: Run
) -> None:
    if event.phase != run.phase:
        raise IllegalTransition(
            f"{event.TYPE} of phase {event.phase} is not allowed in phase {run.phase}"
        )


@_mutate.register
def _requested(event: Requested, run: Run, before: Run) -> Run:
    attempt = 1 if before.step is Step.ENTER else before.attempt + 1
    if event.attempt != attempt:
        raise IllegalTransition(
            f"{event.TYPE} attempt {event.attempt} is not allowed at {before.state}/"
            f"{before.step} (attempt {before.attempt}): expected attempt {attempt}"
        )
    return replace(
        run,
        step=Step.JOB,
        job_id=event.job_id,
        attempt=event.attempt,
        requested_at=event.at,
        adopted_created_at=event.adopted_created_at,
        not_before=None,
        reenqueues=0,
        timed_out=False,
    )


@_mutate.register
def _reenqueued(event: JobReenqueued, run: Run, before: Run) -> Run:
    _same_phase(event, before)
    if event.job_id != before.job_id:
        raise IllegalTransition(
            f"JobReenqueued of job {event.job_id} is not allowed: the run's job is {before.job_id}"
        )
    return replace(run, reenqueues=before.reenqueues + 1)


@_mutate.register
def _predictions_completed(event: PredictionsCompleted, run: Run, before: Run) -> Run:
    return replace(run, found=event.found, expected=event.expected)


@_mutate.register
def _predictions_short(event: PredictionsShort, run: Run, before: Run) -> Run:
    return replace(
        run,
        step=Step.FAILED,
        job_id=None,
        found=event.found,
        expected=event.expected,
        last_error=f"predictions job completed with {event.found}/{event.expected}",
        judged_created_at=_later(before.judged_created_at, event.job_created_at),
    )


@_mutate.register
def _job_failed(event: JobFailed, run: Run, before: Run) -> Run:
    _same_phase(event, before)
    return replace(
        run,
        step=Step.FAILED,
        job_id=None,
        last_error=event.reason,
        judged_created_at=_later(before.judged_created_at, event.job_created_at),
    )


@_mutate.register
def _timed_out(event: PhaseTimedOut, run: Run, before: Run) -> Run:
    _same_phase(event, before)
    return replace(
        run,
        step=Step.FAILED,
        job_id=None,
        last_error=f"{event.phase} job ran longer than {event.budget:g} s",
        timed_out=True,
        judged_created_at=_later(before.judged_created_at, event.job_created_at),
    )


@_mutate.register
def _retry_scheduled(event: RetryScheduled, run: Run, before: Run) -> Run:
    _same_phase(event, before)
    return replace(run, step=Step.BACKOFF, not_before=event.not_before)


@_mutate.register(SettlementCompleted)
@_mutate.register(SettlementSkipped)
def _settled(event: Event, run: Run, before: Run) -> Run:
    return replace(run, step=Step.FINISHED, job_id=None, timed_out=False)


@_mutate.register(RunFailed)
@_mutate.register(RunCancelled)
def _ended(event: RunFailed | RunCancelled, run: Run, before: Run) -> Run:
    return replace(run, last_error=event.reason, job_id=None, not_before=None, finished_at=event.at)


@_mutate.register
def _completed_run(event: RunCompleted, run: Run, before: Run) -> Run:
    return replace(run, finished_at=event.at)


@_mutate.register
def _rearmed(event: RunRearmed, run: Run, before: Run) -> Run:
    return replace(run, last_error=None, finished_at=None)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _next_check(run: Run, at: datetime) -> datetime | None:
    if run.state in TERMINAL:
        return None
    if run.step is Step.BACKOFF and run.not_before is not None:
        return run.not_before
    return at


def project(events: Iterable[Event]) -> Run:
    """Fold a run's whole history into its projection.

    Raises:
        IllegalTransition: the history is empty, does not start with
            ``RunSeeded``, or holds an impossible event.
    """
    run: Run | None = None
    for event in events:
        if run is None:
            if not isinstance(event, RunSeeded):
                raise IllegalTransition(f"a history must start with RunSeeded, not {event.TYPE}")
            target(NEW, event.TYPE)
            run = seed(event)
        else:
            run = evolve(run, event)
    if run is None:
        raise IllegalTransition("empty history")
    return run


MAX_STEPS_PER_RUN = 16
"""Events one plan may hold: one run's steps on one reading of the facts (a whole
heal is about a dozen events; one reading gives at most five)."""


@dataclass(frozen=True)
class Plan:
    """What one run does on one reading of the facts: its ``events`` in order, the
    projection after each (``runs``, one per event, each one higher version), and
    ``again``: the plan stopped short of an event the run may take at once (a retry
    of the job it just judged), so the tick should look again soon.
    """

    run: Run
    """The projection the plan was made on."""
    events: tuple[Event, ...]
    runs: tuple[Run, ...]
    facts: Facts
    """The facts as the plan last used them: those given, less the job (and its
    worker count) once an event moved the run off that job."""
    again: bool = False

    @property
    def final(self) -> Run:
        """The projection after the whole plan (``run`` when it holds no event)."""
        return self.runs[-1] if self.runs else self.run

    def steps(self) -> Iterable[tuple[Run, Event, Run]]:
        """``(before, event, after)`` for each event, in order."""
        befores = (self.run, *self.runs)[: len(self.runs)]
        return zip(befores, self.events, self.runs, strict=True)

    def adopt(self, created_at: datetime | None) -> Plan:
        """The plan with its final ``…Requested`` adopting a job BullMQ already holds
        (created at ``created_at``, aware UTC; the shell found it in step 1): the
        event and the final projection both record it. ``evolve`` of the adopted
        event gives the same projection; it is not run again.

        Raises:
            ValueError: the plan does not end with a ``…Requested``.
        """
        if not self.events or not isinstance(last := self.events[-1], Requested):
            raise ValueError("only a plan that ends with a request can adopt a job")
        return replace(
            self,
            events=(*self.events[:-1], replace(last, adopted_created_at=created_at)),
            runs=(*self.runs[:-1], replace(self.runs[-1], adopted_created_at=created_at)),
        )


def plan(
    run: Run,
    facts: Facts,
    *,
    now: datetime,
    policy: Policy,
    limit: int = MAX_STEPS_PER_RUN,
) -> Plan:
    """Every event ``run`` takes on one reading of ``facts`` at ``now`` (aware UTC).

    Pure: :func:`decide` then :func:`evolve`, once per event, by these rules:

    - at most ``limit`` events (:data:`MAX_STEPS_PER_RUN`);
    - it ends after a ``…Requested`` or ``JobReenqueued`` (the shell enqueues that
      job after the commit, and its outcome is news for a later reading) and at a
      terminal state;
    - it stops *before* a ``…Requested`` of the job id ``run`` held when the plan
      started once it holds an event (``again`` is then set): that request's step 1
      removes the finished job, which must come after the judgement (``JobFailed``,
      …) is committed (DESIGN §4, intent before effect);
    - once an event moves the run off the job ``facts.job`` describes, that job
      (and its worker count) is dropped from the facts: it is behind the run.

    A plan made again on its own result plans nothing new: from ``final`` and the
    facts as the shell reads them after the effect (the same host data, a job the
    plan asked for now freshly queued, a job the run moved past not read), it holds
    no event, or after ``again`` only the retry it stopped short of
    (tests/unit/test_plan_properties.py).
    """
    events: list[Event] = []
    runs: list[Run] = []
    current = run
    for _ in range(limit):
        event = decide(current, facts, now=now, policy=policy)
        if event is None:
            break
        if events and isinstance(event, Requested) and event.job_id == run.job_id:
            return Plan(run, tuple(events), tuple(runs), facts, again=True)
        after = evolve(current, event)
        events.append(event)
        runs.append(after)
        if after.job_id != current.job_id:
            facts = replace(facts, job=None, workers=None)  # that job is behind the run
        current = after
        if isinstance(event, Requested | JobReenqueued) or current.state in TERMINAL:
            break
    return Plan(run, tuple(events), tuple(runs), facts)
