"""The pure run machine (DESIGN §3 and §4): transitions, guards, retries, projection.

Every case builds a run from events (``project``/``evolve``), asks ``decide`` what
happens next given the facts at an instant, and applies the answer. No I/O.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from retro.events import (
    EVENT_TYPES,
    REQUESTED,
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    JobFailed,
    JobReenqueued,
    Phase,
    PhaseTimedOut,
    PredictionsCompleted,
    PredictionsRequested,
    PredictionsShort,
    Requested,
    RetryScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRearmed,
    RunSeeded,
    SettlementCompleted,
    SettlementRequested,
    SettlementSkipped,
)
from retro.machine import (
    MEANING,
    NEW,
    REASON_LIMIT,
    TERMINAL,
    TRANSITIONS,
    Facts,
    IllegalTransition,
    JobMeaning,
    JobState,
    JobView,
    Policy,
    Run,
    State,
    Step,
    Waiting,
    WaitReason,
    clip,
    decide,
    evolve,
    legal_triggers,
    phase_done,
    project,
    why_waiting,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MATCH = "m-42"
POLICY = Policy()
JOB_ID = {
    Phase.ANALYSIS: "analyze-retro-m-42",
    Phase.PREDICTIONS: "predict-retro-m-42",
    Phase.SETTLEMENT: "settle-retro-m-42",
}
STATE_OF = {
    Phase.ANALYSIS: State.ANALYZING,
    Phase.PREDICTIONS: State.PREDICTING,
    Phase.SETTLEMENT: State.SETTLING,
}
PHASES = list(Phase)
LIVE = [State.PENDING, State.ANALYZING, State.PREDICTING, State.SETTLING]
WAITING_STATES = ["waiting", "delayed", "prioritized", "waiting-children", "paused"]


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


# --- building runs from events -------------------------------------------------------


def seed_event(at: datetime = T0) -> RunSeeded:
    return RunSeeded(
        at=at,
        run_id="run-1",
        match_id=MATCH,
        gaps=("analysis", "predictions", "settlement"),
        found=0,
        expected=3,
    )


def apply(run: Run, *events: Event) -> Run:
    for event in events:
        run = evolve(run, event)
    return run


def seeded(at: datetime = T0) -> Run:
    return project([seed_event(at)])


def entered(phase: Phase) -> Run:
    """A run that has just entered ``phase`` (for analysis: still pending)."""
    run = seeded()
    if phase is Phase.ANALYSIS:
        return run
    run = evolve(run, AnalysisSkipped(at=T0, reason="present"))
    if phase is Phase.PREDICTIONS:
        return run
    return evolve(run, PredictionsCompleted(at=T0, found=3, expected=3))


def with_job(phase: Phase, *, attempt: int = 1, at: datetime = T0) -> Run:
    """A run in ``phase`` whose attempt ``attempt`` was requested at ``at``."""
    run = entered(phase)
    for n in range(1, attempt):
        run = apply(
            run,
            REQUESTED[phase](at=at, job_id=JOB_ID[phase], attempt=n),
            JobFailed(at=at, phase=phase, reason=f"boom {n}"),
            RetryScheduled(at=at, phase=phase, not_before=at),
        )
    return evolve(run, REQUESTED[phase](at=at, job_id=JOB_ID[phase], attempt=attempt))


def failed_attempt(phase: Phase, *, attempt: int = 1, reason: str = "boom") -> Run:
    return evolve(with_job(phase, attempt=attempt), JobFailed(at=T0, phase=phase, reason=reason))


def in_backoff(phase: Phase, *, attempt: int = 1, not_before: datetime) -> Run:
    run = failed_attempt(phase, attempt=attempt)
    return evolve(run, RetryScheduled(at=T0, phase=phase, not_before=not_before))


def in_state(state: State) -> Run:
    """A run in any ``state`` (in-flight ones with a job outstanding)."""
    match state:
        case State.PENDING:
            return seeded()
        case State.ANALYZING:
            return with_job(Phase.ANALYSIS)
        case State.PREDICTING:
            return with_job(Phase.PREDICTIONS)
        case State.SETTLING:
            return with_job(Phase.SETTLEMENT)
        case State.DONE:
            return apply(
                with_job(Phase.SETTLEMENT), SettlementCompleted(at=T0), RunCompleted(at=T0)
            )
        case State.FAILED:
            return evolve(seeded(), RunFailed(at=T0, reason="gave up"))
        case State.CANCELLED:
            return evolve(seeded(), RunCancelled(at=T0, reason="match postponed"))
    raise AssertionError(state)


# --- facts ----------------------------------------------------------------------------

FINISHED: dict[str, Any] = {"match_status": "finished", "home_score": 2, "away_score": 1}


def facts(**overrides: Any) -> Facts:
    values: dict[str, Any] = {"match_found": True, "match_status": "scheduled"}
    values["predictions_expected"] = 3
    values.update(overrides)
    return Facts(**values)


def not_done(phase: Phase, **overrides: Any) -> Facts:
    """Facts where ``phase``'s data is missing (and settlement is allowed)."""
    base: dict[str, Any] = {**FINISHED, "predictions_found": 1, "unscored": 3}
    if phase is not Phase.ANALYSIS:
        base["has_analysis"] = True
    return facts(**{**base, **overrides})


