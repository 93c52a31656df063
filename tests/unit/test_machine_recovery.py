"""Recovery rules of the pure machine (DESIGN §4): leftover jobs, adopted jobs, dead
workers and skewed worker clocks.

A finished job no newer than one whose outcome the phase already judged is a
leftover (``is_stale``): never the current attempt's outcome, it costs no attempt.
The judged job is named by its BullMQ ``timestamp``, recorded as ``job_created_at``
on ``JobFailed``/``PhaseTimedOut``/``PredictionsShort``; a job found queued or
running when the intent was recorded is adopted (``adopted_created_at``). No I/O.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retro.events import (
    REQUESTED,
    AnalysisSkipped,
    Event,
    JobFailed,
    Phase,
    PhaseTimedOut,
    PredictionsCompleted,
    PredictionsShort,
    RetryScheduled,
    RunSeeded,
    from_record,
    to_record,
)
from retro.machine import (
    Facts,
    JobView,
    Policy,
    Run,
    State,
    Step,
    decide,
    evolve,
    is_stale,
    project,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(retry_backoff=0.0)
PHASES = list(Phase)
C1 = T0 + timedelta(milliseconds=3)
"""BullMQ ``timestamp`` of attempt 1's job (a job is created just after its intent)."""
C2 = T0 + timedelta(seconds=20)
"""... of a later job with the same id."""


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


def seeded() -> Run:
    return project(
        [
            RunSeeded(
                at=T0,
                run_id="run-1",
                match_id="m-7",
                gaps=("analysis", "predictions", "settlement"),
                found=0,
                expected=3,
            )
        ]
    )


def entered(phase: Phase) -> Run:
    run = seeded()
    if phase is Phase.ANALYSIS:
        return run
    run = evolve(run, AnalysisSkipped(at=T0, reason="present"))
    if phase is Phase.PREDICTIONS:
        return run
    return evolve(run, PredictionsCompleted(at=T0, found=3, expected=3))


def requested(run: Run, phase: Phase, attempt: int, *, adopted: datetime | None = None) -> Run:
    job_id = POLICY.job_id(phase, run.match_id)
    event = REQUESTED[phase](at=T0, job_id=job_id, attempt=attempt, adopted_created_at=adopted)
    return evolve(run, event)


def not_done(phase: Phase, job: JobView | None = None, **more: Any) -> Facts:
    """Facts where ``phase``'s data is missing (the match is settleable)."""
    values: dict[str, Any] = {
        "match_found": True,
        "match_status": "finished",
        "home_score": 2,
        "away_score": 1,
        "has_analysis": phase is not Phase.ANALYSIS,
        "predictions_found": 1 if phase is Phase.PREDICTIONS else 3,
        "predictions_expected": 3,
        "unscored": 3,
        "job": job,
    }
    values.update(more)
    return Facts(**values)


def step(run: Run, facts: Facts, now: datetime) -> tuple[Event, Run]:
    event = decide(run, facts, now=now, policy=POLICY)
    assert event is not None, f"expected an event from {run.state}/{run.step}"
    return event, evolve(run, event)


def finished_job(state: str, created_at: datetime | None) -> JobView:
    return JobView(
        state=state,
        created_at=created_at,
        processed_at=created_at,
        finished_at=created_at,
        failed_reason="boom" if state == "failed" else None,
    )


def judged_then_retried(phase: Phase, state: str) -> tuple[Run, JobView]:
    """Attempt 1's job (created at C1) ends ``state`` and is judged; attempt 2 is
    requested. Returns the run and attempt 1's job view."""
    old = finished_job(state, C1)
    run = requested(entered(phase), phase, 1)
    verdict, run = step(run, not_done(phase, old), T0 + sec(1))
    assert isinstance(verdict, JobFailed | PredictionsShort)
    retry, run = step(run, not_done(phase), T0 + sec(2))
    assert isinstance(retry, RetryScheduled)
    nxt, run = step(run, not_done(phase), T0 + sec(3))
    assert nxt == REQUESTED[phase](at=T0 + sec(3), job_id=run.job_id or "", attempt=2)
    return run, old


