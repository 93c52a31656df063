"""The reference workers on a real database and a real Redis, through real BullMQ queues."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bullmq import Job, Queue

from retro.pipeline import host
from retro.pipeline.host_rows import MatchRow, ModelRow, iso_utc
from retro.pipeline.models import MODELS
from retro.pipeline.scoring import settle
from retro.pipeline.workers import run_workers
from retro.store.db import create_engine
from tests.conftest import Backend

KICKOFF = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)
QUEUES = ("analysis-queue", "predictions-queue", "settlement-queue")


def _history() -> list[MatchRow]:
    """Six finished matches of the two sides, in the host's mixed ISO forms."""
    forms: list[Callable[[datetime], str]] = [
        iso_utc,
        lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"),
        lambda t: t.isoformat(),
        lambda t: t.astimezone(ZoneInfo("Europe/Berlin")).isoformat(),
    ]
    rows = []
    for n in range(6):
        at = KICKOFF - timedelta(days=7 * (n + 1))
        home, away = ("Reds", f"Rival {n}") if n % 2 else (f"Rival {n}", "Blues")
        rows.append(
            MatchRow(
                f"h-{n}", f"ext-h-{n}", "xx.1", home, away, forms[n % 4](at), n % 3, 1, "finished"
            )
        )
    return rows


@dataclass
class Pipeline:
    engine: host.HostEngine
    queues: dict[str, Queue]

    async def run(self, queue: str, name: str, job_id: str, data: Any) -> Job:
        """Add a job and wait until a worker has finished it (completed or failed)."""
        await self.queues[queue].add(name, data, {"jobId": job_id})
        for _ in range(400):
            state = await self.queues[queue].getJobState(job_id)
            if state in ("completed", "failed"):
                job = await Job.fromId(self.queues[queue], job_id)
                assert job is not None
                return job
            await asyncio.sleep(0.025)
        pytest.fail(f"job {job_id} not finished in 10 s (state {state})")


@pytest.fixture
async def pipeline(backend: Backend) -> AsyncIterator[Pipeline]:
    engine = create_engine(backend.database_url)
    await host.create_host_tables(engine)
    await host.insert_models(
        engine,
        [ModelRow(m.id, m.provider, m.model_name, m.display_name) for m in MODELS]
        + [
            ModelRow("retired", "acme", "old", "Retired", active=False),
            ModelRow("disabled", "acme", "flaky", "Flaky", auto_disabled=True),
        ],
    )
    await host.insert_matches(
        engine,
        [
            *_history(),
            MatchRow("m-1", "ext-1", "xx.1", "Reds", "Blues", iso_utc(KICKOFF), 2, 1, "finished"),
            MatchRow(
                "m-2",
                "ext-2",
                "xx.1",
                "Blues",
                "Reds",
                "2025-05-21T21:00:00+02:00",
                None,
                None,
                "scheduled",
            ),
        ],
    )
    stop = asyncio.Event()
    workers = asyncio.create_task(
        run_workers(backend.database_url, backend.redis_url, prefix=backend.prefix, stop=stop)
    )
    queues = {
        name: Queue(name, {"connection": backend.redis_url, "prefix": backend.prefix})
        for name in QUEUES
    }
    try:
        yield Pipeline(engine, queues)
    finally:
        stop.set()
        await asyncio.wait_for(workers, 15)
        for queue in queues.values():
            await queue.close()
        await engine.dispose()


ANALYZE = {
    "matchId": "m-1",
    "externalId": "ext-1",
    "homeTeam": "Reds",
    "awayTeam": "Blues",
    "allowRetroactive": True,
}
PREDICT = {"matchId": "m-1", "attempt": 1, "skipIfDone": True, "allowRetroactive": True}
SETTLE = {"matchId": "m-1", "homeScore": 2, "awayScore": 1, "status": "finished"}


async def _snapshot(engine: host.HostEngine) -> tuple[Any, ...]:
    return (
        await host.get_analysis(engine, "m-1"),
        await host.match_predictions(engine, "m-1"),
        await host.get_match(engine, "m-1"),
    )


