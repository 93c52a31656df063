"""Append errors are named (issue 9, point 7), on both real backends.

A database refusal that is not a lost race (here: a trigger the test adds, raising
an integrity-class error under its own name) is logged at ERROR with the run id,
retried a bounded number of ticks, then the run is given up: ``RunFailed`` with
the cause when the database accepts that, else skipped until restart. A lost race
is still a race (``ConcurrencyError``), and a second live run of a match is
``LiveRunExists``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.app import RUN_FAILURE_LIMIT, App
from retro.config import Settings
from retro.events import AnalysisRequested, Event, RunFailed, RunSeeded
from retro.logs import fields_of
from retro.machine import Run, State
from retro.pipeline import host
from retro.pipeline.host_rows import MatchRow, ModelRow, iso_utc
from retro.store import migrate, runs
from retro.store.db import create_engine
from tests.conftest import Backend

REFUSAL = "frozen by the test"


def sqlite_trigger(condition: str) -> list[str]:
    return [
        "CREATE TRIGGER refuse_events BEFORE INSERT ON backfill_events "
        f"WHEN {condition} BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
    ]


def postgres_trigger(condition: str) -> list[str]:
    return [
        "CREATE FUNCTION refuse_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'check_violation', "
        "CONSTRAINT = 'ck_test_frozen'; END $$",
        "CREATE TRIGGER refuse_events BEFORE INSERT ON backfill_events FOR EACH ROW "
        f"WHEN ({condition}) EXECUTE FUNCTION refuse_event()",
    ]


async def refuse(engine: AsyncEngine, condition: str) -> None:
    """Make the database refuse appended events matching ``condition`` (SQL on NEW)."""
    sqlite = engine.dialect.name == "sqlite"
    async with engine.begin() as conn:
        for statement in (sqlite_trigger if sqlite else postgres_trigger)(condition):
            await conn.execute(text(statement))


@pytest.fixture
async def app(backend: Backend) -> AsyncIterator[App]:
    """An app on a host with one finished match lacking its analysis (a gap)."""
    engine = create_engine(backend.database_url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        await host.insert_models(engine, [ModelRow("model-0", "acme", "m0", "Model 0")])
        kickoff = iso_utc(datetime.now(UTC) - timedelta(days=1))
        await host.insert_matches(
            engine, [MatchRow("M1", "x-M1", "xx.1", "Home", "Away", kickoff, 2, 1, "finished")]
        )
    finally:
        await engine.dispose()
    settings = Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
    )
    async with App(settings, new_id=lambda: "R1") as app:
        yield app


async def seed(app: App) -> Run:
    async with app.engine.begin() as conn:
        return await runs.append(
            conn,
            None,
            [
                RunSeeded(
                    at=datetime.now(UTC),
                    run_id="R1",
                    match_id="M1",
                    gaps=("missing_analysis",),
                    found=0,
                    expected=1,
                )
            ],
        )


async def get_run(app: App) -> Run:
    async with app.engine.connect() as conn:
        run = await runs.get(conn, "R1")
    assert run is not None
    return run


def errors_of(caplog: pytest.LogCaptureFixture, run_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and fields_of(r).get("run") == run_id
    ]


async def test_refused_append_is_an_error_bounded_then_the_run_fails(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(app)
    await refuse(app.engine, "NEW.type = 'AnalysisRequested'")
    caplog.set_level(logging.INFO, logger="retro")
    for tick in range(1, RUN_FAILURE_LIMIT):
        await app.tick(now=datetime.now(UTC))
        errors = errors_of(caplog, "R1")
        assert len(errors) == tick, "each refused tick is one ERROR line with the run id"
        assert REFUSAL in errors[-1].getMessage()
        assert (await get_run(app)).state is State.PENDING
    assert not [r for r in caplog.records if "append race" in r.getMessage()]

    report = await app.tick(now=datetime.now(UTC))  # the bound: the run is given up
    run = await get_run(app)
    assert run.state is State.FAILED
    assert run.last_error is not None and REFUSAL in run.last_error
    assert [type(e) for _, e in report.events] == [RunFailed]
    assert len(errors_of(caplog, "R1")) == RUN_FAILURE_LIMIT
    assert "given up" in errors_of(caplog, "R1")[-1].getMessage()

    caplog.clear()
    for _ in range(3):  # failed is terminal: no more tries, no more lines
        await app.tick(now=datetime.now(UTC))
    assert errors_of(caplog, "R1") == []


async def test_a_run_that_cannot_even_fail_is_skipped_and_said_so_once(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    await seed(app)
    await refuse(app.engine, "NEW.type <> 'RunSeeded'")
    caplog.set_level(logging.INFO, logger="retro")
    for _ in range(RUN_FAILURE_LIMIT):
        await app.tick(now=datetime.now(UTC))
    errors = errors_of(caplog, "R1")
    assert len(errors) == RUN_FAILURE_LIMIT
    assert "skips it until it restarts" in errors[-1].getMessage()
    caplog.clear()
    for _ in range(3):
        report = await app.tick(now=datetime.now(UTC))
        assert report.looked_at == 0
    assert errors_of(caplog, "R1") == []
    assert (await get_run(app)).state is State.PENDING
    assert await app.idle()  # --until-idle ends: the daemon no longer works on it


async def test_refusal_lost_race_and_live_run_are_told_apart(app: App) -> None:
    """Each error is named by its constraint, on the real database."""
    seeded = await seed(app)
    request = AnalysisRequested(at=datetime.now(UTC), job_id="analysis-retro-M1", attempt=1)
    moved = await _append(app, seeded, request)
    with pytest.raises(runs.ConcurrencyError):  # (run_id, seq) taken: a lost race
        await _append(app, seeded, request)
    with pytest.raises(runs.LiveRunExists):  # the match's one live run
        await _append(
            app,
            None,
            RunSeeded(
                at=datetime.now(UTC),
                run_id="R2",
                match_id="M1",
                gaps=("missing_analysis",),
                found=0,
                expected=1,
            ),
        )
    await refuse(app.engine, "NEW.type = 'RunFailed'")
    with pytest.raises(runs.AppendRejected) as refused:
        await _append(app, moved, RunFailed(at=datetime.now(UTC), reason="x"))
    assert refused.value.run_id == "R1"
    assert REFUSAL in refused.value.cause
    if app.engine.dialect.name == "postgresql":
        assert refused.value.constraint == "ck_test_frozen"
    assert await get_run(app) == moved


async def _append(app: App, run: Run | None, event: Event) -> Run:
    async with app.engine.begin() as conn:
        return await runs.append(conn, run, [event])