def done(phase: Phase, **overrides: Any) -> Facts:
    """Facts where the database shows ``phase``'s data."""
    base: dict[str, Any] = {**FINISHED, "has_analysis": True, "predictions_found": 1}
    if phase is not Phase.ANALYSIS:
        base["predictions_found"] = 3
    if phase is Phase.SETTLEMENT:
        base["unscored"] = 0
    else:
        base["unscored"] = 3
    return facts(**{**base, **overrides})


def job(state: str, **kwargs: Any) -> JobView:
    return JobView(state=state, **kwargs)


def step(run: Run, f: Facts, now: datetime, policy: Policy = POLICY) -> tuple[Event, Run]:
    """Decide, insist on an event, apply it."""
    event = decide(run, f, now=now, policy=policy)
    assert event is not None, f"expected an event from {run.state}/{run.step}"
    return event, evolve(run, event)


# --- every transition of the table, through decide and evolve ------------------------


def _table_pairs() -> set[tuple[str, str]]:
    pairs = set()
    for t in TRANSITIONS:
        sources = t["source"] if isinstance(t["source"], list) else [t["source"]]
        for source in sources:
            pairs.add((str(t["trigger"]), str(source)))
    return pairs


LATER = T0 + sec(1)


def case(
    trigger: str, source: State, dest: State, run: Run, f: Facts, now: datetime = LATER
) -> Any:
    return pytest.param(trigger, source, dest, run, f, now, id=f"{trigger}-from-{source}")


A, P, S = Phase.ANALYSIS, Phase.PREDICTIONS, Phase.SETTLEMENT
CASES = [
    case("AnalysisRequested", State.PENDING, State.ANALYZING, seeded(), facts()),
    case(
        "AnalysisRequested",
        State.ANALYZING,
        State.ANALYZING,
        in_backoff(A, not_before=T0 + sec(5)),
        not_done(A),
        T0 + sec(5),
    ),
    case("AnalysisSkipped", State.PENDING, State.PREDICTING, seeded(), facts(has_analysis=True)),
    case(
        "AnalysisCompleted",
        State.ANALYZING,
        State.PREDICTING,
        with_job(A),
        done(A, job=job("completed")),
    ),
    case("PredictionsRequested", State.PREDICTING, State.PREDICTING, entered(P), not_done(P)),
    case(
        "PredictionsShort",
        State.PREDICTING,
        State.PREDICTING,
        with_job(P),
        not_done(P, job=job("completed")),
    ),
    case(
        "PredictionsCompleted",
        State.PREDICTING,
        State.SETTLING,
        with_job(P),
        done(P, job=job("completed")),
    ),
    case("SettlementRequested", State.SETTLING, State.SETTLING, entered(S), not_done(S)),
    case(
        "SettlementSkipped",
        State.SETTLING,
        State.SETTLING,
        entered(S),
        done(P, match_status="live", unscored=3),
    ),
    case(
        "SettlementCompleted",
        State.SETTLING,
        State.SETTLING,
        with_job(S),
        done(S, job=job("completed")),
    ),
    case(
        "RunCompleted",
        State.SETTLING,
        State.DONE,
        apply(with_job(S), SettlementCompleted(at=T0)),
        done(S),
    ),
]
for _phase in PHASES:
    _state = STATE_OF[_phase]
    CASES += [
        case(
            "JobFailed",
            _state,
            _state,
            with_job(_phase),
            not_done(_phase, job=job("failed", failed_reason="worker exploded")),
        ),
        case(
            "PhaseTimedOut",
            _state,
            _state,
            with_job(_phase),
            not_done(_phase, job=job("active", processed_at=T0)),
            T0 + sec(POLICY.budgets[_phase] + 1),
        ),
        case("RetryScheduled", _state, _state, failed_attempt(_phase), not_done(_phase)),
        case(
            "JobReenqueued",
            _state,
            _state,
            with_job(_phase),
            not_done(_phase, job=job("unknown", orphaned=True)),
        ),
    ]
for _state in LIVE:
    CASES += [
        case("RunFailed", _state, State.FAILED, in_state(_state), facts(match_found=False)),
        case(
            "RunCancelled",
            _state,
            State.CANCELLED,
            in_state(_state),
            facts(match_status="postponed"),
        ),
    ]


@pytest.mark.parametrize(
    ("trigger", "source", "dest", "run", "f", "now"),
    CASES,
)
def test_transition_through_decide_and_evolve(
    trigger: str, source: State, dest: State, run: Run, f: Facts, now: datetime
) -> None:
    assert run.state is source
    event, after = step(run, f, now)
    assert event.TYPE == trigger
    assert event.at == now
    assert after.state is dest
    assert after.version == run.version + 1
    assert after.updated_at == now


