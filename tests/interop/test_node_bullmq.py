"""retro heals gaps through real Node BullMQ workers (bullmq 5.x from npm).

The workers (``tests/interop/workers.mjs``) run under ``node`` as a TypeScript/Node
host's would: they consume retro's three queues, refuse any job whose name, id,
priority or payload is not byte-compatible with DESIGN §1, and write analyses,
predictions and Kicktipp scores into the host's PostgreSQL tables. retro runs as
the operator runs it (``retro start``, ``retro status``, ``retro run --until-idle``)
and must see the Node workers, their completions and their failures: a job that
throws once is a ``JobFailed`` and a retry, a job that completes short is a
``PredictionsShort``, a job that always throws fails the run with Node's reason.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from bullmq import Job, Queue
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.engine import make_url

from retro import jobids
from retro.events import (
    AnalysisCompleted,
    AnalysisRequested,
    AnalysisSkipped,
    Event,
    JobFailed,
    Phase,
    PhaseTimedOut,
    PredictionsCompleted,
    PredictionsRequested,
    PredictionsShort,
    Requested,
    RetryScheduled,
    RunCompleted,
    RunFailed,
    SettlementCompleted,
    SettlementRequested,
    SettlementSkipped,
)
from retro.pipeline import host
from retro.pipeline.host_rows import JobLogEntry
from retro.pipeline.scoring import settle
from retro.queue import JOB_ID_FORMATS
from retro.store import runs
from retro.store.db import create_engine
from retro.store.schema import backfill_runs, match_analysis, matches, predictions
from tests.conftest import Backend
from tests.e2e.clirunner import Result, run_retro
from tests.healing import assert_healed
from tests.interop import season
from tests.interop.conftest import NodeProcess, StartWorkers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.node,
    pytest.mark.parametrize("backend", ["postgres-server"], indirect=True),
]

FAIL_ONCE = {"f-analysis": "analysis", "f-predict": "predictions", "f-settle": "settlement"}
SHORT_ONCE = "s-short"
NODE_SAYS_NO = "node says no"


def libpq_url(database_url: str) -> str:
    """The ``postgresql://`` URL node-postgres takes for a SQLAlchemy ``postgresql+psycopg`` one."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def worker_env(backend: Backend, **faults: str) -> dict[str, str]:
    """What a host's Node worker is configured with: its database, Redis, prefix, faults."""
    return {
        "DATABASE_URL": libpq_url(backend.database_url),
        "REDIS_URL": backend.redis_url,
        "BULLMQ_PREFIX": backend.prefix,
        "CONCURRENCY": "2",
        **faults,
    }


def retro(tmp_path: Path, backend: Backend, *args: str, **settings: str) -> Result:
    """``retro ARGS`` as a process on ``backend``, with extra ``RETRO_*`` settings."""
    return run_retro(*args, cwd=tmp_path, env={**backend.env(), **settings}, timeout=60)


def wait_for_workers(tmp_path: Path, backend: Backend, n: int) -> Result:
    """``retro status`` once it shows ``n`` workers on each queue (within 10 s)."""
    line = f"Workers: analysis-queue {n}, predictions-queue {n}, settlement-queue {n}"
    deadline = time.monotonic() + 10
    while True:
        status = retro(tmp_path, backend, "status")
        if line in status.stdout or time.monotonic() > deadline:
            assert line in status.stdout, status
            return status
        time.sleep(0.2)


def node_output(workers: list[NodeProcess]) -> str:
    return "\n".join(f"--- {w.name}\n{w.output()}" for w in workers)


