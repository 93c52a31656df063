"""The hand-off floor: the least any orchestrator on BullMQ and a SQL database can do.

``bench/handoff.py`` measures it in the same run as retro, with the same workers: for
each match, one stage at a time, a minimal loop hears BullMQ's QueueEvents
``completed`` for the stage's job, then, in one committed transaction, runs one
``SELECT`` (the match row, for the next job's payload) and one ``INSERT`` (a line in
its own log table, the durable intent retro also writes before it enqueues), then
``Queue.add``s the next stage's job. Nothing else: no state machine, no checks of
the job's state, no stale cleanup, no metrics or logging. Retro's hand-off over this
floor is what retro's own bookkeeping costs.

The floor's job ids are its own (``floor-analyze-{matchId}`` …), so its jobs never
meet retro's; its queues, job names, options and payloads are retro's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bullmq import QueueEvents
from sqlalchemy import text

from bench.baseline_seed import stages
from retro.events import Phase
from retro.queue import (
    JOB_NAMES,
    Queues,
    analysis_payload,
    predictions_payload,
    settlement_payload,
)
from retro.store.db import create_engine
from retro.store.facts import match_facts

JOB_IDS = {
    Phase.ANALYSIS: "floor-analyze-{matchId}",
    Phase.PREDICTIONS: "floor-predict-{matchId}",
    Phase.SETTLEMENT: "floor-settle-{matchId}",
}
"""The floor's job-id templates (``harness.handoffs`` reads its jobs back with them)."""
JOB_TIMEOUT = 30.0
"""Seconds the floor waits for one job's ``completed`` before it gives up."""

CREATE_LOG = text(
    "CREATE TABLE IF NOT EXISTS bench_floor_log "
    "(match_id TEXT NOT NULL, stage TEXT NOT NULL, at TEXT NOT NULL)"
)
MATCH_ROW = text(
    "SELECT id, external_id, home_team, away_team, status, home_score, away_score "
    "FROM matches WHERE id = :id"
)
LOG = text("INSERT INTO bench_floor_log (match_id, stage, at) VALUES (:match_id, :stage, :at)")


def payload(phase: Phase, row: Any) -> dict[str, Any]:
    """The job payload of ``phase`` from a :data:`MATCH_ROW` row."""
    if phase is Phase.ANALYSIS:
        return analysis_payload(row.id, row.external_id, row.home_team, row.away_team)
    if phase is Phase.PREDICTIONS:
        return predictions_payload(row.id)
    return settlement_payload(row.id, row.home_score, row.away_score, row.status)


async def floor(
    database_url: str, redis_url: str, queues: Queues, match_ids: Sequence[str]
) -> list[str]:
    """Heal ``match_ids`` one at a time with the minimal loop; the matches it handled.

    The stages each match needs (``bench.baseline_seed.stages``) are read before the
    loop starts, so that the loop's own work per hand-off is the one ``SELECT`` and
    one ``INSERT``.

    Raises:
        TimeoutError: a job's ``completed`` did not come within :data:`JOB_TIMEOUT` s.
    """
    engine = create_engine(database_url)
    completed: asyncio.Queue[str] = asyncio.Queue()
    listeners: list[QueueEvents] = []
    handled: list[str] = []
    try:
        async with engine.begin() as conn:
            await conn.execute(CREATE_LOG)
            plans: dict[str, list[Phase]] = {}
            for match_id in match_ids:
                facts = await match_facts(conn, match_id)
                plans[match_id] = stages(facts) if facts is not None else []
        for phase in Phase:
            events = QueueEvents(
                queues.names[phase],
                {"connection": redis_url, "prefix": queues.prefix, "lastEventId": "0-0"},
            )
            events.on("completed", lambda args, *_: completed.put_nowait(str(args.get("jobId"))))
            listeners.append(events)

        async def done(job_id: str) -> None:
            deadline = time.monotonic() + JOB_TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                if await asyncio.wait_for(completed.get(), left) == job_id:
                    return
            raise TimeoutError(f"no 'completed' for {job_id} within {JOB_TIMEOUT:g} s")

        async def add(phase: Phase, match_id: str, row: Any) -> str:
            job_id = JOB_IDS[phase].format(matchId=match_id)
            await queues.queue(phase).add(
                JOB_NAMES[phase], payload(phase, row), queues.options.for_job(job_id)
            )
            return job_id

        async with engine.connect() as conn:  # the first job's row: not a hand-off
            rows = {m: (await conn.execute(MATCH_ROW, {"id": m})).one() for m in match_ids}
        for match_id in match_ids:
            plan = plans[match_id]
            if not plan:
                continue
            job_id = await add(plan[0], match_id, rows[match_id])
            for phase in plan[1:]:
                await done(job_id)
                # the hand-off: one SELECT and one INSERT, committed, then Queue.add
                async with engine.begin() as conn:
                    row = (await conn.execute(MATCH_ROW, {"id": match_id})).one()
                    at = datetime.now(UTC).isoformat()
                    await conn.execute(LOG, {"match_id": match_id, "stage": str(phase), "at": at})
                job_id = await add(phase, match_id, row)
            await done(job_id)
            handled.append(match_id)
    finally:
        await asyncio.gather(*(e.close() for e in listeners), return_exceptions=True)
        await engine.dispose()
    return handled