def test_seeding_enters_pending() -> None:
    run = seeded()
    assert run.state is State.PENDING
    assert run.step is Step.ENTER
    assert (run.attempt, run.job_id, run.version) == (0, None, 1)
    assert run.created_at == run.updated_at == run.next_check_at == T0
    assert (run.gaps, run.found, run.expected) == (("analysis", "predictions", "settlement"), 0, 3)
    assert legal_triggers(NEW) == {"RunSeeded"}  # type: ignore[arg-type]


def test_rearm_returns_a_failed_run_to_pending_with_a_clean_slate() -> None:
    failed = apply(
        with_job(Phase.PREDICTIONS, attempt=3),
        JobFailed(at=T0, phase=Phase.PREDICTIONS, reason="boom 3"),
        RunFailed(at=T0 + sec(1), reason="predictions failed 3 times; last: boom 3"),
    )
    assert decide(failed, facts(), now=T0 + sec(2), policy=POLICY) is None  # never by decide
    rearmed_at = T0 + timedelta(days=1)
    run = evolve(failed, RunRearmed(at=rearmed_at))
    assert run.state is State.PENDING
    assert run.step is Step.ENTER
    assert (run.attempt, run.job_id, run.last_error, run.finished_at) == (0, None, None, None)
    assert run.next_check_at == rearmed_at
    event = decide(run, facts(), now=rearmed_at, policy=POLICY)
    assert event == AnalysisRequested(at=rearmed_at, job_id=JOB_ID[Phase.ANALYSIS], attempt=1)


def test_cases_cover_the_whole_transition_table() -> None:
    covered = {(c.values[0], str(c.values[1])) for c in CASES}
    covered |= {("RunSeeded", NEW), ("RunRearmed", str(State.FAILED))}
    assert covered == _table_pairs()


# --- guards -----------------------------------------------------------------------------


def test_analysis_skipped_when_a_favourite_is_present() -> None:
    event, run = step(seeded(), facts(has_analysis=True), LATER)
    assert isinstance(event, AnalysisSkipped)
    assert run.state is State.PREDICTING
    assert run.step is Step.ENTER
    assert run.attempt == 0


def test_analysis_requested_when_no_favourite() -> None:
    event, run = step(seeded(), facts(has_analysis=False), LATER)
    assert event == AnalysisRequested(at=LATER, job_id="analyze-retro-m-42", attempt=1)
    assert (run.step, run.job_id, run.attempt, run.requested_at) == (
        Step.JOB,
        "analyze-retro-m-42",
        1,
        LATER,
    )


def test_favourite_appearing_while_a_job_failed_still_counts_as_done() -> None:
    # the database decides, not the job
    f = done(Phase.ANALYSIS, job=job("failed", failed_reason="late crash"))
    event, run = step(with_job(Phase.ANALYSIS), f, LATER)
    assert isinstance(event, AnalysisCompleted)
    assert run.state is State.PREDICTING


@pytest.mark.parametrize(
    ("status", "home", "away"),
    [
        ("scheduled", None, None),
        ("live", 1, 0),
        ("finished", None, None),
        ("finished", None, 1),
        ("finished", 2, None),
        ("awarded", None, None),
    ],
)
@pytest.mark.parametrize(
    "run",
    [entered(Phase.SETTLEMENT), failed_attempt(Phase.SETTLEMENT)],
    ids=["entered", "after-a-failure"],
)
def test_settlement_skipped_unless_finished_with_both_scores(
    status: str, home: int | None, away: int | None, run: Run
) -> None:
    f = done(Phase.PREDICTIONS, match_status=status, home_score=home, away_score=away, unscored=3)
    event, after = step(run, f, LATER)
    assert isinstance(event, SettlementSkipped)
    assert str(status) in event.reason
    assert "\n" not in event.reason
    assert after.step is Step.FINISHED
    assert after.job_id is None
    final, completed = step(after, f, LATER + sec(1))
    assert isinstance(final, RunCompleted)
    assert completed.state is State.DONE


@pytest.mark.parametrize(
    ("status", "home", "away"), [("finished", 2, 1), ("awarded", 3, 0), ("finished", 0, 0)]
)
def test_settlement_proceeds_when_finished_with_both_scores(
    status: str, home: int, away: int
) -> None:
    score = {"match_status": status, "home_score": home, "away_score": away}
    run = entered(Phase.SETTLEMENT)
    event = decide(run, not_done(Phase.SETTLEMENT, **score), now=LATER, policy=POLICY)
    assert event == SettlementRequested(at=LATER, job_id="settle-retro-m-42", attempt=1)
    already = decide(run, done(Phase.SETTLEMENT, **score), now=LATER, policy=POLICY)
    assert isinstance(already, SettlementCompleted)


def test_finished_with_a_null_score_is_not_settled_even_with_nothing_unscored() -> None:
    f = done(Phase.SETTLEMENT, home_score=None)
    assert not phase_done(Phase.SETTLEMENT, f)
    event = decide(with_job(Phase.SETTLEMENT), f, now=LATER, policy=POLICY)
    assert isinstance(event, SettlementSkipped)
    assert event.reason == "match finished but its score is not set"


def test_running_settlement_is_left_to_finish_when_the_match_turns_unsettleable() -> None:
    f = done(Phase.PREDICTIONS, match_status="live", unscored=3, job=job("active"))
    assert decide(with_job(Phase.SETTLEMENT), f, now=LATER, policy=POLICY) is None