# --- a leftover of an earlier attempt is never this attempt's outcome -----------------


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("state", ["completed", "failed"])
def test_finished_job_already_judged_is_not_charged_to_the_next_attempt(
    phase: Phase, state: str
) -> None:
    # e.g. Redis restored from a snapshot taken before attempt 1's job was removed
    run, old = judged_then_retried(phase, state)
    assert run.judged_created_at == C1
    assert is_stale(run, old)
    assert decide(run, not_done(phase, old), now=T0 + sec(4), policy=POLICY) is None
    assert run.attempt == 2


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("state", ["completed", "failed"])
def test_a_newer_finished_job_is_this_attempts_outcome(phase: Phase, state: str) -> None:
    run, _ = judged_then_retried(phase, state)
    new = finished_job(state, C2)
    assert not is_stale(run, new)
    event, after = step(run, not_done(phase, new), T0 + sec(30))
    assert isinstance(event, JobFailed | PredictionsShort)
    assert event.job_created_at == C2
    assert after.step is Step.FAILED and after.attempt == 2


@pytest.mark.parametrize(
    ("view", "judged", "adopted", "stale"),
    [
        (finished_job("failed", C1), C1, None, True),
        (finished_job("completed", C1), C2, None, True),
        (finished_job("failed", C2), C1, None, False),
        (finished_job("failed", C1), None, None, False),
        (finished_job("failed", C1), C1, C1, False),
        (finished_job("failed", None), C1, None, False),
        (JobView(state="active", created_at=C1), C1, None, False),
        (JobView(state="prioritized", created_at=C1), C1, None, False),
        (JobView(state="unknown"), C1, None, False),
    ],
    ids=[
        "failed-same-as-judged",
        "completed-older-than-judged",
        "newer-than-judged",
        "nothing-judged-yet",
        "adopted-by-this-attempt",
        "no-timestamp",
        "active",
        "queued",
        "unknown",
    ],
)
def test_is_stale(
    view: JobView, judged: datetime | None, adopted: datetime | None, stale: bool
) -> None:
    run = requested(entered(Phase.PREDICTIONS), Phase.PREDICTIONS, 1, adopted=adopted)
    run = dataclasses.replace(run, judged_created_at=judged)
    assert is_stale(run, view) is stale


# --- adopted and judged jobs in the projection ----------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_a_job_adopted_after_a_timeout_is_judged_when_it_fails(phase: Phase) -> None:
    budget = POLICY.budgets[phase]
    run = requested(entered(phase), phase, 1)
    running = JobView(state="active", created_at=C1, processed_at=C1)
    late = T0 + sec(budget + 1)
    timed_out, run = step(run, not_done(phase, running), late)
    assert timed_out == PhaseTimedOut(at=late, phase=phase, budget=budget, job_created_at=C1)
    _, run = step(run, not_done(phase), late)  # RetryScheduled
    run = requested(run, phase, 2, adopted=C1)  # step 1 found C1 still running
    assert (run.adopted_created_at, run.judged_created_at) == (C1, C1)
    failed = finished_job("failed", C1)
    assert not is_stale(run, failed)
    event, run = step(run, not_done(phase, failed), late + sec(1))
    assert isinstance(event, JobFailed) and event.job_created_at == C1
    assert (run.step, run.attempt) == (Step.FAILED, 2)


def test_requested_records_the_adopted_job_and_a_fresh_request_clears_it() -> None:
    phase = Phase.PREDICTIONS
    run = requested(entered(phase), phase, 1, adopted=C1)
    assert run.adopted_created_at == C1
    run = evolve(run, JobFailed(at=T0, phase=phase, reason="x", job_created_at=C1))
    run = evolve(run, RetryScheduled(at=T0, phase=phase, not_before=T0))
    run = requested(run, phase, 2)
    assert run.adopted_created_at is None
    assert run.judged_created_at == C1


