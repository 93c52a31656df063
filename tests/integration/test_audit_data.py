"""``verify`` (:func:`retro.store.runs.audit`) on stored events whose data has the
wrong kind of value: each is a finding about its run, never an unexpected error
(found in review of issue 10)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.store import runs
from retro.store.schema import backfill_events
from tests.integration.test_runs import T0, engine, in_analysis, sec

__all__ = ["engine"]  # the fixture, on both backends


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("PhaseTimedOut", {"phase": "analysis", "budget": "ten", "job_created_at": None}),
        ("JobFailed", {"phase": "analysis", "reason": ["not", "text"], "job_created_at": None}),
        (
            "JobFailed",
            {"phase": "analysis", "reason": "x", "job_created_at": "2025-05-20T19:00:00"},
        ),
    ],
)
async def test_audit_reports_a_known_event_with_data_of_the_wrong_kind(
    engine: AsyncEngine, type_: str, data: dict[str, object]
) -> None:
    """A stored event of a known type whose fields have the wrong kind of value (a
    text budget, a list as reason) is a finding of ``verify`` about its run, like
    any history that cannot be replayed, not an unexpected error; the other runs
    are still audited."""
    run = await in_analysis(engine, "r1", "m1")
    await in_analysis(engine, "r2", "m2")
    async with engine.begin() as conn:
        await conn.execute(
            insert(backfill_events).values(
                run_id="r1",
                seq=run.version + 1,
                type=type_,
                data=json.dumps(data),
                at=T0 + sec(5),
            )
        )
    async with engine.connect() as conn:
        audit = await runs.audit(conn)
    assert list(audit.illegal) == ["r1"], audit
    assert audit.runs == 2 and audit.drifted == []
