"""``Run.timed_out`` (issue 10, point 4): a run whose last verdict was a timeout keeps
its ``max_in_flight`` slot through its back-off, as BullMQ may still run the job
judged. The mark is part of the projection, so it is set and cleared by replay
alone; the expected marks below are written out by hand from the rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from retro.events import (
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    JobFailed,
    PhaseTimedOut,
    PredictionsCompleted,
    PredictionsRequested,
    RetryScheduled,
    RunCancelled,
    RunFailed,
    RunSeeded,
    SettlementRequested,
    SettlementSkipped,
)
from retro.machine import Run, project

T0 = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)
SEEDED = RunSeeded(
    at=T0,
    run_id="r1",
    match_id="m1",
    gaps=("missing_analysis", "missing_predictions"),
    found=0,
    expected=3,
)


def at(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def prefixes(*events: Event) -> list[Run]:
    """The projection after each event of ``SEEDED, *events`` (replay of each prefix)."""
    history = [SEEDED, *events]
    return [project(history[: n + 1]) for n in range(1, len(history))]


def test_a_timeout_marks_the_run_until_its_retry_is_requested() -> None:
    runs = prefixes(
        AnalysisRequested(at=at(1), job_id="analyze-retro-m1", attempt=1),
        PhaseTimedOut(at=at(2), phase="analysis", budget=60),
        RetryScheduled(at=at(2), phase="analysis", not_before=at(3)),
        AnalysisRequested(at=at(3), job_id="analyze-retro-m1", attempt=2),
        JobFailed(at=at(4), phase="analysis", reason="quota"),
        RetryScheduled(at=at(4), phase="analysis", not_before=at(5)),
    )
    assert [r.timed_out for r in runs] == [False, True, True, False, False, False]
    # the slot: held by the job, by the judged timeout and its back-off, not by a
    # back-off after a failure
    assert [r.holds_slot for r in runs] == [True, True, True, True, True, False]


def test_a_new_phase_clears_the_mark() -> None:
    runs = prefixes(
        AnalysisRequested(at=at(1), job_id="analyze-retro-m1", attempt=1),
        PhaseTimedOut(at=at(2), phase="analysis", budget=60),
        RetryScheduled(at=at(2), phase="analysis", not_before=at(3)),
        AnalysisCompleted(at=at(3)),  # the data came in meanwhile
        PredictionsRequested(at=at(3), job_id="predict-retro-m1", attempt=1),
        PhaseTimedOut(at=at(4), phase="predictions", budget=60),
    )
    assert [r.timed_out for r in runs] == [False, True, True, False, False, True]


def test_a_finished_settlement_clears_the_mark() -> None:
    """Settlement finishes within its state (step ``finished``), not by a change of
    state, and its mutator clears the mark as well."""
    runs = prefixes(
        AnalysisSkipped(at=at(1), reason="favourite present"),
        PredictionsRequested(at=at(1), job_id="predict-retro-m1", attempt=1),
        PredictionsCompleted(at=at(2), found=3, expected=3),
        SettlementRequested(at=at(2), job_id="settle-retro-m1", attempt=1),
        PhaseTimedOut(at=at(3), phase="settlement", budget=60),
        RetryScheduled(at=at(3), phase="settlement", not_before=at(4)),
        SettlementSkipped(at=at(4), reason="not played yet"),
    )
    assert [r.timed_out for r in runs] == [False, False, False, False, True, True, False]


def test_an_end_clears_the_mark() -> None:
    for end in (RunFailed(at=at(3), reason="gave up"), RunCancelled(at=at(3), reason="operator")):
        runs = prefixes(
            AnalysisRequested(at=at(1), job_id="analyze-retro-m1", attempt=1),
            PhaseTimedOut(at=at(2), phase="analysis", budget=60),
            end,
        )
        assert [r.timed_out for r in runs] == [False, True, False]
        assert not runs[-1].holds_slot
