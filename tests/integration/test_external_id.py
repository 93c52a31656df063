"""A match missing analysis with no ``external_id`` is never sent to the analysis worker
(issue 10, point 5), on every backend: its run fails at its first tick with the
reason, no job reaches BullMQ and no retry follows. With ``require_external_id``
off the job is sent (``externalId`` null) and the run heals with the reference
workers.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bullmq import Job

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.events import Phase
from retro.machine import NO_EXTERNAL_ID, State
from retro.pipeline import host
from retro.pipeline.host_rows import AnalysisRow, MatchRow, ModelRow, iso_utc
from retro.store import migrate, runs
from retro.store.db import create_engine
from tests.conftest import Backend, eventually
from tests.integration.test_recovery import settings_for as recovery_settings
from tests.integration.test_recovery import workers

MATCH = "M1"


async def make_host(backend: Backend, *, external_id: str | None, analysis: bool) -> None:
    """One match that finished 2-1 yesterday with ``external_id``, two active models,
    and an analysis with a favourite if ``analysis``."""
    engine = create_engine(backend.database_url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        await host.insert_models(
            engine, [ModelRow(f"model-{i}", "acme", f"m{i}", f"Model {i}") for i in range(2)]
        )
        kickoff = iso_utc(datetime.now(UTC) - timedelta(days=1))
        await host.insert_matches(
            engine,
            [MatchRow(MATCH, external_id, "xx.1", "Home", "Away", kickoff, 2, 1, "finished")],
        )
        if analysis:
            await host.upsert_analysis(engine, AnalysisRow(MATCH, "Home"))
    finally:
        await engine.dispose()


def settings_for(backend: Backend, **more: Any) -> Settings:
    """The test settings of :mod:`tests.integration.test_recovery`, retries at once."""
    return recovery_settings(backend, retry_backoff=0, max_attempts=3, **more)


async def analysis_jobs(app: App) -> int:
    """Jobs of any state on the analysis queue."""
    assert app.queues is not None
    counts = await app.queues.queue(Phase.ANALYSIS).getJobCounts()
    return sum(int(n) for n in counts.values())


@pytest.mark.parametrize("external_id", [None, "   "])
async def test_no_external_id_fails_the_run_at_once_with_no_job_sent(
    backend: Backend, external_id: str | None
) -> None:
    await make_host(backend, external_id=external_id, analysis=False)
    async with App(settings_for(backend)) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC))
        assert report.cannot_heal == {MATCH: NO_EXTERNAL_ID}
        [run_id] = report.seeded  # seeded all the same: its failure is on record
        async with workers(backend):
            first = await app.tick(now=datetime.now(UTC))
            await asyncio.sleep(0.3)  # give a (wrongly) enqueued job time to be taken
            await app.tick(now=datetime.now(UTC) + timedelta(hours=1))  # no retry, ever
        async with app.engine.connect() as conn:
            run = await runs.get(conn, run_id)
            events = await runs.events_of(conn, run_id)
        assert await analysis_jobs(app) == 0
    assert [e.TYPE for _, e in first.events] == ["RunFailed"]
    assert [e.TYPE for e in events] == ["RunSeeded", "RunFailed"]
    assert run is not None and run.state is State.FAILED
    assert run.last_error == (
        f"cannot heal: match {MATCH} has no external_id, which its analysis worker needs "
        "to look the match up (set require_external_id = false if the host's does not)"
    )


async def test_with_the_rule_off_the_job_is_sent_and_the_run_heals(backend: Backend) -> None:
    await make_host(backend, external_id=None, analysis=False)
    async with App(settings_for(backend, require_external_id=False)) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC))
        assert report.cannot_heal == {}
        [run_id] = report.seeded
        await app.tick(now=datetime.now(UTC))
        assert app.queues is not None
        job = await Job.fromId(
            app.queues.queue(Phase.ANALYSIS), app.policy.job_id(Phase.ANALYSIS, MATCH)
        )
        assert job is not None and job.data["externalId"] is None

        async def done() -> bool:
            await app.tick(now=datetime.now(UTC))
            async with app.engine.connect() as conn:
                run = await runs.get(conn, run_id)
            return run is not None and run.state is State.DONE

        async with workers(backend):
            await eventually(done, timeout=20)


async def test_analysis_present_heals_without_an_external_id(backend: Backend) -> None:
    """Predictions and settlement do not need it: the rule holds only analysis back."""
    await make_host(backend, external_id=None, analysis=True)
    async with App(settings_for(backend)) as app:
        report = await commands.start(app, days=14, now=datetime.now(UTC))
        assert report.cannot_heal == {}
        [run_id] = report.seeded

        async def done() -> bool:
            await app.tick(now=datetime.now(UTC))
            async with app.engine.connect() as conn:
                run = await runs.get(conn, run_id)
            return run is not None and run.state is State.DONE

        async with workers(backend):
            await eventually(done, timeout=20)
        async with app.engine.connect() as conn:
            types = [e.TYPE for e in await runs.events_of(conn, run_id)]
        assert types[:2] == ["RunSeeded", "AnalysisSkipped"]
        assert await analysis_jobs(app) == 0
