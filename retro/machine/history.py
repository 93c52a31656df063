"""A run's history (DESIGN §3): ``seed`` starts a run, ``evolve(run, event)``
applies one event through its typed mutator (one per event type, by
:func:`functools.singledispatch`), ``project(events)`` folds a whole history.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from retro.events import (
    Event,
    JobFailed,
    JobReenqueued,
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
from retro.machine.states import NEW, TERMINAL, IllegalTransition, Run, State, Step, target


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
        backfill_id=event.backfill_id,
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
    judged = _judged(
        run,
        before,
        f"predictions job completed with {event.found}/{event.expected}",
        event.job_created_at,
    )
    return replace(judged, found=event.found, expected=event.expected)


@_mutate.register
def _job_failed(event: JobFailed, run: Run, before: Run) -> Run:
    _same_phase(event, before)
    return _judged(run, before, event.reason, event.job_created_at)


@_mutate.register
def _timed_out(event: PhaseTimedOut, run: Run, before: Run) -> Run:
    _same_phase(event, before)
    reason = f"{event.phase} job ran longer than {event.budget:g} s"
    return replace(_judged(run, before, reason, event.job_created_at), timed_out=True)


def _judged(run: Run, before: Run, reason: str, job_created_at: datetime | None) -> Run:
    """``run`` after a verdict on its job (``JobFailed``, ``PhaseTimedOut``,
    ``PredictionsShort``): the attempt failed with ``reason``, the job is behind the
    run, and the latest job judged is remembered (DESIGN §4.1, stale leftovers)."""
    return replace(
        run,
        step=Step.FAILED,
        job_id=None,
        last_error=reason,
        judged_created_at=_later(before.judged_created_at, job_created_at),
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