@pytest.mark.parametrize(
    ("found", "expected", "is_done"),
    [(0, 3, False), (2, 3, False), (3, 3, True), (4, 3, True), (0, 0, True)],
)
def test_predictions_done_only_when_found_reaches_expected(
    found: int, expected: int, is_done: bool
) -> None:
    # ``found`` counts models with a prediction; extra rows (``unscored``) do not count.
    f = facts(
        has_analysis=True,
        predictions_found=found,
        predictions_expected=expected,
        unscored=10,
        job=job("completed"),
    )
    assert phase_done(Phase.PREDICTIONS, f) is is_done
    event, run = step(with_job(Phase.PREDICTIONS), f, LATER)
    if is_done:
        assert event == PredictionsCompleted(at=LATER, found=found, expected=expected)
        assert run.state is State.SETTLING
    else:
        assert event == PredictionsShort(at=LATER, found=found, expected=expected)
        assert run.state is State.PREDICTING
    assert (run.found, run.expected) == (found, expected)


# --- a completed job that did not change the data is a retry -----------------------


@pytest.mark.parametrize(
    ("phase", "missing"),
    [
        (Phase.ANALYSIS, "no analysis with a favourite"),
        (Phase.SETTLEMENT, "predictions still unscored"),
    ],
)
def test_completed_job_without_data_is_a_job_failure(phase: Phase, missing: str) -> None:
    event, run = step(with_job(phase), not_done(phase, job=job("completed")), LATER)
    assert event == JobFailed(
        at=LATER, phase=phase, reason=f"job {JOB_ID[phase]} completed but {missing}"
    )
    assert run.state is STATE_OF[phase]
    assert (run.step, run.job_id, run.last_error) == (Step.FAILED, None, event.reason)
    retry, _ = step(run, not_done(phase), LATER + sec(1))
    assert isinstance(retry, RetryScheduled)


def test_completed_predictions_job_short_of_models_is_a_retry() -> None:
    f = not_done(
        Phase.PREDICTIONS, predictions_found=40, predictions_expected=42, job=job("completed")
    )
    event, run = step(with_job(Phase.PREDICTIONS), f, LATER)
    assert event == PredictionsShort(at=LATER, found=40, expected=42)
    assert run.step is Step.FAILED
    assert run.last_error == "predictions job completed with 40/42"
    retry, _ = step(run, f, LATER + sec(1))
    assert isinstance(retry, RetryScheduled)
    assert retry.phase == Phase.PREDICTIONS


# --- job states that are neither success nor failure -------------------------------


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("job_state", ["unknown", None])
def test_unknown_or_missing_job_is_never_read_as_an_outcome(
    phase: Phase, job_state: str | None
) -> None:
    """A lost job is enqueued again (no verdict, no attempt); a job not looked up waits."""
    view = None if job_state is None else job("unknown", processed_at=T0 - timedelta(days=1))
    run = with_job(phase)
    f = not_done(phase, job=view)
    event = decide(run, f, now=T0 + timedelta(days=1), policy=POLICY)
    if job_state is None:
        assert event is None
    else:
        assert event == JobReenqueued(
            at=T0 + timedelta(days=1), phase=phase, job_id=JOB_ID[phase], reason="job not in BullMQ"
        )
        assert evolve(run, event).attempt == run.attempt


@pytest.mark.parametrize("phase", PHASES)
def test_a_lost_job_is_re_enqueued_a_bounded_number_of_times_in_a_row(phase: Phase) -> None:
    """Re-adds are counted from the last request; at ``max_reenqueues`` the run fails
    naming the job and the count; a new request starts the count again."""
    policy = Policy(max_reenqueues=2)
    lost = not_done(phase, job=job("unknown", orphaned=True))
    run = with_job(phase)
    now = T0
    for n in (1, 2):
        now += sec(1)
        event, run = step(run, lost, now, policy)
        assert isinstance(event, JobReenqueued)
        assert event.reason == "orphaned job hash (in no state list)"
        assert (run.reenqueues, run.attempt, run.state) == (n, 1, STATE_OF[phase])
    event, run = step(run, lost, now + sec(1), policy)
    assert isinstance(event, RunFailed)
    assert event.reason == (
        f"{phase} job {JOB_ID[phase]} lost: still orphaned job hash (in no state list) "
        "after 2 re-enqueues in a row"
    )
    assert run.state is State.FAILED
    again = evolve(
        apply(
            with_job(phase),
            JobReenqueued(at=T0, phase=phase, job_id=JOB_ID[phase], reason="x"),
            JobFailed(at=T0, phase=phase, reason="boom"),
            RetryScheduled(at=T0, phase=phase, not_before=T0 + sec(1)),
        ),
        REQUESTED[phase](at=T0 + sec(1), job_id=JOB_ID[phase], attempt=2),
    )
    assert again.reenqueues == 0


