"""The reference workers' faults on a real database: injected failures are journalled
like any failure, and a job BullMQ hands out again after its outcome was journalled
(the worker died before BullMQ recorded it) is not run a second time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from retro.pipeline import host
from retro.pipeline.host_rows import MatchRow, ModelRow, iso_utc
from retro.pipeline.models import MODELS
from retro.pipeline.stages import StageError
from retro.pipeline.workers import ReferenceWorkers
from retro.store.db import create_engine
from tests.conftest import Backend

KICKOFF = datetime(2025, 5, 20, 19, 0, tzinfo=UTC)


@dataclass
class FakeJob:
    """What a processor reads of a BullMQ job."""

    id: str
    timestamp: int
    name: str = "analyze-match"
    attemptsMade: int = 0  # BullMQ's attribute name
    data: dict[str, Any] = field(
        default_factory=lambda: {
            "matchId": "m-1",
            "externalId": "ext-1",
            "homeTeam": "Reds",
            "awayTeam": "Blues",
            "allowRetroactive": True,
        }
    )


@pytest.fixture
async def engine(backend: Backend) -> AsyncIterator[host.HostEngine]:
    engine = create_engine(backend.database_url)
    await host.create_host_tables(engine)
    await host.insert_models(
        engine, [ModelRow(m.id, m.provider, m.model_name, m.display_name) for m in MODELS]
    )
    await host.insert_matches(
        engine,
        [MatchRow("m-1", "ext-1", "xx.1", "Reds", "Blues", iso_utc(KICKOFF), 2, 1, "finished")],
    )
    yield engine
    await engine.dispose()


async def test_an_injected_failure_is_journalled_and_writes_nothing(
    engine: host.HostEngine,
) -> None:
    job = FakeJob("analyze-retro-m-1", 1_700_000_000_000)
    with pytest.raises(StageError, match=r"^injected failure$"):
        await ReferenceWorkers(engine, fail_rate=1.0).analyze(job, "token")
    assert await host.get_analysis(engine, "m-1") is None
    assert [e.outcome for e in await host.job_log(engine)] == ["error: injected failure"]

    # Redelivered to a worker without fault injection: the journalled outcome stands.
    with pytest.raises(StageError, match=r"^injected failure$"):
        await ReferenceWorkers(engine).analyze(job, "token")
    assert await host.get_analysis(engine, "m-1") is None
    assert len(await host.job_log(engine)) == 1

    # A BullMQ-level retry (attemptsMade 1) is a new execution.
    job.attemptsMade = 1
    assert (await ReferenceWorkers(engine).analyze(job, "token"))["written"] == 1
    assert [e.outcome for e in await host.job_log(engine)] == ["error: injected failure", "ok"]


async def test_a_redelivered_job_is_not_run_twice(engine: host.HostEngine) -> None:
    workers = ReferenceWorkers(engine)
    job = FakeJob("analyze-retro-m-1", 1_700_000_000_000)
    assert (await workers.analyze(job, "token"))["written"] == 1
    assert await workers.analyze(job, "token") == {"written": 0, "redelivered": True}
    assert len(await host.job_log(engine)) == 1

    # The same job id enqueued anew (a new timestamp) runs; the stage writes nothing.
    again = FakeJob("analyze-retro-m-1", 1_700_000_000_001)
    assert (await workers.analyze(again, "token"))["written"] == 0
    journal = await host.job_log(engine)
    assert [(e.job_timestamp, e.outcome) for e in journal] == [
        (1_700_000_000_000, "ok"),
        (1_700_000_000_001, "ok"),
    ]
