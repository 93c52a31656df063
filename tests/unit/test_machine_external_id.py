"""A match missing analysis with no ``external_id`` is not sent to the analysis worker
(issue 10, point 5): under ``require_external_id`` the run fails at once; with the
rule off the job is requested as before."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from retro.events import (
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    JobFailed,
    Phase,
    PredictionsRequested,
    RetryScheduled,
    RunFailed,
    RunSeeded,
    SettlementRequested,
)
from retro.machine import (
    NO_EXTERNAL_ID,
    REASON_LIMIT,
    Facts,
    JobView,
    Policy,
    Run,
    State,
    Step,
    cannot_heal,
    decide,
    evolve,
    has_external_id,
    seed,
)

T0 = datetime(2025, 5, 20, 19, tzinfo=UTC)
ON = Policy()
OFF = Policy(require_external_id=False)
MATCH = "epl-2025-001"
NO_ID = Facts(
    match_found=True,
    match_status="finished",
    home_score=1,
    away_score=0,
    predictions_expected=3,
    has_external_id=False,
)


def pending() -> Run:
    return seed(
        RunSeeded(
            at=T0, run_id="r", match_id=MATCH, gaps=("missing_analysis",), found=0, expected=3
        )
    )


def assert_fails_for_no_external_id(event: Event | None) -> None:
    assert isinstance(event, RunFailed), event
    assert "\n" not in event.reason and len(event.reason) <= REASON_LIMIT
    assert event.reason.startswith(f"cannot heal: match {MATCH} has no external_id"), event
    assert "require_external_id = false" in event.reason, event


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (None, False),
        ("", False),
        ("   ", False),
        ("\t\n", False),
        ("\u3000", False),  # an ideographic space is blank too
        ("ext-1", True),
        (" ext-1 ", True),
        ("0", True),
    ],
)
def test_null_and_blank_external_ids_are_missing(value: str | None, named: bool) -> None:
    assert has_external_id(value) is named


def test_cannot_heal_only_without_analysis_and_external_id_under_the_rule() -> None:
    for has_analysis in (False, True):
        for external_id in (False, True):
            for policy in (ON, OFF):
                found = cannot_heal(
                    has_analysis=has_analysis, external_id=external_id, policy=policy
                )
                doomed = (has_analysis, external_id, policy) == (False, False, ON)
                assert found == (NO_EXTERNAL_ID if doomed else None), (has_analysis, external_id)


def test_a_pending_run_with_no_external_id_fails_at_once() -> None:
    event = decide(pending(), NO_ID, now=T0, policy=ON)
    assert_fails_for_no_external_id(event)
    assert event is not None
    failed = evolve(pending(), event)
    assert failed.state is State.FAILED and failed.job_id is None
    assert decide(failed, NO_ID, now=T0, policy=ON) is None  # terminal: nothing more


def test_a_blank_external_id_fails_like_a_null_one() -> None:
    blank = replace(NO_ID, has_external_id=has_external_id("  "))
    assert_fails_for_no_external_id(decide(pending(), blank, now=T0, policy=ON))


def test_with_the_rule_off_the_analysis_job_is_requested() -> None:
    event = decide(pending(), NO_ID, now=T0, policy=OFF)
    assert isinstance(event, AnalysisRequested), event
    assert (event.job_id, event.attempt) == (f"analyze-retro-{MATCH}", 1)


def test_a_match_with_an_external_id_is_requested_under_the_rule() -> None:
    event = decide(pending(), replace(NO_ID, has_external_id=True), now=T0, policy=ON)
    assert isinstance(event, AnalysisRequested), event


def test_analysis_present_heals_without_an_external_id() -> None:
    """Predictions and settlement payloads do not carry it: only analysis needs it."""
    facts = replace(NO_ID, has_analysis=True)
    run = pending()
    skipped = decide(run, facts, now=T0, policy=ON)
    assert isinstance(skipped, AnalysisSkipped), skipped
    run = evolve(run, skipped)
    requested = decide(run, facts, now=T0, policy=ON)
    assert isinstance(requested, PredictionsRequested), requested
    run = evolve(run, requested)
    scored = replace(facts, predictions_found=3, unscored=3)
    completed = decide(run, scored, now=T0, policy=ON)
    assert completed is not None and completed.TYPE == "PredictionsCompleted"
    run = evolve(run, completed)
    settle = decide(run, scored, now=T0, policy=ON)
    assert isinstance(settle, SettlementRequested), settle


def analysing_with_failed_attempt() -> Run:
    """An analysing run whose first job failed (its external_id vanished since)."""
    run = evolve(pending(), AnalysisRequested(at=T0, job_id=f"analyze-retro-{MATCH}", attempt=1))
    return evolve(run, JobFailed(at=T0, phase=Phase.ANALYSIS, reason="boom"))


def test_a_retry_after_a_back_off_is_not_requested_without_an_external_id() -> None:
    run = analysing_with_failed_attempt()
    scheduled = decide(run, NO_ID, now=T0, policy=ON)
    assert isinstance(scheduled, RetryScheduled), scheduled
    run = evolve(run, scheduled)
    assert run.step is Step.BACKOFF
    assert decide(run, NO_ID, now=T0, policy=ON) is None  # back-off not over: wait
    later = T0 + timedelta(hours=1)
    assert_fails_for_no_external_id(decide(run, NO_ID, now=later, policy=ON))
    retry = decide(run, NO_ID, now=later, policy=OFF)
    assert isinstance(retry, AnalysisRequested) and retry.attempt == 2, retry


def test_a_job_already_outstanding_is_still_judged() -> None:
    """The rule stops requests; a job sent before (the rule was off) keeps its outcome."""
    run = evolve(pending(), AnalysisRequested(at=T0, job_id=f"analyze-retro-{MATCH}", attempt=1))
    active = replace(NO_ID, job=JobView(state="active", processed_at=T0, active_for=1.0))
    assert decide(run, active, now=T0, policy=ON) is None
    done = replace(NO_ID, has_analysis=True, job=JobView(state="completed", created_at=T0))
    assert isinstance(decide(run, done, now=T0, policy=ON), AnalysisCompleted)