def test_judged_is_the_latest_job_judged_in_the_phase() -> None:
    phase = Phase.PREDICTIONS
    retry = RetryScheduled(at=T0, phase=phase, not_before=T0)
    run = requested(entered(phase), phase, 1)
    run = evolve(run, PredictionsShort(at=T0, found=1, expected=3, job_created_at=C2))
    assert run.judged_created_at == C2
    run = requested(evolve(run, retry), phase, 2)
    run = evolve(run, PhaseTimedOut(at=T0, phase=phase, budget=1.0, job_created_at=C1))
    assert run.judged_created_at == C2  # an older job judged later does not lower it
    run = requested(evolve(run, retry), phase, 3)
    run = evolve(run, JobFailed(at=T0, phase=phase, reason="no timestamp"))
    assert run.judged_created_at == C2  # a verdict without a timestamp keeps it
    later = C2 + sec(1)
    run = requested(evolve(run, retry), phase, 4)
    run = evolve(run, JobFailed(at=T0, phase=phase, reason="x", job_created_at=later))
    assert run.judged_created_at == later


def test_adopted_and_judged_are_reset_when_the_phase_changes() -> None:
    run = requested(entered(Phase.PREDICTIONS), Phase.PREDICTIONS, 1, adopted=C1)
    run = evolve(run, PredictionsShort(at=T0, found=1, expected=3, job_created_at=C1))
    run = evolve(run, PredictionsCompleted(at=T0, found=3, expected=3))
    assert run.state is State.SETTLING
    assert (run.adopted_created_at, run.judged_created_at) == (None, None)
    # the settle job, created before the predictions job was judged, is not a leftover
    old_settle = finished_job("failed", C1 - sec(1))
    run = requested(run, Phase.SETTLEMENT, 1)
    assert not is_stale(run, old_settle)
    event = decide(run, not_done(Phase.SETTLEMENT, old_settle), now=T0 + sec(5), policy=POLICY)
    assert isinstance(event, JobFailed)


# --- every verdict names the job it judged --------------------------------------------


@pytest.mark.parametrize(
    ("phase", "view", "kind"),
    [
        (Phase.ANALYSIS, finished_job("failed", C1), JobFailed),
        (Phase.ANALYSIS, finished_job("completed", C1), JobFailed),
        (Phase.PREDICTIONS, finished_job("failed", C1), JobFailed),
        (Phase.PREDICTIONS, finished_job("completed", C1), PredictionsShort),
        (Phase.SETTLEMENT, finished_job("failed", C1), JobFailed),
        (Phase.SETTLEMENT, finished_job("completed", C1), JobFailed),
        (Phase.ANALYSIS, JobView(state="active", created_at=C1, processed_at=C1), PhaseTimedOut),
        (Phase.SETTLEMENT, JobView(state="active", created_at=C1, processed_at=C1), PhaseTimedOut),
    ],
    ids=lambda v: v.state if isinstance(v, JobView) else getattr(v, "__name__", str(v)),
)
def test_verdicts_carry_the_judged_jobs_timestamp(
    phase: Phase, view: JobView, kind: type[Event]
) -> None:
    run = requested(entered(phase), phase, 1)
    now = T0 + sec(POLICY.budgets[phase] + 10)
    event, after = step(run, not_done(phase, view, workers=1), now)
    assert isinstance(event, kind)
    assert isinstance(event, JobFailed | PredictionsShort | PhaseTimedOut)
    assert event.job_created_at == C1
    assert after.judged_created_at == C1


# --- a job held by a dead worker ------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_active_job_on_a_queue_without_workers_is_not_timed_out(phase: Phase) -> None:
    run = requested(entered(phase), phase, 1)
    held = JobView(state="active", created_at=C1, processed_at=C1)
    now = T0 + timedelta(hours=6)
    assert decide(run, not_done(phase, held, workers=0), now=now, policy=POLICY) is None


@pytest.mark.parametrize("workers", [None, 1, 3])
def test_active_job_with_workers_or_unknown_workers_still_times_out(workers: int | None) -> None:
    phase = Phase.PREDICTIONS
    run = requested(entered(phase), phase, 1)
    held = JobView(state="active", created_at=C1, processed_at=C1)
    now = C1 + sec(POLICY.budgets[phase] + 1)
    event = decide(run, not_done(phase, held, workers=workers), now=now, policy=POLICY)
    assert isinstance(event, PhaseTimedOut)


