"""The decision (DESIGN §3, §4): ``decide(run, facts, now=…, policy=…)`` gives the
next event for a run, or ``None`` to wait, with the rules it reads a job by
(stale, lost, over budget) and a retry back-off by.
"""

from __future__ import annotations

from datetime import datetime

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
    SettlementCompleted,
    SettlementSkipped,
)
from retro.machine.facts import (
    Facts,
    Policy,
    cannot_heal,
    clip,
    no_external_id_reason,
    phase_done,
    settleable,
)
from retro.machine.jobs import JobMeaning, JobState, JobView, why_waiting
from retro.machine.states import (
    CALLED_OFF_STATUSES,
    PHASE_OF,
    PLAYABLE_STATUSES,
    TERMINAL,
    Run,
    State,
    Step,
)


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

    A run of a paused backfill (``facts.backfill_paused``, issue 11) starts no new
    job: where the rules would request one (``…Requested``) or enqueue a lost one
    again (``JobReenqueued``) it waits instead. Every judgement still happens (a
    job it already has finishes and is judged; the data, the match's status and a
    failure limit still end a phase or the run).
    """
    event = _decide(run, facts, now=now, policy=policy)
    if facts.backfill_paused and isinstance(event, Requested | JobReenqueued):
        return None
    return event


def held_by_pause(run: Run, facts: Facts, *, now: datetime, policy: Policy) -> bool:
    """True when ``run`` waits only because its backfill is paused
    (``facts.backfill_paused``): were it not paused, :func:`decide` would start a
    job (a ``…Requested`` or a ``JobReenqueued``). Such a run moves again only on a
    resume, even one that holds a ``max_in_flight`` slot (its job lost from BullMQ,
    or its back-off after a timeout over). Pure."""
    if not facts.backfill_paused:
        return False
    return isinstance(_decide(run, facts, now=now, policy=policy), Requested | JobReenqueued)


def _decide(run: Run, facts: Facts, *, now: datetime, policy: Policy) -> Event | None:
    """:func:`decide` as if the run's backfill were not paused."""
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