async def events_by_match(database_url: str) -> dict[str, list[Event]]:
    """Every run's events, by match id (one run per match here)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            run_of = dict(
                (await conn.execute(select(backfill_runs.c.match_id, backfill_runs.c.id))).all()
            )
            return {match: await runs.events_of(conn, run_id) for match, run_id in run_of.items()}
    finally:
        await engine.dispose()


def heal_through(
    tmp_path: Path, backend: Backend, worker: NodeProcess, *run_args: str, **settings: str
) -> Result:
    """``retro start --days 14``, then ``retro run --until-idle --no-scan RUN_ARGS``
    with ``settings`` (``RETRO_*``), both exiting 0 (with the Node workers' output
    when not)."""
    started = retro(tmp_path, backend, "start", "--days", "14")
    assert started.code == 0, started
    ran = retro(tmp_path, backend, "run", "--until-idle", "--no-scan", *run_args, **settings)
    assert ran.code == 0, f"{ran}\n{worker.output()}"
    return ran


async def node_results(backend: Backend, job_ids: dict[str, list[str]]) -> dict[str, object]:
    """``returnvalue`` of the given jobs (by queue name), read back through python-bullmq."""
    values: dict[str, object] = {}
    for queue_name, ids in job_ids.items():
        queue = Queue(queue_name, {"connection": backend.redis_url, "prefix": backend.prefix})
        try:
            for job_id in ids:
                job = await Job.fromId(queue, job_id)
                values[job_id] = None if job is None else job.returnvalue
        finally:
            await queue.close()
    return values


def kinds(events: list[Event]) -> list[type[Event]]:
    return [type(e) for e in events]


async def test_node_workers_heal_every_gap(
    backend: Backend, node_workers: StartWorkers, tmp_path: Path
) -> None:
    gaps = await season.seed(backend.database_url)
    assert 10 <= len(gaps) <= 20
    assert {k for g in gaps for k in g.kinds} == {
        "missing_analysis",
        "missing_predictions",
        "unscored",
    }
    faults = {
        "FAIL_ONCE": ",".join(f"{phase}:{m}" for m, phase in FAIL_ONCE.items()),
        "SHORT_ONCE": SHORT_ONCE,
    }
    workers = [node_workers(f"node-{i}", worker_env(backend, **faults)) for i in (1, 2)]
    bullmq_version = workers[0].output().split("ready bullmq ", 1)[1].split()[0]
    assert bullmq_version.startswith("5."), bullmq_version

    started = retro(tmp_path, backend, "start", "--days", "14")
    assert started.code == 0, started
    # Both Node processes are seen on every queue (Node bullmq names its blocking
    # connection {prefix}:{base64(queue)}:w:{name}; retro counts it).
    status = wait_for_workers(tmp_path, backend, 2)
    assert status.code == 0, status

    ran = retro(
        tmp_path,
        backend,
        "run",
        "--until-idle",
        "--no-scan",
        "--max-in-flight",
        "4",
        "--tick-interval",
        "0.5",
        RETRO_RETRY_BACKOFF="0.2",
    )
    assert ran.code == 0, f"{ran}\n{node_output(workers)}"

    # The host tables are healed: 3 predictions per match (none for the retired or
    # auto-disabled model), all scored where settleable, no job executed twice.
    counts = await assert_healed(backend.database_url, expected_per_match=season.EXPECTED)
    assert counts == {"done": len(gaps)}, node_output(workers)

    by_match = await events_by_match(backend.database_url)
    assert set(by_match) == {g.match_id for g in gaps}
    for gap in gaps:
        events = by_match[gap.match_id]
        types = kinds(events)
        assert types[-1] is RunCompleted, (gap.match_id, types)
        if "missing_analysis" in gap.kinds:
            assert AnalysisRequested in types and AnalysisCompleted in types, (gap.match_id, types)
        else:
            assert AnalysisSkipped in types and AnalysisRequested not in types, (
                gap.match_id,
                types,
            )
        assert PredictionsCompleted in types, (gap.match_id, types)
        assert ("missing_predictions" in gap.kinds) == (PredictionsRequested in types), types
        if gap.settleable:
            assert SettlementRequested in types and SettlementCompleted in types, types
        else:
            assert SettlementSkipped in types and SettlementRequested not in types, types
        completed = next(e for e in events if isinstance(e, PredictionsCompleted))
        assert (completed.found, completed.expected) == (season.EXPECTED, season.EXPECTED)
        assert PhaseTimedOut not in types, (gap.match_id, types)
        failures = [e for e in events if isinstance(e, JobFailed)]
        if gap.match_id in FAIL_ONCE:
            # Node's failure is observed once, with Node's own reason, then retried.
            phase = FAIL_ONCE[gap.match_id]
            assert [(f.phase, f.reason) for f in failures] == [(phase, NODE_SAYS_NO)], types
            retries = [e for e in events if isinstance(e, RetryScheduled)]
            assert [r.phase for r in retries] == [phase], types
            attempts = [e.attempt for e in events if isinstance(e, Requested) and e.PHASE == phase]
            assert attempts == [1, 2], types
        else:
            assert failures == [], (gap.match_id, failures)
        shorts = [e for e in events if isinstance(e, PredictionsShort)]
        if gap.match_id == SHORT_ONCE:
            # The Node job completed but wrote 1 of 3: retro judged the data, not the job.
            assert [(s.found, s.expected) for s in shorts] == [(1, season.EXPECTED)], types
            assert RetryScheduled in types, types
        else:
            assert shorts == [], (gap.match_id, types)

    engine = create_engine(backend.database_url)
    try:
        async with engine.connect() as conn:
            analyses = Counter(
                (
                    await conn.execute(
                        select(match_analysis.c.match_id).where(
                            match_analysis.c.favorite_team_name.is_not(None)
                        )
                    )
                ).scalars()
            )
            rows = (
                await conn.execute(
                    select(
                        predictions.c.id,
                        predictions.c.match_id,
                        predictions.c.model_id,
                        predictions.c.predicted_home,
                        predictions.c.predicted_away,
                        predictions.c.status,
                        predictions.c.tendency_points,
                        predictions.c.goal_diff_bonus,
                        predictions.c.exact_score_bonus,
                        predictions.c.total_points,
                    )
                )
            ).all()
            quotas = {
                r.id: (r.quota_home, r.quota_draw, r.quota_away)
                for r in await conn.execute(
                    select(
                        matches.c.id,
                        matches.c.quota_home,
                        matches.c.quota_draw,
                        matches.c.quota_away,
                    )
                )
            }
        journal = await host.job_log(engine)
    finally:
        await engine.dispose()

    # One analysis with a favourite per gap match: the NULL-favourite row was filled
    # in, not duplicated.
    for gap in gaps:
        assert analyses[gap.match_id] == 1, (gap.match_id, analyses)
    # Node's Kicktipp settlement agrees with retro's scoring, prediction by prediction.
    seeded_scored = {
        f"p-{g.match_id}-{m}" for g in gaps for m, t in g.tips.items() if t[2] == "scored"
    }
    for gap in (g for g in gaps if g.settleable):
        assert gap.score is not None
        mine = [r for r in rows if r.match_id == gap.match_id]
        valid = [r for r in mine if r.predicted_home is not None and r.predicted_away is not None]
        expected_quotas, points = settle(
            [(r.predicted_home, r.predicted_away) for r in valid], gap.score
        )
        assert quotas[gap.match_id] == (
            expected_quotas.home,
            expected_quotas.draw,
            expected_quotas.away,
        )
        for row, want in zip(valid, points, strict=True):
            if row.id in seeded_scored:
                continue
            got = (
                row.tendency_points,
                row.goal_diff_bonus,
                row.exact_score_bonus,
                row.total_points,
            )
            assert row.status == "scored", row
            assert got == (
                want.tendency_points,
                want.goal_diff_bonus,
                want.exact_score_bonus,
                want.total_points,
            ), (gap.match_id, row)
        assert all(r.status == "void" for r in mine if r not in valid), mine
    for gap in (g for g in gaps if not g.settleable):
        assert {r.status for r in rows if r.match_id == gap.match_id} == {"pending"}

    # The Node journal: every execution of retro's jobs, three deliberate failures.
    assert sorted(e.job_id for e in journal if e.outcome != "ok") == sorted(
        JOB_ID_FORMATS[Phase(phase)].format(matchId=m) for m, phase in FAIL_ONCE.items()
    )
    assert {e.outcome for e in journal if e.outcome != "ok"} == {f"error: {NODE_SAYS_NO}"}
    # What Node returned is read back through python-bullmq: the last job of each
    # phase was completed by a Node worker of this bullmq version.
    final = {
        "analysis-queue": [
            retro_job_id(Phase.ANALYSIS, g.match_id) for g in gaps if "missing_analysis" in g.kinds
        ],
        "settlement-queue": [
            retro_job_id(Phase.SETTLEMENT, g.match_id) for g in gaps if g.settleable
        ],
    }
    for job_id, value in (await node_results(backend, final)).items():
        assert isinstance(value, dict) and value.get("by") == "node", (job_id, value)
        assert value.get("bullmq") == bullmq_version, (job_id, value)
    await assert_colon_ids_encoded(backend, by_match, journal)
    output = node_output(workers)
    assert "protocol:" not in output, output
    assert "worker error" not in output, output
    print(f"node bullmq {bullmq_version} healed {len(gaps)} gap matches")


def retro_job_id(phase: Phase, match_id: str) -> str:
    """retro's job id of ``match_id`` in ``phase`` (the match id percent-encoded)."""
    return jobids.job_id(JOB_ID_FORMATS[phase], match_id)