# --- a worker clock ahead of ours -----------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_processed_on_in_the_future_is_ignored_and_the_budget_counts_from_the_request(
    phase: Phase,
) -> None:
    budget = POLICY.budgets[phase]
    run = requested(entered(phase), phase, 1)  # requested at T0
    ahead = JobView(state="active", created_at=C1, processed_at=T0 + timedelta(hours=1))
    f = not_done(phase, ahead)
    assert decide(run, f, now=T0 + sec(budget), policy=POLICY) is None
    late = T0 + sec(budget + 1)
    assert decide(run, f, now=late, policy=POLICY) == PhaseTimedOut(
        at=late, phase=phase, budget=budget, job_created_at=C1
    )


# --- stored events from before these fields existed -----------------------------------


@pytest.mark.parametrize(
    ("type_", "data", "field"),
    [
        ("AnalysisRequested", {"job_id": "analyze-retro-m-7", "attempt": 1}, "adopted_created_at"),
        (
            "PredictionsRequested",
            {"job_id": "predict-retro-m-7", "attempt": 2},
            "adopted_created_at",
        ),
        ("SettlementRequested", {"job_id": "settle-retro-m-7", "attempt": 1}, "adopted_created_at"),
        ("JobFailed", {"phase": "analysis", "reason": "boom"}, "job_created_at"),
        ("PhaseTimedOut", {"phase": "settlement", "budget": 60.0}, "job_created_at"),
        ("PredictionsShort", {"found": 1, "expected": 3}, "job_created_at"),
    ],
)
def test_old_events_without_the_optional_fields_still_load(
    type_: str, data: dict[str, Any], field: str
) -> None:
    event = from_record(type_, dict(data), T0)
    assert getattr(event, field) is None
    assert to_record(event) == (type_, data, T0)  # unset fields are not written


@pytest.mark.parametrize(
    "event",
    [
        REQUESTED[Phase.PREDICTIONS](
            at=T0, job_id="predict-retro-m-7", attempt=1, adopted_created_at=C1
        ),
        JobFailed(at=T0, phase=Phase.ANALYSIS, reason="boom", job_created_at=C1),
        PhaseTimedOut(at=T0, phase=Phase.SETTLEMENT, budget=60.0, job_created_at=C1),
        PredictionsShort(at=T0, found=1, expected=3, job_created_at=C1),
    ],
)
def test_the_optional_timestamps_round_trip(event: Event) -> None:
    type_, data, at = to_record(event)
    assert C1.isoformat() in data.values()
    assert from_record(type_, data, at) == event


def test_an_old_history_replays_with_nothing_judged() -> None:
    records: list[tuple[str, dict[str, Any]]] = [
        (
            "RunSeeded",
            {"run_id": "r", "match_id": "m", "gaps": ["predictions"], "found": 0, "expected": 3},
        ),
        ("AnalysisSkipped", {"reason": "present"}),
        ("PredictionsRequested", {"job_id": "predict-retro-m", "attempt": 1}),
        ("JobFailed", {"phase": "predictions", "reason": "boom"}),
        ("RetryScheduled", {"phase": "predictions", "not_before": T0.isoformat()}),
        ("PredictionsRequested", {"job_id": "predict-retro-m", "attempt": 2}),
    ]
    run = project([from_record(t, d, T0) for t, d in records])
    assert (run.state, run.attempt, run.step) == (State.PREDICTING, 2, Step.JOB)
    assert (run.adopted_created_at, run.judged_created_at) == (None, None)
    # with nothing judged, a finished job is read as this attempt's outcome, as before
    failed = finished_job("failed", C1)
    assert not is_stale(run, failed)
    event = decide(run, not_done(Phase.PREDICTIONS, failed), now=T0 + sec(1), policy=POLICY)
    assert isinstance(event, JobFailed)
