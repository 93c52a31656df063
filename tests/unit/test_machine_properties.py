"""Properties of the run machine under arbitrary facts and time (hypothesis).

From a seeded run, whatever the database and the queue show tick after tick,
``decide`` only ever proposes legal transitions, terminal states absorb, the
projection is the fold of the history, and every event survives its stored form.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from retro.events import (
    REQUESTED,
    AnalysisSkipped,
    Event,
    Phase,
    PredictionsCompleted,
    Requested,
    RunCancelled,
    RunFailed,
    RunSeeded,
    from_record,
    to_record,
)
from retro.machine import (
    PLAYABLE_STATUSES,
    TERMINAL,
    Facts,
    JobView,
    Policy,
    Run,
    State,
    decide,
    evolve,
    legal_triggers,
    project,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy()
FAST = settings(max_examples=200, deadline=None, database=None)

JOB_STATES = [
    "completed",
    "failed",
    "active",
    "waiting",
    "delayed",
    "prioritized",
    "waiting-children",
    "paused",
    "unknown",
]

# Mostly playable statuses, so runs get deep; now and then one that ends the run.
ending_statuses = st.one_of(
    st.sampled_from(["postponed", "cancelled", "abandoned", "FINISHED", "", None]),
    st.text(max_size=8),
)
statuses = st.integers(0, 39).flatmap(
    lambda n: ending_statuses if n == 0 else st.sampled_from(sorted(PLAYABLE_STATUSES))
)
scores = st.one_of(st.none(), st.integers(0, 9))
jobs = st.integers(0, 4).flatmap(
    lambda n: (
        st.none()
        if n == 0
        else st.fixed_dictionaries(
            {
                "state": st.sampled_from(JOB_STATES),
                # processedOn relative to the tick, in seconds before ``now`` (negative: skew)
                "processed_ago": st.one_of(st.none(), st.integers(-60, 1_000)),
                "failed_reason": st.one_of(st.none(), st.text(max_size=40)),
            }
        )
    )
)
# The phase's data is more often missing than present, so retries get explored.
fact_specs = st.fixed_dictionaries(
    {
        "match_found": st.integers(0, 39).map(bool),
        "match_status": statuses,
        "home_score": scores,
        "away_score": scores,
        "has_analysis": st.integers(0, 3).map(lambda n: n == 0),
        "predictions_expected": st.integers(0, 5),
        # models short of expected (negative: more than expected)
        "shortfall": st.sampled_from([-1, 0, 1, 1, 2, 3]),
        "unscored": st.integers(0, 3),
        "job": jobs,
    }
)
ticks = st.lists(st.tuples(fact_specs, st.integers(0, 400)), min_size=5, max_size=25)


def build_facts(spec: dict[str, Any], now: datetime) -> Facts:
    values = dict(spec)
    values["predictions_found"] = max(values["predictions_expected"] - values.pop("shortfall"), 0)
    job = values.pop("job")
    if job is not None:
        ago = job["processed_ago"]
        values["job"] = JobView(
            state=job["state"],
            processed_at=None if ago is None else now - timedelta(seconds=ago),
            failed_reason=job["failed_reason"],
        )
    return Facts(**values)


def seed_event(at: datetime = T0) -> RunSeeded:
    return RunSeeded(
        at=at,
        run_id="run-1",
        match_id="m-42",
        gaps=("analysis", "predictions", "settlement"),
        found=0,
        expected=3,
    )


def assert_round_trips(event: Event) -> None:
    assert from_record(*to_record(event)) == event
    type_, data, at = to_record(event)
    stored = json.loads(json.dumps(data))
    assert from_record(type_, stored, at) == event


def drive(
    run: Run, history: list[Event], steps: list[tuple[dict[str, Any], int]], now: datetime
) -> tuple[Run, datetime]:
    """Tick through ``steps``, checking each decision; returns the final run and clock."""
    for spec, elapsed in steps:
        now += timedelta(seconds=elapsed)
        event = decide(run, build_facts(spec, now), now=now, policy=POLICY)
        if run.state in TERMINAL:
            assert event is None
            continue
        if event is None:
            continue
        assert event.TYPE in legal_triggers(run.state)
        assert event.at == now
        before = run
        run = evolve(run, event)
        history.append(event)
        assert run.version == len(history) == before.version + 1
        assert_round_trips(event)
        assert run.attempt <= POLICY.max_attempts
        assert (run.next_check_at is None) == (run.state in TERMINAL)
        if isinstance(event, Requested):
            assert event.attempt in (1, before.attempt + 1)
    return run, now


@FAST
@given(steps=ticks)
def test_any_facts_yield_only_legal_transitions_and_a_consistent_projection(
    steps: list[tuple[dict[str, Any], int]],
) -> None:
    seed = seed_event()
    history: list[Event] = [seed]
    assert_round_trips(seed)
    run, _ = drive(project(history), history, steps, T0)
    assert project(history) == run
    assert run.version == len(history)


@settings(max_examples=100, deadline=None, database=None)
@given(
    first=ticks,
    ending=st.sampled_from([RunFailed, RunCancelled]),
    then=st.lists(st.tuples(fact_specs, st.integers(0, 400)), max_size=10),
)
def test_terminal_states_absorb(
    first: list[tuple[dict[str, Any], int]],
    ending: type[RunFailed | RunCancelled],
    then: list[tuple[dict[str, Any], int]],
) -> None:
    history: list[Event] = [seed_event()]
    run, now = drive(project(history), history, first, T0)
    if run.state not in TERMINAL:
        now += timedelta(seconds=1)
        run = evolve(run, ending(at=now, reason="ended by the test"))
    frozen = run
    for spec, elapsed in then:
        now += timedelta(seconds=elapsed)
        assert decide(run, build_facts(spec, now), now=now, policy=POLICY) is None
    assert run == frozen


def enter(phase: Phase) -> tuple[Run, list[Event]]:
    history: list[Event] = [seed_event()]
    if phase is not Phase.ANALYSIS:
        history.append(AnalysisSkipped(at=T0, reason="present"))
    if phase is Phase.SETTLEMENT:
        history.append(PredictionsCompleted(at=T0, found=3, expected=3))
    return project(history), history


@FAST
@given(
    phase=st.sampled_from(list(Phase)),
    max_attempts=st.integers(1, 5),
    how=st.sampled_from(["failed", "completed", "active"]),
    elapsed=st.lists(st.integers(1, 400), min_size=1, max_size=10),
)
def test_an_always_failing_job_fails_the_run_after_max_attempts(
    phase: Phase, max_attempts: int, how: str, elapsed: list[int]
) -> None:
    policy = Policy(max_attempts=max_attempts)
    run, history = enter(phase)
    # the phase's data never appears; the job fails, completes empty, or hangs
    facts = Facts(
        match_found=True,
        match_status="finished",
        home_score=1,
        away_score=1,
        has_analysis=phase is not Phase.ANALYSIS,
        predictions_found=1 if phase is Phase.PREDICTIONS else 3,
        predictions_expected=3,
        unscored=3,
        job=JobView(state=how, processed_at=T0 - timedelta(days=1), failed_reason="boom"),
    )
    now = T0
    for tick in range(10_000):
        if run.state in TERMINAL:
            break
        now += timedelta(seconds=elapsed[tick % len(elapsed)])
        event = decide(run, facts, now=now, policy=policy)
        if event is not None:
            assert event.TYPE in legal_triggers(run.state)
            run = evolve(run, event)
            history.append(event)
    assert run.state is State.FAILED
    requested = [e for e in history if isinstance(e, REQUESTED[phase])]
    assert [e.attempt for e in requested] == list(range(1, max_attempts + 1))
    last = history[-1]
    assert isinstance(last, RunFailed)
    assert last.reason.startswith(f"{phase} failed {max_attempts} times; last: ")
    assert project(history) == run
