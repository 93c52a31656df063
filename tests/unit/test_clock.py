"""Durations that a jump of retro's wall clock cannot move (issue 9, point 4).

:class:`retro.clock.JobClock` against a hand-driven monotonic clock, and the
machine's two rules that read durations and deadlines: start-to-close from
``active_for``, and a back-off deadline further ahead than it could reach.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retro.clock import JobClock
from retro.events import (
    AnalysisRequested,
    JobFailed,
    Phase,
    PhaseTimedOut,
    RetryScheduled,
    RunSeeded,
)
from retro.machine import Facts, JobView, Policy, Run, Step, backoff_over, decide, evolve, seed

T0 = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Ticking:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def active(processed: datetime, created: datetime = T0) -> JobView:
    return JobView(state="active", created_at=created, processed_at=processed)


def waiting(created: datetime = T0, state: str = "waiting") -> JobView:
    return JobView(state=state, created_at=created)


def test_an_active_job_ages_on_the_monotonic_clock_after_it_is_first_seen() -> None:
    mono = Ticking()
    clock = JobClock(mono)
    # First seen 30 s after the worker stamped processedOn, by the queue's clock.
    first = clock.measure("j", active(T0), queue_now=T0 + timedelta(seconds=30))
    assert first.active_for == 30
    assert first.waiting_for is None
    mono.now += 5
    # The queue clock (or anything else) jumping by hours changes nothing now.
    later = clock.measure("j", active(T0), queue_now=T0 + 2 * HOUR)
    assert later.active_for == 35
    mono.now += 5
    assert clock.measure("j", active(T0), queue_now=T0 - HOUR).active_for == 40


def test_a_stamp_ahead_of_the_queue_clock_counts_from_first_sight() -> None:
    mono = Ticking()
    clock = JobClock(mono)
    assert clock.measure("j", active(T0 + HOUR), queue_now=T0).active_for == 0
    mono.now += 7
    assert clock.measure("j", active(T0 + HOUR), queue_now=T0).active_for == 7


def test_without_the_queue_clock_a_job_counts_from_first_sight() -> None:
    mono = Ticking()
    clock = JobClock(mono)
    assert clock.measure("j", active(T0 - HOUR), queue_now=None).active_for == 0
    mono.now += 3
    assert clock.measure("j", active(T0 - HOUR), queue_now=None).active_for == 3


def test_a_job_this_process_requested_is_never_older_than_its_request() -> None:
    mono = Ticking()
    clock = JobClock(mono)
    clock.requested("j")  # e.g. adopting a job a worker took an hour ago
    mono.now += 2
    view = clock.measure("j", active(T0 - HOUR, created=T0 - 2 * HOUR), queue_now=T0)
    assert view.active_for == 2
    # Waiting, too: a job added with a stamp from a wall clock an hour behind.
    clock.requested("k")
    mono.now += 1
    assert clock.measure("k", waiting(T0 - HOUR), queue_now=T0).waiting_for == 1


def test_an_active_job_is_never_older_than_the_job_itself() -> None:
    # A worker whose clock is an hour behind stamps processedOn an hour "ago"; the
    # job was added (timestamp, on the queue's clock) 7 s ago: it ran 7 s at most.
    clock = JobClock(Ticking())
    view = clock.measure("j", active(T0 - HOUR, created=T0 - timedelta(seconds=7)), queue_now=T0)
    assert view.active_for == 7


def test_a_job_taken_before_waits_from_first_sight_not_from_its_first_add() -> None:
    # A BullMQ-level retry: back to waiting/delayed with its first add's timestamp
    # and its last attempt's processedOn. Its wait is counted from first sight.
    mono = Ticking()
    clock = JobClock(mono)
    retried = JobView(state="delayed", created_at=T0, processed_at=T0 + timedelta(seconds=1))
    assert clock.measure("j", retried, queue_now=T0 + timedelta(seconds=20)).waiting_for == 0
    mono.now += 4
    assert clock.measure("j", retried, queue_now=T0 + timedelta(seconds=24)).waiting_for == 4


@pytest.mark.parametrize("state", ["waiting", "prioritized", "delayed", "waiting-children"])
def test_a_queued_job_measures_its_wait_from_its_timestamp(state: str) -> None:
    mono = Ticking()
    clock = JobClock(mono)
    view = clock.measure("j", waiting(T0, state), queue_now=T0 + timedelta(minutes=12))
    assert (view.waiting_for, view.active_for) == (720, None)


@pytest.mark.parametrize("state", ["completed", "failed", "unknown"])
def test_finished_or_lost_jobs_are_not_measured(state: str) -> None:
    view = JobView(state=state, created_at=T0, processed_at=T0)
    assert JobClock(Ticking()).measure("j", view, queue_now=T0 + HOUR) == view


def test_a_new_job_under_the_same_id_starts_afresh() -> None:
    mono = Ticking()
    clock = JobClock(mono)
    clock.measure("j", active(T0), queue_now=T0)
    mono.now += 100
    retried = active(T0 + timedelta(seconds=200), created=T0 + timedelta(seconds=190))
    assert clock.measure("j", retried, queue_now=T0 + timedelta(seconds=201)).active_for == 1


def test_memory_is_bounded() -> None:
    clock = JobClock(Ticking(), memory=3)
    for n in range(10):
        clock.requested(f"j{n}")
        clock.measure(f"j{n}", active(T0), queue_now=T0)
    assert len(clock._since) == 3 and len(clock._requested) == 3


# --- the machine reads durations, not the wall clock ----------------------------------

POLICY = Policy()


def analysing(at: datetime) -> Run:
    run = seed(
        RunSeeded(at=at, run_id="r", match_id="m", gaps=("missing_analysis",), found=0, expected=1)
    )
    return evolve(run, AnalysisRequested(at=at, job_id="analyze-retro-m", attempt=1))


FACTS = Facts(match_found=True, match_status="finished", home_score=1, away_score=0)


def test_start_to_close_reads_active_for_whatever_now_says() -> None:
    run = analysing(T0)
    budget = POLICY.budgets[Phase.ANALYSIS]
    fresh = replace(FACTS, job=replace(active(T0), active_for=1.0))
    # The wall clock says two hours passed: not a timeout, the job ran 1 s.
    assert decide(run, fresh, now=T0 + 2 * HOUR, policy=POLICY) is None
    late = replace(FACTS, job=replace(active(T0), active_for=budget + 1))
    assert isinstance(decide(run, late, now=T0, policy=POLICY), PhaseTimedOut)


@given(
    attempt=st.integers(min_value=1, max_value=6),
    base=st.integers(min_value=0, max_value=60).map(float),
    offset=st.integers(min_value=-7200_000, max_value=7200_000).map(lambda ms: ms / 1000),
)
def test_backoff_over_matches_its_two_conditions(attempt: int, base: float, offset: float) -> None:
    policy = Policy(retry_backoff=base)
    backoff = base * 2 ** (attempt - 1)
    not_before = T0 + timedelta(seconds=backoff)  # scheduled at T0
    now = T0 + timedelta(seconds=offset)
    left = (not_before - now).total_seconds()
    # Independent statement: due once the deadline came, or when the deadline is
    # further away than the whole back-off (only a clock gone back does that).
    expected = left <= 0 or left > backoff
    assert backoff_over(not_before, attempt, now, policy) is expected


def test_a_backoff_set_before_the_clock_went_back_is_over() -> None:
    run = evolve(analysing(T0), JobFailed(at=T0, phase=Phase.ANALYSIS, reason="quota"))
    run = evolve(
        run, RetryScheduled(at=T0, phase=Phase.ANALYSIS, not_before=T0 + timedelta(seconds=5))
    )
    assert run.step is Step.BACKOFF
    assert decide(run, FACTS, now=T0 + timedelta(seconds=4), policy=POLICY) is None
    retry = decide(run, FACTS, now=T0 - HOUR, policy=POLICY)  # the clock went back an hour
    assert isinstance(retry, AnalysisRequested) and retry.attempt == 2
