"""A job its worker failed with BullMQ's ``UnrecoverableError`` ends the run at once
(issue 10, point 5): no retry can succeed, so none is spent."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

from bullmq import UnrecoverableError

from retro.events import AnalysisRequested, JobFailed, Phase, RunFailed, RunSeeded
from retro.machine import Facts, JobView, Policy, decide, evolve, seed
from retro.queue import unrecoverable

T0 = datetime(2025, 5, 20, 19, tzinfo=UTC)
FACTS = Facts(match_found=True, match_status="finished", home_score=1, away_score=0)


def python_trace(message: str) -> str:
    try:
        raise UnrecoverableError(message)
    except UnrecoverableError:
        return traceback.format_exc()


def test_the_error_is_recognised_from_node_and_python_stacks() -> None:
    node = "UnrecoverableError: no such fixture\n    at Worker.processor (workers.mjs:427:13)"
    assert unrecoverable([node])
    # A subclass named otherwise still shows the base constructor's frame.
    v8 = (
        "FixtureGone: node says never\n"
        "    at new UnrecoverableError (node_modules/bullmq/dist/cjs/classes/errors/"
        "unrecoverable-error.js:14:9)\n    at Worker.processor (workers.mjs:429:13)"
    )
    assert unrecoverable([v8])
    assert not unrecoverable(["Error: node says no\n    at Worker.processor (workers.mjs:1:1)"])
    assert unrecoverable(["Error: first try", python_trace("no such fixture")])
    assert not unrecoverable([python_trace("x"), "Error: node says no\n    at x"])  # the last
    assert not unrecoverable(["Error: an UnrecoverableErrorish message"])
    assert not unrecoverable([])
    assert not unrecoverable(None)


def replaced_trace() -> str:
    """A Python worker caught an ``UnrecoverableError`` and raised an ordinary error:
    BullMQ retries that one (it checks the error thrown), and so must retro."""
    try:
        try:
            raise UnrecoverableError("first thought: never")
        except UnrecoverableError as exc:
            raise RuntimeError("upstream busy, try again") from exc
    except RuntimeError:
        return traceback.format_exc()


def named_trace() -> str:
    try:
        raise RuntimeError("model said: UnrecoverableError: quota")
    except RuntimeError:
        return traceback.format_exc()


def test_only_the_error_thrown_counts_not_one_named_or_replaced() -> None:
    assert "UnrecoverableError: first thought" in replaced_trace()  # both are in the trace
    assert not unrecoverable([replaced_trace()])
    assert not unrecoverable([named_trace()])
    node = "Error: upstream replied UnrecoverableError: quota\n    at f (workers.mjs:1:1)"
    assert not unrecoverable([node])
    assert unrecoverable(["UnrecoverableError\n    at Worker.processor (workers.mjs:1:1)"])
    assert unrecoverable([python_trace("")])


def test_an_unrecoverable_failure_fails_the_run_without_a_retry() -> None:
    run = seed(
        RunSeeded(at=T0, run_id="r", match_id="m", gaps=("missing_analysis",), found=0, expected=1)
    )
    run = evolve(run, AnalysisRequested(at=T0, job_id="analyze-retro-m", attempt=1))
    policy = Policy(max_attempts=3)
    failed = JobView(state="failed", created_at=T0, failed_reason="no such fixture")
    plain = decide(run, Facts(**{**FACTS.__dict__, "job": failed}), now=T0, policy=policy)
    assert isinstance(plain, JobFailed)  # an ordinary failure is retried
    doomed = JobView(
        state="failed", created_at=T0, failed_reason="no such fixture", unrecoverable=True
    )
    event = decide(run, Facts(**{**FACTS.__dict__, "job": doomed}), now=T0, policy=policy)
    assert isinstance(event, RunFailed)
    assert event.reason == (
        f"{Phase.ANALYSIS} job analyze-retro-m failed with UnrecoverableError: no such fixture"
    )
