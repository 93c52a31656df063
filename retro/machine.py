"""THE state machine of a backfill run (DESIGN §3): states, transitions, decisions.

Pure: no I/O, no clock reads, no database. ``decide(run, facts, now=…, policy=…)``
returns the next event (or ``None``); ``evolve(run, event)`` applies one event;
``project(events)`` folds a whole history. The ``transitions`` library holds the
transition table and is only asked whether a trigger is legal from a state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from transitions import Machine

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
TRANSITIONS: list[dict[str, object]] = [
    {"trigger": "RunSeeded", "source": NEW, "dest": State.PENDING},
    {
        "trigger": "AnalysisRequested",
        "source": [State.PENDING, State.ANALYZING],
        "dest": State.ANALYZING,
    },
    {"trigger": "AnalysisSkipped", "source": State.PENDING, "dest": State.PREDICTING},
    {"trigger": "AnalysisCompleted", "source": State.ANALYZING, "dest": State.PREDICTING},
    {"trigger": "PredictionsRequested", "source": State.PREDICTING, "dest": None},
    {"trigger": "PredictionsShort", "source": State.PREDICTING, "dest": None},
    {"trigger": "PredictionsCompleted", "source": State.PREDICTING, "dest": State.SETTLING},
    {"trigger": "SettlementRequested", "source": State.SETTLING, "dest": None},
    {"trigger": "SettlementSkipped", "source": State.SETTLING, "dest": None},
    {"trigger": "SettlementCompleted", "source": State.SETTLING, "dest": None},
    {"trigger": "JobFailed", "source": _PHASES, "dest": None},
    {"trigger": "PhaseTimedOut", "source": _PHASES, "dest": None},
    {"trigger": "RetryScheduled", "source": _PHASES, "dest": None},
    {"trigger": "JobReenqueued", "source": _PHASES, "dest": None},
    {"trigger": "RunCompleted", "source": State.SETTLING, "dest": State.DONE},
    {"trigger": "RunFailed", "source": list(LIVE), "dest": State.FAILED},
    {"trigger": "RunCancelled", "source": list(LIVE), "dest": State.CANCELLED},
    {"trigger": "RunRearmed", "source": State.FAILED, "dest": State.PENDING},
]


def _plain(value: object) -> object:
    if isinstance(value, list):
        return [str(v) for v in value]
    return None if value is None else str(value)


_TABLE = Machine(
    model=None,
    states=[NEW, *(str(s) for s in State)],
    transitions=[{k: _plain(v) for k, v in t.items()} for t in TRANSITIONS],
    initial=NEW,
    auto_transitions=False,
)


class IllegalTransition(ValueError):
    """An event cannot happen in the run's current state (a corrupt or foreign history)."""


def target(state: str, trigger: str) -> State:
    """The state that ``trigger`` leads to from ``state``.

    Raises:
        IllegalTransition: the transition table has no such transition.
    """
    found = _TABLE.get_transitions(trigger=trigger, source=str(state))
    if not found:
        raise IllegalTransition(f"{trigger} is not allowed in state {state}")
    dest = found[0].dest
    return State(state if dest is None else dest)


def legal_triggers(state: State) -> set[str]:
    """Event types that may happen in ``state``."""
    return set(_TABLE.get_triggers(str(state)))


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
    """

    max_attempts: int = 3
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
    then the run fails with the reason.
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
        return _request(Phase.ANALYSIS, run, 1, now, policy)
    phase = PHASE_OF[run.state]
    if run.step is Step.FINISHED:
        return RunCompleted(at=now)
    if phase is Phase.SETTLEMENT and (why := settleable(facts)) is not None:
        if run.step is Step.JOB and facts.job is not None and facts.job.state == JobState.ACTIVE:
            # let a running settlement finish (or time out) before leaving it
            return _observe_job(run, phase, facts, now, policy)
        return SettlementSkipped(at=now, reason=why)
    if phase_done(phase, facts):
        return _completed(phase, facts, now)
    if run.step is Step.ENTER:
        return _request(phase, run, 1, now, policy)
    if run.step is Step.BACKOFF:
        if not backoff_over(run.not_before, run.attempt, now, policy):
            return None
        return _request(phase, run, run.attempt + 1, now, policy)
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
    phase: Phase, run: Run, attempt: int, now: datetime, policy: Policy
) -> Requested | RunFailed:
    job_id = policy.job_id(phase, run.match_id)
    if (rule := jobids.refusal(job_id)) is not None:  # never reaches Redis
        reason = f"match id {run.match_id!r} gives job id {job_id!r}: {rule}"
        return RunFailed(at=now, reason=clip(reason))
    return REQUESTED[phase](at=now, job_id=job_id, attempt=attempt)


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

    Raises:
        IllegalTransition: ``event`` cannot happen in ``run``'s state.
    """
    state = target(run.state, event.TYPE)
    changes: dict[str, object] = {"state": state, "updated_at": event.at}
    if state is not run.state and state not in TERMINAL:
        changes.update(
            step=Step.ENTER,
            attempt=0,
            job_id=None,
            requested_at=None,
            adopted_created_at=None,
            judged_created_at=None,
            not_before=None,
            reenqueues=0,
        )
    match event:
        case Requested(job_id=job_id, attempt=attempt, adopted_created_at=adopted):
            changes.update(
                step=Step.JOB,
                job_id=job_id,
                attempt=attempt,
                requested_at=event.at,
                adopted_created_at=adopted,
                not_before=None,
                reenqueues=0,
            )
        case JobReenqueued():
            changes.update(reenqueues=run.reenqueues + 1)
        case PredictionsCompleted(found=found, expected=expected):
            changes.update(found=found, expected=expected)
        case PredictionsShort(found=found, expected=expected, job_created_at=judged):
            changes.update(
                step=Step.FAILED,
                job_id=None,
                found=found,
                expected=expected,
                last_error=f"predictions job completed with {found}/{expected}",
                judged_created_at=_later(run.judged_created_at, judged),
            )
        case JobFailed(reason=reason, job_created_at=judged):
            changes.update(
                step=Step.FAILED,
                job_id=None,
                last_error=reason,
                judged_created_at=_later(run.judged_created_at, judged),
            )
        case PhaseTimedOut(phase=phase, budget=budget, job_created_at=judged):
            changes.update(
                step=Step.FAILED,
                job_id=None,
                last_error=f"{phase} job ran longer than {budget:g} s",
                judged_created_at=_later(run.judged_created_at, judged),
            )
        case RetryScheduled(not_before=not_before):
            changes.update(step=Step.BACKOFF, not_before=not_before)
        case SettlementCompleted() | SettlementSkipped():
            changes.update(step=Step.FINISHED, job_id=None)
        case RunFailed(reason=reason) | RunCancelled(reason=reason):
            changes.update(last_error=reason, job_id=None, not_before=None, finished_at=event.at)
        case RunCompleted():
            changes.update(finished_at=event.at)
        case RunRearmed():
            changes.update(last_error=None, finished_at=None)
        case _:
            pass
    new = dataclasses.replace(run, version=run.version + 1, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(new, next_check_at=_next_check(new, event.at))


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
