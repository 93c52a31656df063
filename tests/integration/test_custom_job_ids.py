"""Custom job-id formats and queue names from ``RETRO_*``, end to end: a whole heal
puts its jobs under exactly those ids and queues in Redis, and no default id anywhere."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from retro import commands
from retro.app import App
from retro.config import load_settings
from retro.events import Phase, Requested
from retro.store import runs
from tests.conftest import Backend
from tests.healing import DEMO_NOW, assert_healed, heal_until_idle, seed_outage

ENV = {
    "RETRO_ANALYSIS_JOB_ID": "custom-{matchId}-a",
    "RETRO_PREDICTIONS_JOB_ID": "custom-{matchId}-p",
    "RETRO_SETTLEMENT_JOB_ID": "custom-{matchId}-s",
    "RETRO_ANALYSIS_QUEUE": "ops-analysis",
    "RETRO_PREDICTIONS_QUEUE": "ops-predictions",
    "RETRO_SETTLEMENT_QUEUE": "ops-settlement",
}
SUFFIX = {Phase.ANALYSIS: "a", Phase.PREDICTIONS: "p", Phase.SETTLEMENT: "s"}
QUEUE = {Phase.ANALYSIS: "ops-analysis", Phase.PREDICTIONS: "ops-predictions"}
QUEUE[Phase.SETTLEMENT] = "ops-settlement"


async def test_a_heal_uses_the_configured_job_ids_and_queues(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**ENV, **backend.env(), "RETRO_TICK_INTERVAL": "0.5"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    gaps = await seed_outage(backend.database_url, ["fr.1"])
    assert gaps > 3
    async with App(settings) as app:
        seeded = await commands.start(app, days=14, now=datetime.now(UTC), until=DEMO_NOW)
        assert len(seeded.seeded) == gaps
        await heal_until_idle(
            app,
            database_url=backend.database_url,
            prefix=backend.prefix,
            queues=(QUEUE[Phase.ANALYSIS], QUEUE[Phase.PREDICTIONS], QUEUE[Phase.SETTLEMENT]),
        )
        async with app.engine.connect() as conn:
            requested: set[tuple[Phase, str, str]] = set()
            for run_id in await runs.all_ids(conn):
                run = await runs.get(conn, run_id)
                assert run is not None
                for event in await runs.events_of(conn, run_id):
                    if isinstance(event, Requested):
                        requested.add((event.PHASE, run.match_id, event.job_id))
        redis_url = app.redis_url
    await assert_healed(backend.database_url)

    assert {phase for phase, _, _ in requested} == set(Phase)
    for phase, match_id, job_id in requested:
        assert job_id == f"custom-{match_id}-{SUFFIX[phase]}"

    expected = {f"{backend.prefix}:{QUEUE[phase]}:{job_id}" for phase, _, job_id in requested}
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = {key async for key in client.scan_iter(match=f"{backend.prefix}:*", count=1000)}
        jobs = {  # BullMQ job hashes: <prefix>:<queue>:<job id> holding the job's name
            key
            for key in keys
            if await client.type(key) == "hash" and await client.hexists(key, "name")
        }
        unfinished = [key for key in expected if not await client.hget(key, "finishedOn")]
    finally:
        await client.aclose()
    assert jobs == expected, sorted(jobs ^ expected)
    assert unfinished == []
    assert not any("-retro-" in key for key in keys)
    assert {key.split(":")[1] for key in keys} == set(QUEUE.values())
