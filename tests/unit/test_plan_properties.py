"""Properties of :func:`retro.machine.plan`, one per rule, under arbitrary facts (hypothesis).

Runs are reached the way a daemon reaches them: from a seed, tick after tick of
random facts, each tick one whole plan. Every property is checked against
something other than ``plan`` itself: the replay of the history (``project``),
the transition table, and :func:`reference`, a plain restatement of the rules
that tracks the job by the projections rather than the way ``plan`` does.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retro.events import (
    REQUESTED,
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    JobFailed,
    JobReenqueued,
    Phase,
    PredictionsCompleted,
    PredictionsRequested,
    Requested,
    RetryScheduled,
    RunSeeded,
)
from retro.machine import (
    MAX_STEPS_PER_RUN,
    PLAYABLE_STATUSES,
    TERMINAL,
    Facts,
    JobState,
    JobView,
    Plan,
    Policy,
    Run,
    Step,
    decide,
    evolve,
    legal_steps,
    plan,
    project,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CHECK = settings(max_examples=150, deadline=None, database=None)

JOB_STATES = [s.value for s in JobState] + ["paused"]
statuses = st.integers(0, 29).flatmap(
    lambda n: (
        st.sampled_from(["postponed", "cancelled", "abandoned", None])
        if n == 0
        else st.sampled_from(sorted(PLAYABLE_STATUSES))
    )
)
jobs = st.integers(0, 5).flatmap(
    lambda n: (
        st.none()
        if n == 0
        else st.fixed_dictionaries(
            {
                "state": st.sampled_from(JOB_STATES),
                "processed_ago": st.one_of(st.none(), st.integers(-60, 1_000)),
                "created_ago": st.one_of(st.none(), st.integers(0, 1_000)),
                "unrecoverable": st.integers(0, 5).map(lambda n: n == 0),
                "orphaned": st.booleans(),
            }
        )
    )
)
fact_specs = st.fixed_dictionaries(
    {
        "match_found": st.integers(0, 29).map(bool),
        "match_status": statuses,
        "home_score": st.one_of(st.none(), st.integers(0, 5)),
        "away_score": st.one_of(st.none(), st.integers(0, 5)),
        # the phase's data is more often missing than present, so runs stay in flight
        "has_analysis": st.integers(0, 3).map(lambda n: n == 0),
        "predictions_expected": st.integers(1, 4),
        "shortfall": st.sampled_from([-1, 0, 1, 1, 2]),
        "unscored": st.sampled_from([0, 1, 3, 3]),
        "job": jobs,
        "workers": st.one_of(st.none(), st.integers(0, 2)),
        # now and then the run's backfill is paused (issue 11): no job starts
        "backfill_paused": st.integers(0, 5).map(lambda n: n == 0),
    }
)
policies = st.builds(
    Policy,
    max_attempts=st.integers(1, 4),
    max_reenqueues=st.integers(0, 2),
    queue_wait_charged=st.booleans(),
    retry_backoff=st.sampled_from([0.0, 0.0, 5.0]),  # 0: a retry is due at once
)
ticks = st.lists(st.tuples(fact_specs, st.integers(0, 400)), max_size=8)


def build_facts(spec: dict[str, Any], now: datetime) -> Facts:
    values = dict(spec)
    values["predictions_found"] = max(values["predictions_expected"] - values.pop("shortfall"), 0)
    job = values.pop("job")
    if job is not None:
        processed, created = job["processed_ago"], job["created_ago"]
        values["job"] = JobView(
            state=job["state"],
            processed_at=None if processed is None else now - timedelta(seconds=processed),
            created_at=None if created is None else now - timedelta(seconds=created),
            failed_reason="boom",
            unrecoverable=job["unrecoverable"],
            orphaned=job["orphaned"],
        )
    return Facts(**values)


def seed_event() -> RunSeeded:
    return RunSeeded(
        at=T0,
        run_id="run-1",
        match_id="m-42",
        gaps=("analysis", "predictions", "settlement"),
        found=0,
        expected=3,
    )


def reach(
    steps: list[tuple[dict[str, Any], int]], policy: Policy
) -> tuple[Run, list[Event], datetime]:
    """A run as a daemon reaches it: one whole plan per tick of random facts."""
    history: list[Event] = [seed_event()]
    run, now = project(history), T0
    for spec, elapsed in steps:
        now += timedelta(seconds=elapsed)
        planned = plan(run, build_facts(spec, now), now=now, policy=policy)
        history += planned.events
        run = planned.final
    return run, history, now


def without_job(facts: Facts) -> Facts:
    return replace(facts, job=None, workers=None)


def reference(run: Run, facts: Facts, now: datetime, policy: Policy, limit: int) -> list[Event]:
    """The rules restated plainly, tracking the job by the projections: the facts
    show the job only while the projection still holds the job the run started
    with; a request or a re-enqueue ends the list (inclusive), a terminal state
    too; a request of the job the run started with, after any event, is left out.
    """
    events: list[Event] = []
    history = [run]
    while len(events) < limit and history[-1].state not in TERMINAL:
        current = history[-1]
        seen = facts if current.job_id == run.job_id else without_job(facts)
        event = decide(current, seen, now=now, policy=policy)
        if event is None:
            break
        if events and isinstance(event, Requested) and event.job_id == run.job_id:
            break
        events.append(event)
        if isinstance(event, Requested | JobReenqueued):
            break
        history.append(evolve(current, event))
    return events


def after_effect(planned: Plan, facts: Facts) -> Facts:
    """The facts as the shell reads them on the next look, when nothing outside retro
    has moved: the host's data is the same (retro's effects never write host
    tables); a job the plan asked for (``…Requested``, ``JobReenqueued``) is now
    freshly queued (waiting, for no time yet); a job the run moved past is not read
    at all (the shell reads only the run's current job); otherwise BullMQ shows the
    same job as before (nothing was enqueued or removed for it)."""
    last = planned.events[-1] if planned.events else None
    if isinstance(last, Requested | JobReenqueued):
        fresh = JobView(state=JobState.WAITING, created_at=last.at, waiting_for=0.0)
        return replace(facts, job=fresh)
    if planned.final.job_id != planned.run.job_id:
        return without_job(facts)
    return facts


@st.composite
def built(draw: st.DrawFn) -> tuple[Run, list[Event], datetime]:
    """A run in flight at any (state, step), built from legal events: a phase entered,
    some failed attempts with their back-offs, then a request, a verdict or a
    back-off; a job id of the phase's template (as ``decide`` would request)."""
    phase = draw(st.sampled_from(list(Phase)))
    job_id = Policy().job_id(phase, "m-42")
    now = T0
    history: list[Event] = [seed_event()]
    if phase is not Phase.ANALYSIS:
        history.append(AnalysisSkipped(at=now, reason="present"))
    if phase is Phase.SETTLEMENT:
        history.append(PredictionsCompleted(at=now, found=3, expected=3))
    attempts = draw(st.integers(0, 3))
    for attempt in range(1, attempts + 1):
        now += timedelta(seconds=draw(st.integers(0, 300)))
        history.append(REQUESTED[phase](at=now, job_id=job_id, attempt=attempt))
        for _ in range(draw(st.integers(0, 2))):
            history.append(JobReenqueued(at=now, phase=phase, job_id=job_id, reason="lost"))
        if attempt == attempts and draw(st.booleans()):
            break  # the job is outstanding
        judged = now - timedelta(seconds=draw(st.integers(0, 60)))
        history.append(JobFailed(at=now, phase=phase, reason="boom", job_created_at=judged))
        if attempt == attempts and draw(st.booleans()):
            break  # failed, not yet scheduled
        back_off = timedelta(seconds=draw(st.sampled_from([0, 5, 10])))
        history.append(RetryScheduled(at=now, phase=phase, not_before=now + back_off))
    return project(history), history, now


scenario = st.tuples(
    st.one_of(ticks.map(lambda t: ("reach", t)), built().map(lambda b: ("built", b))),
    fact_specs,
    st.integers(0, 400),
    policies,
)


def scene(data: tuple[Any, ...]) -> tuple[Run, list[Event], Facts, datetime, Policy]:
    (how, start), spec, elapsed, policy = data
    if how == "reach":
        run, history, now = reach(start, policy)
    else:
        run, history, now = start
    now += timedelta(seconds=elapsed)
    return run, history, build_facts(spec, now), now, policy


@CHECK
@given(data=scenario)
def test_a_plan_holds_only_legal_events_and_its_projections_are_the_replay(
    data: tuple[Any, ...],
) -> None:
    run, history, facts, now, policy = scene(data)
    planned = plan(run, facts, now=now, policy=policy)
    assert len(planned.runs) == len(planned.events)
    for i, (before, event, after) in enumerate(planned.steps()):
        assert before.step in legal_steps(before.state, event.TYPE)
        assert after == project(history + list(planned.events[: i + 1]))
        assert after.version == run.version + i + 1
    assert planned.final == project(history + list(planned.events))


@CHECK
@given(data=scenario)
def test_a_plan_asks_for_at_most_one_job_and_only_as_its_last_event(
    data: tuple[Any, ...],
) -> None:
    run, _, facts, now, policy = scene(data)
    events = plan(run, facts, now=now, policy=policy).events
    asks = [i for i, e in enumerate(events) if isinstance(e, Requested | JobReenqueued)]
    assert asks in ([], [len(events) - 1])
    assert all(e.at == now for e in events)


@CHECK
@given(data=scenario, limit=st.integers(1, 4))
def test_a_plan_is_bounded_and_a_shorter_bound_cuts_the_same_plan(
    data: tuple[Any, ...], limit: int
) -> None:
    run, _, facts, now, policy = scene(data)
    whole = plan(run, facts, now=now, policy=policy)
    cut = plan(run, facts, now=now, policy=policy, limit=limit)
    assert len(whole.events) < MAX_STEPS_PER_RUN  # one reading never needs the bound
    assert len(cut.events) <= limit
    assert cut.events == whole.events[:limit]
    assert cut.runs == whole.runs[:limit]


@CHECK
@given(data=scenario)
def test_a_plan_matches_the_reference_rules(data: tuple[Any, ...]) -> None:
    """Same events as :func:`reference`, which shows the job to ``decide`` only while
    the projection still holds the job the run started with (the dropped-job rule)
    and leaves out a request of that job after any event (the stop-before-retry rule)."""
    run, _, facts, now, policy = scene(data)
    planned = plan(run, facts, now=now, policy=policy)
    assert list(planned.events) == reference(run, facts, now, policy, MAX_STEPS_PER_RUN)


@CHECK
@given(data=scenario)
def test_a_plan_stops_before_a_retry_of_the_job_it_judged_and_says_again(
    data: tuple[Any, ...],
) -> None:
    run, _, facts, now, policy = scene(data)
    planned = plan(run, facts, now=now, policy=policy)
    retries = [e for e in planned.events[1:] if isinstance(e, Requested) and e.job_id == run.job_id]
    assert retries == []
    nxt = decide(planned.final, after_effect(planned, facts), now=now, policy=policy)
    stopped_short = (
        bool(planned.events)
        and planned.final.state not in TERMINAL
        and not isinstance(planned.events[-1], Requested | JobReenqueued)
        and isinstance(nxt, Requested)
        and nxt.job_id == run.job_id
    )
    assert planned.again is stopped_short


@CHECK
@given(data=scenario)
def test_a_plan_applied_to_its_own_result_plans_nothing_new(data: tuple[Any, ...]) -> None:
    """The second plan sees the projection the first one produced and the facts as
    the shell reads them after the effect (:func:`after_effect`), at the same
    instant. It plans nothing, except after ``again``: then exactly the retry the
    first plan stopped short of, after which nothing again."""
    run, history, facts, now, policy = scene(data)
    first = plan(run, facts, now=now, policy=policy)
    seen = after_effect(first, facts)
    second = plan(first.final, seen, now=now, policy=policy)
    if not first.again:
        assert second.events == ()
        return
    assert len(second.events) == 1
    retry = second.events[0]
    assert isinstance(retry, Requested) and retry.job_id == run.job_id
    third = plan(second.final, after_effect(second, seen), now=now, policy=policy)
    assert third.events == ()
    assert project([*history, *first.events, *second.events]) == second.final


@CHECK
@given(data=scenario)
def test_the_same_facts_always_give_the_same_plan(data: tuple[Any, ...]) -> None:
    run, _, facts, now, policy = scene(data)
    planned = plan(run, facts, now=now, policy=policy)
    plan(run, without_job(facts), now=now + timedelta(hours=1), policy=policy)  # in between
    again = plan(copy.deepcopy(run), copy.deepcopy(facts), now=now, policy=copy.deepcopy(policy))
    assert again == planned


@CHECK
@given(data=scenario)
def test_a_paused_plan_starts_no_job_and_judges_as_an_unpaused_one(
    data: tuple[Any, ...],
) -> None:
    """With its backfill paused a plan holds no ``…Requested`` and no
    ``JobReenqueued``, and is exactly the unpaused plan on the same facts cut
    before its first such event: every judgement (a job failed, a phase done, the
    run failed or cancelled) still happens, nothing else changes."""
    run, _, facts, now, policy = scene(data)
    paused = plan(run, replace(facts, backfill_paused=True), now=now, policy=policy)
    free = plan(run, replace(facts, backfill_paused=False), now=now, policy=policy)
    assert not any(isinstance(e, Requested | JobReenqueued) for e in paused.events)
    starts = [i for i, e in enumerate(free.events) if isinstance(e, Requested | JobReenqueued)]
    cut = starts[0] if starts else len(free.events)
    assert paused.events == free.events[:cut]
    assert paused.runs == free.runs[:cut]
    assert not paused.again  # nothing to look at again until it is resumed


def test_a_paused_run_judges_its_job_then_rests_at_the_next_phase_holding_no_slot() -> None:
    run, _ = with_job()
    done = replace(NO_ANALYSIS, has_analysis=True, predictions_expected=3, backfill_paused=True)
    job = JobView(state=JobState.COMPLETED, created_at=T0)
    planned = plan(run, replace(done, job=job), now=T0, policy=Policy())
    assert [type(e) for e in planned.events] == [AnalysisCompleted]
    assert (planned.final.state, planned.final.step) == ("predicting", Step.ENTER)
    assert planned.run.holds_slot and not planned.final.holds_slot
    resumed = plan(planned.final, replace(done, backfill_paused=False), now=T0, policy=Policy())
    assert [type(e) for e in resumed.events] == [PredictionsRequested]


# --- the rules on hand-picked runs -------------------------------------------------

FAILED_JOB = JobView(state=JobState.FAILED, created_at=T0, failed_reason="boom")
NO_ANALYSIS = Facts(match_found=True, match_status="finished", home_score=1, away_score=0)


def with_job() -> tuple[Run, list[Event]]:
    history: list[Event] = [
        seed_event(),
        AnalysisRequested(at=T0, job_id="analyze-retro-m-42", attempt=1),
    ]
    return project(history), history


def test_a_failed_job_with_no_backoff_is_judged_then_the_plan_stops_before_its_retry() -> None:
    run, _ = with_job()
    now = T0 + timedelta(seconds=10)
    facts = replace(NO_ANALYSIS, job=FAILED_JOB)
    planned = plan(run, facts, now=now, policy=Policy(retry_backoff=0.0))
    assert [type(e) for e in planned.events] == [JobFailed, RetryScheduled]
    assert planned.again
    assert planned.final.step is Step.BACKOFF and planned.final.job_id is None


def test_with_a_backoff_the_plan_waits_and_does_not_say_again() -> None:
    run, _ = with_job()
    facts = replace(NO_ANALYSIS, job=FAILED_JOB)
    planned = plan(run, facts, now=T0 + timedelta(seconds=10), policy=Policy(retry_backoff=5.0))
    assert [type(e) for e in planned.events] == [JobFailed, RetryScheduled]
    assert not planned.again


def test_adopting_a_job_records_it_on_the_event_and_the_final_projection() -> None:
    run = project([seed_event()])
    planned = plan(run, NO_ANALYSIS, now=T0, policy=Policy())
    adopted = planned.adopt(T0 - timedelta(minutes=1))
    last = adopted.events[-1]
    assert isinstance(last, Requested) and last.adopted_created_at == T0 - timedelta(minutes=1)
    assert adopted.final == project([seed_event(), *adopted.events])
    assert adopted.final.adopted_created_at == T0 - timedelta(minutes=1)


def test_only_a_plan_that_ends_with_a_request_can_adopt() -> None:
    run, _ = with_job()
    planned = plan(run, NO_ANALYSIS, now=T0, policy=Policy())
    assert planned.events == ()
    with pytest.raises(ValueError, match="ends with a request"):
        planned.adopt(T0)


@CHECK
@given(data=scenario)
def test_a_job_the_run_moved_past_is_dropped_from_the_facts(data: tuple[Any, ...]) -> None:
    """Once the projection no longer holds the job the facts describe, the plan stops
    showing that job (and its worker count) to ``decide``; until then, the facts
    stay as given."""
    run, _, facts, now, policy = scene(data)
    planned = plan(run, facts, now=now, policy=policy)
    moved = any(after.job_id != run.job_id for after in planned.runs)
    assert planned.facts == (without_job(facts) if moved else facts)


def test_a_lost_job_is_re_enqueued_once_per_plan() -> None:
    """The re-enqueue is the plan's last event: the same facts would ask again."""
    run, _ = with_job()
    lost = replace(NO_ANALYSIS, job=JobView(state=JobState.UNKNOWN))
    planned = plan(run, lost, now=T0, policy=Policy(max_reenqueues=3))
    assert [type(e) for e in planned.events] == [JobReenqueued]
    assert not planned.again