def test_every_bullmq_state_has_a_meaning() -> None:
    assert set(MEANING) == set(JobState)
    assert {str(s) for s in JobState} == {
        "completed", "failed", "delayed", "prioritized", "active", "waiting",
        "waiting-children", "unknown",
    }  # fmt: skip
    assert JobView(state="something-new").meaning is JobMeaning.WAITING  # type: ignore[arg-type]


@pytest.mark.parametrize("phase", PHASES)
def test_a_state_retro_does_not_know_waits_and_never_re_enqueues(phase: Phase) -> None:
    view = JobView(state=JobState.WAITING, unrecognized="something-new", created_at=T0)
    f = not_done(phase, job=view)
    assert decide(with_job(phase), f, now=T0 + timedelta(hours=5), policy=POLICY) is None


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("job_state", ["waiting", "prioritized", "delayed", "waiting-children"])
def test_a_job_waiting_past_its_queue_wait_budget_is_charged_only_if_configured(
    phase: Phase, job_state: str
) -> None:
    run = with_job(phase)
    late = job(job_state, created_at=T0, waiting_for=601.0)
    f = not_done(phase, job=late, workers=0)
    assert decide(run, f, now=T0 + sec(601), policy=POLICY) is None
    charged = Policy(queue_wait_charged=True)
    on_time = not_done(phase, job=job(job_state, created_at=T0, waiting_for=599.0))
    assert decide(run, on_time, now=T0 + sec(599), policy=charged) is None
    event = decide(run, f, now=T0 + sec(601), policy=charged)
    assert isinstance(event, JobFailed)
    why = "waiting for children" if job_state == "waiting-children" else "no worker consuming"
    assert "within 600 s (schedule-to-start)" in event.reason and why in event.reason


def test_why_a_job_waits() -> None:
    waiting = job("prioritized", waiting_for=5.0)
    assert why_waiting(waiting, workers=0, paused=False) is WaitReason.NO_WORKER
    assert why_waiting(waiting, workers=0, paused=True) is WaitReason.PAUSED
    assert why_waiting(waiting, workers=2, paused=False) is WaitReason.UNKNOWN
    assert why_waiting(job("waiting-children"), workers=0, paused=True) is WaitReason.CHILDREN
    # An active job with no worker left: its worker died; shown as no worker.
    assert why_waiting(job("active"), workers=0, paused=True) is WaitReason.NO_WORKER
    assert why_waiting(job("active"), workers=1, paused=False) is None
    assert why_waiting(job("active"), workers=None, paused=False) is None
    assert why_waiting(job("unknown"), workers=0, paused=True) is None
    wait = Waiting(queue="q", seconds=750.0, reason=WaitReason.PAUSED, budget=600.0)
    assert (wait.text, wait.over_budget) == ("waiting 12 min on q: queue paused", True)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("job_state", WAITING_STATES)
def test_queued_job_burns_no_attempt(phase: Phase, job_state: str) -> None:
    run = with_job(phase)
    # long past the budget: a job no worker has taken is not timed out
    f = not_done(phase, job=job(job_state, created_at=T0))
    assert decide(run, f, now=T0 + timedelta(hours=2), policy=POLICY) is None


# --- budgets ------------------------------------------------------------------------


@pytest.mark.parametrize("phase", PHASES)
def test_active_job_times_out_only_beyond_its_budget_from_processed_on(phase: Phase) -> None:
    budget = POLICY.budgets[phase]
    run = with_job(phase)  # requested at T0
    processed = T0 + sec(30)
    f = not_done(phase, job=job("active", processed_at=processed))
    assert decide(run, f, now=processed + sec(budget - 1), policy=POLICY) is None
    assert decide(run, f, now=processed + sec(budget), policy=POLICY) is None
    late = processed + sec(budget + 1)
    event, after = step(run, f, late)
    assert event == PhaseTimedOut(at=late, phase=phase, budget=budget)
    assert after.step is Step.FAILED
    assert after.job_id is None
    assert after.last_error == f"{phase} job ran longer than {budget:g} s"


@pytest.mark.parametrize("phase", PHASES)
def test_budget_counts_from_the_request_when_processed_on_is_older(phase: Phase) -> None:
    # a processedOn left over from an earlier job must not time out this attempt at once
    budget = POLICY.budgets[phase]
    run = with_job(phase, at=T0)
    f = not_done(phase, job=job("active", processed_at=T0 - timedelta(hours=1)))
    assert decide(run, f, now=T0 + sec(budget), policy=POLICY) is None
    event = decide(run, f, now=T0 + sec(budget + 1), policy=POLICY)
    assert isinstance(event, PhaseTimedOut)


def test_budget_counts_from_the_request_when_processed_on_is_unknown() -> None:
    run = with_job(Phase.SETTLEMENT)
    f = not_done(Phase.SETTLEMENT, job=job("active"))
    assert decide(run, f, now=T0 + sec(60), policy=POLICY) is None
    assert isinstance(decide(run, f, now=T0 + sec(61), policy=POLICY), PhaseTimedOut)


