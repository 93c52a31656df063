"""Fault injection and the database retry of the reference workers (no I/O)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from retro.pipeline.faults import draw, should_fail, with_db_retry


def test_injected_failures_are_reproducible_and_at_the_rate() -> None:
    assert draw("predict-retro-m-1", 1_700_000_000_000) == draw(
        "predict-retro-m-1", 1_700_000_000_000
    )
    jobs = [(f"settle-retro-m-{n}", 1_700_000_000_000 + n) for n in range(20_000)]
    failed = sum(should_fail(0.1, job_id, stamp) for job_id, stamp in jobs)
    assert 1_800 < failed < 2_200
    assert not any(should_fail(0.0, job_id, stamp) for job_id, stamp in jobs[:1000])
    assert all(should_fail(1.0, job_id, stamp) for job_id, stamp in jobs[:1000])


def test_a_new_enqueue_or_bullmq_attempt_draws_anew() -> None:
    draws = {draw("analyze-retro-m-1", 1_700_000_000_000 + n) for n in range(50)}
    draws |= {draw("analyze-retro-m-1", 1_700_000_000_000, attempts) for attempts in range(50)}
    assert len(draws) == 99


def _lost_connection() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


async def test_an_unreachable_database_is_waited_for() -> None:
    calls = 0

    async def stage() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise _lost_connection()
        return "written"

    assert await with_db_retry(stage, max_seconds=10) == "written"
    assert calls == 3


async def test_the_wait_for_the_database_is_bounded() -> None:
    calls = 0

    async def stage() -> str:
        nonlocal calls
        calls += 1
        raise _lost_connection()

    with pytest.raises(OperationalError):
        await with_db_retry(stage, max_seconds=0.3)
    assert calls >= 2


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def stage() -> str:
        nonlocal calls
        calls += 1
        raise IntegrityError("INSERT", {}, ValueError("duplicate key"))

    with pytest.raises(IntegrityError):
        await with_db_retry(stage, max_seconds=10)
    assert calls == 1