async def assert_colon_ids_encoded(
    backend: Backend, by_match: dict[str, list[Event]], journal: list[JobLogEntry]
) -> None:
    """The documented handling of match ids BullMQ cannot carry raw (docs/config.md):
    ``epl:2024:123`` and ``n-all:logs`` were healed (above) under encoded job ids,
    which the Node workers checked against their own encoder; the payload kept the raw
    id; and ``n-all``'s logs list, which ``n-all:logs`` raw would have hit, is intact."""
    expected = {"epl:2024:123": "epl%3A2024%3A123", "n-all:logs": "n-all%3Alogs"}
    assert set(season.COLON_IDS) == set(expected)
    for match_id, encoded in expected.items():
        requested = [e.job_id for e in by_match[match_id] if isinstance(e, Requested)]
        assert requested, by_match[match_id]
        assert all(":" not in j and encoded in j for j in requested), requested
        assert {e.job_id for e in journal if e.match_id == match_id} == set(requested)
    redis = Redis.from_url(backend.redis_url, decode_responses=True)
    try:
        key = f"{backend.prefix}:analysis-queue:analyze-retro-n-all"
        assert await redis.type(f"{key}:logs") == "list"  # Node logged on n-all's job
        assert await redis.type(f"{key}%3Alogs") == "hash"  # n-all:logs' own job
        data = await redis.hget(f"{key}%3Alogs", "data")
        assert data is not None and json.loads(data)["matchId"] == "n-all:logs"  # raw
    finally:
        await redis.aclose()