def test_budgets_come_from_the_policy() -> None:
    policy = Policy(budgets={Phase.ANALYSIS: 10.0, Phase.PREDICTIONS: 20.0, Phase.SETTLEMENT: 30.0})
    f = not_done(Phase.PREDICTIONS, job=job("active", processed_at=T0))
    run = with_job(Phase.PREDICTIONS)
    assert decide(run, f, now=T0 + sec(20), policy=policy) is None
    assert decide(run, f, now=T0 + sec(21), policy=policy) == PhaseTimedOut(
        at=T0 + sec(21), phase=Phase.PREDICTIONS, budget=20.0
    )


# --- retries --------------------------------------------------------------------------


def test_default_backoff_doubles_from_five_seconds() -> None:
    assert [POLICY.backoff(n) for n in (1, 2, 3)] == [sec(5), sec(10), sec(20)]
    assert POLICY.max_attempts == 3


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(("attempt", "delay"), [(1, 5), (2, 10), (3, 20)])
def test_failure_with_attempts_left_schedules_a_retry_with_backoff(
    phase: Phase, attempt: int, delay: int
) -> None:
    policy = Policy(max_attempts=4)
    run = failed_attempt(phase, attempt=attempt)
    event, after = step(run, not_done(phase), LATER, policy)
    assert event == RetryScheduled(at=LATER, phase=phase, not_before=LATER + sec(delay))
    assert after.step is Step.BACKOFF
    assert after.attempt == attempt
    assert after.not_before == after.next_check_at == LATER + sec(delay)


@pytest.mark.parametrize("phase", PHASES)
def test_backoff_waits_until_not_before_then_requests_the_next_attempt(phase: Phase) -> None:
    not_before = T0 + sec(10)
    run = in_backoff(phase, attempt=2, not_before=not_before)
    f = not_done(phase)
    assert decide(run, f, now=not_before - sec(1), policy=POLICY) is None
    for now in (not_before, not_before + sec(100)):
        event, after = step(run, f, now)
        assert event == REQUESTED[phase](at=now, job_id=JOB_ID[phase], attempt=3)
        assert (after.step, after.attempt, after.not_before) == (Step.JOB, 3, None)
        assert after.requested_at == after.next_check_at == now


@pytest.mark.parametrize("phase", PHASES)
def test_exhausted_attempts_fail_the_run_naming_phase_and_last_error(phase: Phase) -> None:
    run = failed_attempt(phase, attempt=3, reason="ECONNREFUSED redis:6379")
    event, after = step(run, not_done(phase), LATER)
    assert isinstance(event, RunFailed)
    assert event.reason == f"{phase} failed 3 times; last: ECONNREFUSED redis:6379"
    assert after.state is State.FAILED
    assert after.last_error == event.reason
    assert after.finished_at == LATER
    assert after.next_check_at is None


def test_default_policy_fails_after_the_third_attempt_not_before() -> None:
    run = failed_attempt(Phase.ANALYSIS, attempt=2)
    event = decide(run, not_done(Phase.ANALYSIS), now=LATER, policy=POLICY)
    assert isinstance(event, RetryScheduled)
    run = failed_attempt(Phase.ANALYSIS, attempt=3)
    assert isinstance(decide(run, not_done(Phase.ANALYSIS), now=LATER, policy=POLICY), RunFailed)


def test_long_multiline_failure_reasons_are_clipped() -> None:
    reason = "Traceback (most recent call last):\n" + "  frame\n" * 400
    f = not_done(Phase.ANALYSIS, job=job("failed", failed_reason=reason))
    event, run = step(with_job(Phase.ANALYSIS, attempt=3), f, LATER)
    assert isinstance(event, JobFailed)
    assert len(event.reason) <= REASON_LIMIT
    assert "\n" not in event.reason
    final, _ = step(run, not_done(Phase.ANALYSIS), LATER)
    assert isinstance(final, RunFailed)
    assert len(final.reason) <= REASON_LIMIT
    assert "\n" not in final.reason
    assert final.reason.startswith("analysis failed 3 times; last: Traceback")


def test_failed_job_without_a_reason_says_so() -> None:
    f = not_done(Phase.ANALYSIS, job=job("failed"))
    event = decide(with_job(Phase.ANALYSIS), f, now=LATER, policy=POLICY)
    assert event == JobFailed(at=LATER, phase=Phase.ANALYSIS, reason="no reason given")


# --- the match itself -----------------------------------------------------------------

EVERY_LIVE_STEP = [
    seeded(),
    *(with_job(p) for p in PHASES),
    *(failed_attempt(p) for p in PHASES),
    *(in_backoff(p, not_before=T0 + timedelta(hours=1)) for p in PHASES),
    entered(Phase.PREDICTIONS),
    entered(Phase.SETTLEMENT),
    apply(with_job(Phase.SETTLEMENT), SettlementCompleted(at=T0)),
]
STEP_IDS = [f"{r.state}-{r.step}" for r in EVERY_LIVE_STEP]


@pytest.mark.parametrize("run", EVERY_LIVE_STEP, ids=STEP_IDS)
def test_vanished_match_fails_the_run_from_any_live_step(run: Run) -> None:
    event, after = step(run, facts(match_found=False), LATER)
    assert event == RunFailed(at=LATER, reason="match m-42 no longer exists")
    assert after.state is State.FAILED
    assert after.job_id is None