async def test_three_stages_heal_a_match_and_run_idempotently(pipeline: Pipeline) -> None:
    engine = pipeline.engine
    job = await pipeline.run("analysis-queue", "analyze-match", "analyze-retro-m-1", ANALYZE)
    assert job.failedReason is None
    assert job.returnvalue == {"written": 1, "favorite": "Reds"}
    analysis = await host.get_analysis(engine, "m-1")
    assert analysis is not None and analysis.favorite_team_name == "Reds"
    assert analysis.home_form and analysis.away_form  # from the six past matches

    job = await pipeline.run("predictions-queue", "predict-match", "predict-retro-m-1", PREDICT)
    assert job.returnvalue == {"written": 42, "expected": 42}
    tips = await host.match_predictions(engine, "m-1")
    assert {p.model_id for p in tips} == {m.id for m in MODELS}  # not retired, not disabled
    assert {p.status for p in tips} == {"pending"}
    assert all(p.id == f"pred-m-1-{p.model_id}" for p in tips)

    job = await pipeline.run("settlement-queue", "settle-match", "settle-retro-m-1", SETTLE)
    assert job.returnvalue == {"written": 42}
    scored = await host.match_predictions(engine, "m-1")
    assert {p.status for p in scored} == {"scored"}
    _, expected = settle([(p.predicted_home or 0, p.predicted_away or 0) for p in tips], (2, 1))
    assert [p.total_points for p in scored] == [e.total_points for e in expected]
    assert all(p.scored_at is not None for p in scored)

    before = await _snapshot(engine)
    for queue, name, job_id, data in [
        ("analysis-queue", "analyze-match", "analyze-again", ANALYZE),
        ("predictions-queue", "predict-match", "predict-again", PREDICT),
        ("settlement-queue", "settle-match", "settle-again", SETTLE),
    ]:
        again = await pipeline.run(queue, name, job_id, data)
        assert again.returnvalue is not None and again.returnvalue["written"] == 0
    assert await _snapshot(engine) == before

    journal = await host.job_log(engine, match_id="m-1")
    assert [e.outcome for e in journal] == ["ok"] * 6
    assert [e.queue for e in journal] == list(QUEUES) * 2
    assert len({(e.job_id, e.job_timestamp) for e in journal}) == 6


async def _failure(pipeline: Pipeline, queue: str, name: str, job_id: str, data: Any) -> str:
    job = await pipeline.run(queue, name, job_id, data)
    assert job.failedReason, f"{job_id} should have failed"
    assert "\n" not in job.failedReason
    return str(job.failedReason)


async def test_refusals_have_one_line_reasons(pipeline: Pipeline) -> None:
    fail = _failure
    reason = await fail(pipeline, "predictions-queue", "predict-match", "p1", PREDICT)
    assert "no analysis" in reason
    reason = await fail(
        pipeline,
        "settlement-queue",
        "settle-match",
        "s1",
        {"matchId": "m-2", "homeScore": None, "awayScore": None, "status": "scheduled"},
    )
    assert "not finished" in reason
    reason = await fail(
        pipeline, "settlement-queue", "settle-match", "s2", {**SETTLE, "homeScore": 5}
    )
    assert "2-1 in the database" in reason
    assert "payload is str" in await fail(
        pipeline, "analysis-queue", "analyze-match", "a1", "garbage"
    )
    assert "matchId" in await fail(pipeline, "analysis-queue", "analyze-match", "a2", {"x": 1})
    assert "not found" in await fail(
        pipeline, "analysis-queue", "analyze-match", "a3", {**ANALYZE, "matchId": "nope"}
    )
    assert "allowRetroactive" in await fail(
        pipeline, "analysis-queue", "analyze-match", "a4", {**ANALYZE, "allowRetroactive": False}
    )
    assert "job name" in await fail(pipeline, "analysis-queue", "predict-match", "a5", ANALYZE)

    assert await host.get_analysis(pipeline.engine, "m-1") is None
    assert await host.match_predictions(pipeline.engine, "m-1") == []
    journal = await host.job_log(pipeline.engine)
    assert len(journal) == 8
    assert all(e.outcome.startswith("error: ") for e in journal)