async def test_node_failure_that_persists_fails_the_run(
    backend: Backend, node_workers: StartWorkers, tmp_path: Path
) -> None:
    gaps = await season.seed(backend.database_url, only=("f-predict", "n-unscored"))
    worker = node_workers("node-doomed", worker_env(backend, FAIL_ALWAYS="predictions:f-predict"))
    heal_through(
        tmp_path,
        backend,
        worker,
        *("--max-in-flight", "2", "--tick-interval", "0.5"),
        RETRO_RETRY_BACKOFF="0.2",
        RETRO_MAX_ATTEMPTS="2",
    )
    by_match = await events_by_match(backend.database_url)
    assert set(by_match) == {g.match_id for g in gaps}
    assert kinds(by_match["n-unscored"])[-1] is RunCompleted

    doomed = by_match["f-predict"]
    failures = [(e.phase, e.reason) for e in doomed if isinstance(e, JobFailed)]
    assert failures == [("predictions", "node says no, always")] * 2, kinds(doomed)
    end = doomed[-1]
    assert isinstance(end, RunFailed), kinds(doomed)
    assert end.reason == "predictions failed 2 times; last: node says no, always"
    status = wait_for_workers(tmp_path, backend, 1)
    assert "node says no, always" in status.stdout, status


async def test_node_unrecoverable_error_fails_the_run_without_a_retry(
    backend: Backend, node_workers: StartWorkers, tmp_path: Path
) -> None:
    """A Node worker throws BullMQ's ``UnrecoverableError``: the run fails at once with
    the worker's reason; no retry is spent although ``max_attempts`` allows three."""
    gaps = await season.seed(backend.database_url, only=("f-predict",))
    worker = node_workers("node-never", worker_env(backend, FAIL_NEVER="predictions:f-predict"))
    heal_through(
        tmp_path,
        backend,
        worker,
        *("--tick-interval", "0.5"),
        RETRO_RETRY_BACKOFF="0.2",
        RETRO_MAX_ATTEMPTS="3",
    )
    by_match = await events_by_match(backend.database_url)
    assert set(by_match) == {g.match_id for g in gaps}
    doomed = by_match["f-predict"]
    asked = [e for e in doomed if isinstance(e, PredictionsRequested)]
    assert len(asked) == 1, kinds(doomed)
    assert [e for e in doomed if isinstance(e, JobFailed)] == [], kinds(doomed)
    end = doomed[-1]
    assert isinstance(end, RunFailed), kinds(doomed)
    assert end.reason == (
        "predictions job predict-retro-f-predict failed with UnrecoverableError: node says never"
    )


async def test_node_job_that_hangs_is_timed_out(
    backend: Backend, node_workers: StartWorkers, tmp_path: Path
) -> None:
    """A Node worker holding a job past the phase budget is a ``PhaseTimedOut``: retro
    must count the Node workers, or it would take the job's holder for dead and wait."""
    gaps = await season.seed(backend.database_url, only=("n-unscored",))
    worker = node_workers(
        "node-slow", worker_env(backend, HANG_ONCE="settlement:n-unscored", HANG_SECONDS="2.5")
    )
    heal_through(
        tmp_path,
        backend,
        worker,
        *("--tick-interval", "0.25"),
        RETRO_SETTLEMENT_TIMEOUT="1",
        RETRO_RETRY_BACKOFF="0.1",
        RETRO_MAX_ATTEMPTS="5",
    )
    events = (await events_by_match(backend.database_url))[gaps[0].match_id]
    timeouts = [e for e in events if isinstance(e, PhaseTimedOut)]
    assert timeouts, kinds(events)
    assert {(t.phase, t.budget) for t in timeouts} == {("settlement", 1.0)}
    assert kinds(events)[-2:] == [SettlementCompleted, RunCompleted], kinds(events)
    assert not any(isinstance(e, JobFailed) for e in events), kinds(events)