@pytest.mark.parametrize("status", ["postponed", "cancelled"])
@pytest.mark.parametrize("run", EVERY_LIVE_STEP, ids=STEP_IDS)
def test_called_off_match_cancels_the_run(run: Run, status: str) -> None:
    event, after = step(run, facts(match_status=status), LATER)
    assert event == RunCancelled(at=LATER, reason=f"match {status}")
    assert after.state is State.CANCELLED
    assert after.finished_at == LATER
    assert after.next_check_at is None


@pytest.mark.parametrize("status", ["abandoned", "FINISHED", "", None])
@pytest.mark.parametrize("run", EVERY_LIVE_STEP, ids=STEP_IDS)
def test_unknown_match_status_fails_the_run(run: Run, status: str | None) -> None:
    event, after = step(run, facts(match_status=status), LATER)
    assert event == RunFailed(at=LATER, reason=f"unknown match status {status!r}")
    assert after.state is State.FAILED


def test_unknown_match_status_reason_is_clipped() -> None:
    # The status comes from the host database; a long one must not make a reason
    # longer than REASON_LIMIT.
    event = decide(seeded(), facts(match_status="x" * 1000), now=LATER, policy=POLICY)
    assert isinstance(event, RunFailed)
    assert len(event.reason) <= REASON_LIMIT


@pytest.mark.parametrize("state", sorted(TERMINAL))
@pytest.mark.parametrize(
    "f",
    [
        facts(),
        facts(match_found=False),
        facts(match_status="postponed"),
        facts(match_status="abandoned"),
        done(Phase.SETTLEMENT, job=job("failed")),
    ],
)
def test_terminal_states_decide_nothing(state: State, f: Facts) -> None:
    assert decide(in_state(state), f, now=LATER, policy=POLICY) is None


# --- evolve and project -----------------------------------------------------------


SAMPLE_EVENTS: dict[str, Event] = {
    "RunSeeded": seed_event(),
    "AnalysisRequested": AnalysisRequested(at=T0, job_id="j", attempt=1),
    "AnalysisSkipped": AnalysisSkipped(at=T0, reason="present"),
    "AnalysisCompleted": AnalysisCompleted(at=T0),
    "PredictionsRequested": PredictionsRequested(at=T0, job_id="j", attempt=1),
    "PredictionsCompleted": PredictionsCompleted(at=T0, found=3, expected=3),
    "PredictionsShort": PredictionsShort(at=T0, found=1, expected=3),
    "SettlementRequested": SettlementRequested(at=T0, job_id="j", attempt=1),
    "SettlementSkipped": SettlementSkipped(at=T0, reason="not finished"),
    "SettlementCompleted": SettlementCompleted(at=T0),
    "JobFailed": JobFailed(at=T0, phase=Phase.ANALYSIS, reason="boom"),
    "PhaseTimedOut": PhaseTimedOut(at=T0, phase=Phase.ANALYSIS, budget=120.0),
    "RetryScheduled": RetryScheduled(at=T0, phase=Phase.ANALYSIS, not_before=T0),
    "JobReenqueued": JobReenqueued(at=T0, phase=Phase.ANALYSIS, job_id="j", reason="lost"),
    "RunFailed": RunFailed(at=T0, reason="gave up"),
    "RunCancelled": RunCancelled(at=T0, reason="match postponed"),
    "RunCompleted": RunCompleted(at=T0),
    "RunRearmed": RunRearmed(at=T0),
}


def test_sample_events_cover_every_event_type() -> None:
    assert set(SAMPLE_EVENTS) == set(EVENT_TYPES)
    assert all(type(e) is EVENT_TYPES[name] for name, e in SAMPLE_EVENTS.items())


@pytest.mark.parametrize("state", list(State))
def test_every_event_outside_the_table_is_illegal(state: State) -> None:
    run = in_state(state)
    illegal = set(EVENT_TYPES) - legal_triggers(state)
    assert "RunSeeded" in illegal
    for name in sorted(illegal):
        with pytest.raises(IllegalTransition, match=name):
            evolve(run, SAMPLE_EVENTS[name])


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (State.PENDING, "RunCompleted"),
        (State.PENDING, "AnalysisCompleted"),
        (State.PENDING, "PredictionsRequested"),
        (State.ANALYZING, "PredictionsCompleted"),
        (State.PREDICTING, "SettlementRequested"),
        (State.PREDICTING, "AnalysisRequested"),
        (State.SETTLING, "AnalysisSkipped"),
        (State.DONE, "RunRearmed"),
        (State.CANCELLED, "RunRearmed"),
        (State.FAILED, "RunFailed"),
        (State.DONE, "AnalysisRequested"),
    ],
)
def test_evolve_rejects_impossible_events(state: State, name: str) -> None:
    run = in_state(state)
    with pytest.raises(IllegalTransition):
        evolve(run, SAMPLE_EVENTS[name])


@pytest.mark.parametrize("state", [s for s in State if s is not State.FAILED])
def test_rearm_is_only_legal_from_failed(state: State) -> None:
    with pytest.raises(IllegalTransition, match="RunRearmed is not allowed"):
        evolve(in_state(state), RunRearmed(at=LATER))


def test_project_requires_a_seed_first() -> None:
    with pytest.raises(IllegalTransition, match="empty history"):
        project([])
    with pytest.raises(IllegalTransition, match="must start with RunSeeded"):
        project([AnalysisRequested(at=T0, job_id="j", attempt=1)])
    with pytest.raises(IllegalTransition):
        project([seed_event(), seed_event(T0 + sec(1))])


def test_project_is_a_fold_of_evolve() -> None:
    history: list[Event] = [
        seed_event(),
        AnalysisRequested(at=T0 + sec(1), job_id=JOB_ID[Phase.ANALYSIS], attempt=1),
        JobFailed(at=T0 + sec(2), phase=Phase.ANALYSIS, reason="boom"),
        RetryScheduled(at=T0 + sec(3), phase=Phase.ANALYSIS, not_before=T0 + sec(8)),
    ]
    run = seeded()
    for event in history[1:]:
        run = evolve(run, event)
    projected = project(history)
    assert projected == run
    assert projected.version == len(history)
    assert projected.step is Step.BACKOFF
    assert projected.last_error == "boom"


# --- next_check_at -----------------------------------------------------------------------


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_runs_have_no_next_check(state: State) -> None:
    assert in_state(state).next_check_at is None


def test_backoff_is_checked_at_not_before() -> None:
    run = in_backoff(Phase.PREDICTIONS, not_before=T0 + sec(600))
    assert run.next_check_at == T0 + sec(600)


@pytest.mark.parametrize(
    "event",
    [
        AnalysisRequested(at=T0 + sec(7), job_id="j", attempt=1),
        AnalysisSkipped(at=T0 + sec(7), reason="present"),
    ],
)
def test_other_live_runs_are_checked_at_the_event_time(event: Event) -> None:
    run = evolve(seeded(), event)
    assert run.next_check_at == T0 + sec(7)
    failed = evolve(
        with_job(Phase.ANALYSIS), JobFailed(at=T0 + sec(9), phase="analysis", reason="x")
    )
    assert failed.next_check_at == T0 + sec(9)


def test_every_live_step_has_a_next_check() -> None:
    assert all(r.next_check_at is not None for r in EVERY_LIVE_STEP)


# --- clip -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("boom", "boom"),
        ("  line one\nline two\r\n\tthree  ", "line one\\nline two\\r\\n\\tthree"),
        ("ansi \x1b[31mred\u2028x", "ansi \\x1b[31mred\\u2028x"),
        ("x" * REASON_LIMIT, "x" * REASON_LIMIT),
        ("x" * (REASON_LIMIT + 1), "x" * (REASON_LIMIT - 1) + "…"),
        ("", ""),
    ],
)
def test_clip(reason: str, expected: str) -> None:
    assert clip(reason) == expected


def test_clip_keeps_long_multiline_reasons_on_one_line_within_the_limit() -> None:
    clipped = clip("error\n" * 1000)
    assert "\n" not in clipped and clipped.startswith("error\\nerror\\n")
    assert len(clipped) == REASON_LIMIT
    assert clipped.endswith("…")


# --- run shape -----------------------------------------------------------------------


def test_requested_events_share_a_base() -> None:
    for phase in PHASES:
        event = REQUESTED[phase](at=T0, job_id="j", attempt=1)
        assert isinstance(event, Requested)
        assert event.PHASE is phase


def test_run_phase_follows_state() -> None:
    assert seeded().phase is None
    assert in_state(State.DONE).phase is None
    for phase in PHASES:
        assert with_job(phase).phase is phase
    assert dataclasses.replace(seeded(), state=State.SETTLING).phase is Phase.SETTLEMENT


# --- a phase's data in while its job is still active (issue 10, slots) --------------


@pytest.mark.parametrize("phase", list(Phase))
def test_a_phase_is_left_once_bullmq_has_its_job_finished(phase: Phase) -> None:
    """The worker commits its data, then reports the job: in between, the run waits,
    so the next phase's job is never outstanding beside this one (one slot, one job)."""
    run = with_job(phase)
    budget = POLICY.budgets[phase]
    finishing = job("active", processed_at=T0)
    assert decide(run, done(phase, job=finishing, workers=1), now=LATER, policy=POLICY) is None
    # None counted is not "no worker": still waits.
    assert decide(run, done(phase, job=finishing, workers=None), now=LATER, policy=POLICY) is None
    left = (job("completed", processed_at=T0), "ended")
    past = (finishing, "past its budget")
    for view, why in [left, past]:
        now = LATER if why == "ended" else T0 + sec(budget + 1)
        event = decide(run, done(phase, job=view, workers=1), now=now, policy=POLICY)
        assert event is not None and not isinstance(event, PhaseTimedOut), why
        assert event.TYPE.endswith(("Completed", "Short")), (why, event)
    # With no worker left the job cannot finish: the data wins.
    event = decide(run, done(phase, job=finishing, workers=0), now=LATER, policy=POLICY)
    assert event is not None and event.TYPE.endswith(("Completed", "Short"))
