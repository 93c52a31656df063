"""Bad input (issue 3, item 8), the cases tests/e2e/test_cli_errors.py does not cover:
configuration files and values, conflicting options, host schemas, host rows that
change under a run, garbage from workers, and events this version does not know.

Each case gives a one-line error with the documented exit code (2: usage or
configuration; 1: the command ran and failed) or a recorded one-line reason, and
nothing already stored is lost or changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bullmq import Job
from sqlalchemy import Connection, insert, inspect, text, update

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.events import Phase
from retro.machine import REASON_LIMIT, State
from retro.pipeline import host
from retro.pipeline.stages import StageError
from retro.pipeline.workers import ReferenceWorkers, run_workers
from retro.queue import consume
from retro.scheduler import Daemon
from retro.store import migrate, runs
from retro.store.db import create_engine
from retro.store.schema import backfill_events, match_analysis, matches, models, predictions
from tests.e2e.clirunner import Result, one_error_line, run_retro
from tests.e2e.hostdata import engine_for, row_counts, seed_host, upgrade_retro

pytestmark = pytest.mark.e2e

PASSWORD = "s3cretpw"


def fingerprint(url: str) -> dict[str, str]:
    """A hash of every row of every table (host's and retro's), by table."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            found = {}
            for name in sorted(inspect(conn).get_table_names()):
                rows = sorted(repr(tuple(r)) for r in conn.execute(text(f'SELECT * FROM "{name}"')))
                found[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
            return found
    finally:
        engine.dispose()


def seeded_database(folder: Path) -> tuple[str, list[str]]:
    """A SQLite host database with retro's tables and one pending run per gap match."""
    url = f"sqlite+aiosqlite:///{folder / 'host.db'}"
    seed_host(url)
    upgrade_retro(url)

    async def seed() -> list[str]:
        async with App(Settings(database_url=url), redis=False) as app:
            await host.create_journal(app.engine)  # the reference workers' table
            return (await commands.start(app, days=14, now=datetime.now(UTC))).seeded

    return url, asyncio.run(seed())


# --- configuration and options: one line, exit 2 -----------------------------------------


@dataclass(frozen=True)
class Case:
    """A command run in a folder holding ``files``, with ``env`` on top of the database."""

    id: str
    args: tuple[str, ...]
    words: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)


REDIS_DOWN = "redis://127.0.0.1:1/0"
CASES = [
    Case("toml-syntax", ("status",), ("retro.toml", "TOML"), files={"retro.toml": b"a = = 4\n"}),
    Case(
        "toml-not-utf8",
        ("status",),
        ("retro.toml", "UTF-8"),
        files={"retro.toml": b"max_attempts = 3\n# caf\xe9\n"},
    ),
    Case(
        "toml-wrong-type",
        ("run", "--until-idle"),
        ("max_attempts", "integer"),
        files={"retro.toml": b'max_attempts = "many"\n'},
    ),
    Case(
        "toml-tick-interval-zero",
        ("run", "--until-idle"),
        ("tick_interval", "greater than 0"),
        files={"retro.toml": b"tick_interval = 0\n"},
    ),
    Case(
        "dotenv-max-in-flight-lots",
        ("run", "--until-idle"),
        ("max_in_flight", "RETRO_MAX_IN_FLIGHT", "integer"),
        files={".env": b"RETRO_MAX_IN_FLIGHT=lots\n"},
    ),
    Case(
        "env-max-in-flight-lots",
        ("run", "--until-idle"),
        ("--max-in-flight", "lots"),
        env={"RETRO_MAX_IN_FLIGHT": "lots"},
    ),
    Case(
        "env-cooldown-negative",
        ("start", "--days", "3"),
        ("cooldown", "RETRO_COOLDOWN"),
        env={"RETRO_COOLDOWN": "-5"},
    ),
    Case(
        "env-tick-interval-zero",
        ("run", "--until-idle"),
        ("--tick-interval", "RETRO_TICK_INTERVAL"),
        env={"RETRO_TICK_INTERVAL": "0"},
    ),
    Case(
        "env-max-attempts-zero",
        ("run", "--until-idle"),
        ("max_attempts", "RETRO_MAX_ATTEMPTS"),
        env={"RETRO_MAX_ATTEMPTS": "0"},
    ),
    Case(
        "env-expected-predictions-negative",
        ("start", "--days", "3"),
        ("expected_predictions",),
        env={"RETRO_EXPECTED_PREDICTIONS": "-1"},
    ),
    Case(
        "redis-url-port-not-a-number",
        ("status",),
        ("RETRO_REDIS_URL", "notaport"),
        env={"RETRO_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:notaport/0"},
    ),
    Case(
        "redis-url-port-out-of-range",
        ("status",),
        ("RETRO_REDIS_URL", "99999"),
        env={"RETRO_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:99999/0"},
    ),
    Case(
        "database-url-port-not-a-number",
        ("status",),
        ("RETRO_DATABASE_URL", "notaport"),
        env={
            "RETRO_DATABASE_URL": f"postgresql+psycopg://u:{PASSWORD}@127.0.0.1:notaport/x",
            "RETRO_REDIS_URL": REDIS_DOWN,
        },
    ),
    Case("retry-run-and-failed", ("retry", "RUN", "--failed"), ("run ids", "--failed")),
    Case("retry-nothing", ("retry",), ("run ids", "--failed")),
    Case("retry-unknown-run", ("retry", "no-such-run"), ("no-such-run",)),
    Case(
        "reprocess-unknown-choice",
        ("start", "--days", "3", "--reprocess", "sometimes"),
        ("--reprocess", "sometimes"),
    ),
    Case("cancel-run-and-all", ("cancel", "RUN", "--all"), ("run ids", "--all")),
    Case("cancel-nothing", ("cancel",), ("run ids", "--all")),
    Case("history-unknown-id", ("history", "no-such-id"), ("no-such-id",)),
    Case(
        "status-watch-interval-zero",
        ("status", "--watch", "--interval", "0"),
        ("--interval", "0"),
    ),
    Case("workers-fail-rate-above-one", ("workers", "--fail-rate", "1.5"), ("--fail-rate", "1.5")),
    Case("workers-concurrency-zero", ("workers", "--concurrency", "0"), ("--concurrency", "0")),
]


@dataclass
class Batch:
    """The shared database, its fingerprint before and after every case, and results."""

    url: str
    before: dict[str, str]
    after: dict[str, str]
    results: dict[str, tuple[Path, Result]]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    """Every case against one seeded database, two at a time, each in its own folder."""
    url, _ = seeded_database(tmp_path_factory.mktemp("stored"))
    before = fingerprint(url)

    def one(case: Case) -> tuple[Path, Result]:
        cwd = tmp_path_factory.mktemp(case.id)
        for name, content in case.files.items():
            (cwd / name).write_bytes(content)
        env = {"RETRO_DATABASE_URL": url, **case.env}
        return cwd, run_retro(*case.args, cwd=cwd, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip((c.id for c in CASES), pool.map(one, CASES), strict=True))
    return Batch(url, before, fingerprint(url), results)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_setting_or_option_is_one_line_exit_2(batch: Batch, case: Case) -> None:
    cwd, result = batch.results[case.id]
    one_error_line(result, *case.words)
    assert PASSWORD not in result.output
    assert sorted(p.name for p in cwd.iterdir()) == sorted(case.files), "nothing written"
    assert batch.after == batch.before, "stored rows changed"


# --- host schemas: one line naming the column, exit 2 -------------------------------------


@contextmanager
def begin(url: str) -> Iterator[Connection]:
    """A synchronous transaction on ``url``; the engine is disposed afterwards."""
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _kickoff_integer_sqlite(url: str) -> None:
    with begin(url) as conn:
        conn.exec_driver_sql("ALTER TABLE matches RENAME TO matches_text")
        conn.exec_driver_sql(
            "CREATE TABLE matches (id TEXT PRIMARY KEY, external_id TEXT, competition_id TEXT,"
            " home_team TEXT, away_team TEXT, kickoff_time INTEGER, home_score INTEGER,"
            " away_score INTEGER, status TEXT)"
        )
        conn.exec_driver_sql(
            "INSERT INTO matches SELECT id, external_id, competition_id, home_team, away_team,"
            " 1747000000, home_score, away_score, status FROM matches_text"
        )
        conn.exec_driver_sql("DROP TABLE matches_text")


def _kickoff_timestamp_postgres(url: str) -> None:
    with begin(url) as conn:
        conn.exec_driver_sql(
            "ALTER TABLE matches ALTER COLUMN kickoff_time TYPE timestamptz"
            " USING kickoff_time::timestamptz"
        )


def _predictions_without_status(url: str) -> None:
    with begin(url) as conn:
        conn.exec_driver_sql("ALTER TABLE predictions DROP COLUMN status")


@pytest.mark.parametrize(
    ("database", "alter", "args", "words"),
    [
        pytest.param(
            "sqlite",
            _kickoff_integer_sqlite,
            ("start", "--days", "14"),
            ("matches.kickoff_time", "INTEGER", "text"),
            id="sqlite-kickoff-time-integer",
        ),
        pytest.param(
            "postgres",
            _kickoff_timestamp_postgres,
            ("run", "--until-idle"),
            ("matches.kickoff_time", "TIMESTAMP", "text"),
            id="postgres-kickoff-time-timestamp",
        ),
        pytest.param(
            "sqlite",
            _predictions_without_status,
            ("workers",),
            ("predictions", "status"),
            id="host-table-missing-a-column",
        ),
    ],
)
def test_host_schema_retro_cannot_read_is_one_line_exit_2(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database: str,
    alter: Any,
    args: tuple[str, ...],
    words: tuple[str, ...],
) -> None:
    env: dict[str, str] = {}
    if database == "postgres":
        url = request.getfixturevalue("postgres_url")
        env["RETRO_REDIS_URL"] = REDIS_DOWN  # never reached: the schema check comes first
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'host.db'}"
    seed_host(url)
    upgrade_retro(url)
    alter(url)
    before = fingerprint(url)
    result = run_retro(*args, cwd=tmp_path, env={"RETRO_DATABASE_URL": url, **env})
    one_error_line(result, *words)
    assert fingerprint(url) == before


# --- host rows and worker results: a recorded reason, or a heal -------------------------

MODELS = ("m1", "m2", "m3")


@dataclass(frozen=True)
class Row:
    """One host match: (home, away) score, analysis favourite (False: none), models
    with a pending prediction."""

    status: str
    score: tuple[int, int] | None
    favourite: str | bool
    predicted: tuple[str, ...] = ()
    external_id: str | None = "ext"


ROWS: dict[str, Row] = {
    # With require_external_id off (as in _heal_logged) the analysis payload carries
    # externalId null and the run heals; tests/integration/test_external_id.py has the rule on.
    "external-id-null": Row("finished", (2, 0), False, external_id=None),
    # Scores on a match that is not finished: settlement is skipped, predictions pending.
    "scores-on-live-match": Row("live", (1, 1), "Home"),
    # Rows the host rewrites after the run was seeded.
    "kickoff-unreadable-mid-run": Row("finished", (0, 1), False),
    "status-unknown-mid-run": Row("finished", (3, 3), False),
    # Workers returning garbage, or failing with a huge message.
    "result-not-json": Row("finished", (1, 0), False),
    "result-huge": Row("finished", (0, 0), "Home"),
    "error-100kb": Row("finished", (2, 2), "Home", predicted=MODELS),
}
MID_RUN = {
    "kickoff-unreadable-mid-run": {"kickoff_time": "when the floodlights work"},
    "status-unknown-mid-run": {"status": "abandoned-by-referee"},
}
HUGE_RESULT = "x" * 1_000_000
HUGE_ERROR = "disk on fire " * 8_000 + "\nTraceback (most recent call last): ..."


@dataclass
class Outcome:
    """What one row's run came to."""

    state: State
    events: list[tuple[str, dict[str, Any]]]
    last_error: str | None
    payloads: dict[str, Any]
    jobs: dict[str, tuple[str, str | None]]
    predictions: dict[str, str]


@dataclass
class Heal:
    outcomes: dict[str, Outcome]
    lost_events: list[str]
    changed: list[str]
    errors: list[str]


def _insert_rows(url: str, now: datetime) -> None:
    kickoff = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with begin(url) as conn:
        conn.execute(
            models.insert(),
            [{"id": m, "provider": "t", "model_name": m, "display_name": m} for m in MODELS],
        )
        for match_id, row in ROWS.items():
            conn.execute(
                matches.insert().values(
                    id=match_id,
                    external_id=row.external_id and f"{row.external_id}-{match_id}",
                    competition_id="t.1",
                    home_team="Home",
                    away_team="Away",
                    kickoff_time=kickoff,
                    home_score=row.score[0] if row.score else None,
                    away_score=row.score[1] if row.score else None,
                    status=row.status,
                )
            )
            if row.favourite is not False:
                conn.execute(
                    match_analysis.insert().values(
                        id=f"a-{match_id}", match_id=match_id, favorite_team_name=row.favourite
                    )
                )
            for model_id in row.predicted:
                conn.execute(
                    predictions.insert().values(
                        id=f"p-{match_id}-{model_id}",
                        match_id=match_id,
                        model_id=model_id,
                        predicted_home=1,
                        predicted_away=0,
                        predicted_result="H",
                        status="pending",
                    )
                )


def _garbage_workers(engine: Any) -> dict[str, Any]:
    """The reference workers, except for the garbage cases."""
    reference = ReferenceWorkers(engine)

    async def analyze(job: Any, token: str) -> Any:
        result = await reference.analyze(job, token)
        if job.data["matchId"] == "result-not-json":
            return {"written": result, "when": object()}  # json.dumps fails
        return result

    async def predict(job: Any, token: str) -> Any:
        result = await reference.predict(job, token)
        if job.data["matchId"] == "result-huge":
            return {"written": result, "blob": HUGE_RESULT}
        return result

    async def settle(job: Any, token: str) -> Any:
        if job.data["matchId"] == "error-100kb":
            raise StageError(HUGE_ERROR)
        return await reference.settle(job, token)

    return {"analysis-queue": analyze, "predictions-queue": predict, "settlement-queue": settle}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _heal(url: str, redis_url: str, prefix: str) -> Heal:
    errors = _Errors()
    logging.getLogger("retro").addHandler(errors)
    try:
        return await _heal_logged(url, redis_url, prefix, errors.lines)
    finally:
        logging.getLogger("retro").removeHandler(errors)


async def _heal_logged(url: str, redis_url: str, prefix: str, errors: list[str]) -> Heal:
    now = datetime.now(UTC)
    settings = Settings(
        database_url=url,
        redis_url=redis_url,
        queue_prefix=prefix,
        max_attempts=2,
        retry_backoff=0.01,
        tick_interval=0.05,
        max_in_flight=len(ROWS),
        require_external_id=False,  # the host's analysis here does not need it
    )
    async with App(settings) as app:
        seeded = await commands.start(app, days=14, now=now)
        assert len(seeded.seeded) == len(ROWS), seeded
        async with app.engine.begin() as conn:
            for match_id, values in MID_RUN.items():
                await conn.execute(update(matches).where(matches.c.id == match_id).values(values))
        before, counts_before = fingerprint(url), row_counts(url)
        async with app.engine.connect() as conn:
            events_before = [tuple(r) for r in await conn.execute(backfill_events.select())]
        stop = asyncio.Event()
        consuming = asyncio.create_task(
            consume(
                app.redis_url,
                prefix=prefix,
                handlers=_garbage_workers(app.engine),
                concurrency=2,
                stop=stop,
                name="garbage",
            )
        )
        try:
            await asyncio.wait_for(
                Daemon(app).run(until_idle=True, scan=False, handle_signals=False), 60
            )
        finally:
            stop.set()
            await asyncio.wait_for(consuming, 30)
        assert app.queues is not None
        outcomes = {}
        async with app.engine.connect() as conn:
            events_after = {tuple(r) for r in await conn.execute(backfill_events.select())}
            for run_id in seeded.seeded:
                run = await runs.get(conn, run_id)
                assert run is not None
                payloads, jobs = {}, {}
                for phase in Phase:
                    job_id = app.policy.job_id(phase, run.match_id)
                    job = await Job.fromId(app.queues.queue(phase), job_id)
                    payloads[str(phase)] = None if job is None else job.data
                    view = await app.queues.job_view(phase, job_id)
                    jobs[str(phase)] = (view.state, view.failed_reason)
                outcomes[run.match_id] = Outcome(
                    state=run.state,
                    events=[(e.TYPE, e.data()) for e in await runs.events_of(conn, run_id)],
                    last_error=run.last_error,
                    payloads=payloads,
                    jobs=jobs,
                    predictions={
                        r.model_id: r.status
                        for r in await host.match_predictions(app.engine, run.match_id)
                    },
                )
    after, counts_after = fingerprint(url), row_counts(url)
    # Settlement writes the match's quotas (the host's own columns); nothing else changes.
    changed = [t for t in ("models",) if before[t] != after[t]]
    changed += [t for t, n in counts_before.items() if counts_after[t] < n]
    lost = [repr(e) for e in events_before if e not in events_after]
    return Heal(outcomes, lost, changed, errors)


@pytest.fixture(scope="module")
def heal(tmp_path_factory: pytest.TempPathFactory, embedded_redis: str) -> Heal:
    """One heal of :data:`ROWS` (SQLite, embedded Redis), garbage workers included."""
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('rows') / 'host.db'}"

    async def prepare() -> None:
        engine = create_engine(url)
        try:
            await host.create_host_tables(engine)
            await migrate.upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    _insert_rows(url, datetime.now(UTC))
    result = asyncio.run(_heal(url, embedded_redis, "badrows"))
    assert result.lost_events == [], "events appended before the heal were lost or changed"
    assert result.changed == [], f"retro or a worker changed {result.changed}"
    assert result.errors == [], f"retro logged errors: {result.errors[:3]}"
    return result


def _types(outcome: Outcome) -> list[str]:
    return [t for t, _ in outcome.events]


def _one_line(reason: str | None, *words: str) -> str:
    assert reason is not None
    assert "\n" not in reason and len(reason) <= REASON_LIMIT, (len(reason), reason[:200])
    for word in words:
        assert word in reason, f"{word!r} not in {reason!r}"
    return reason


def test_null_external_id_heals_with_external_id_null_in_the_payload(heal: Heal) -> None:
    outcome = heal.outcomes["external-id-null"]
    assert outcome.state is State.DONE, _types(outcome)
    payload = outcome.payloads["analysis"]
    assert payload is not None and "externalId" in payload
    assert payload["externalId"] is None
    assert set(outcome.predictions.values()) == {"scored"}


def test_scores_on_a_live_match_skip_settlement_and_leave_predictions_pending(
    heal: Heal,
) -> None:
    outcome = heal.outcomes["scores-on-live-match"]
    assert outcome.state is State.DONE, _types(outcome)
    skipped = [d for t, d in outcome.events if t == "SettlementSkipped"]
    assert len(skipped) == 1
    _one_line(skipped[0]["reason"], "not finished", "live")
    assert "SettlementRequested" not in _types(outcome)
    assert outcome.predictions == dict.fromkeys(MODELS, "pending")


@pytest.mark.parametrize(
    ("match_id", "words"),
    [
        ("kickoff-unreadable-mid-run", ("analysis", "kickoff_time", "floodlights")),
        ("status-unknown-mid-run", ("unknown match status", "abandoned-by-referee")),
    ],
    ids=["kickoff-unreadable-mid-run", "status-unknown-mid-run"],
)
def test_a_row_rewritten_mid_run_fails_the_run_once_with_its_reason(
    heal: Heal, match_id: str, words: tuple[str, ...]
) -> None:
    outcome = heal.outcomes[match_id]
    assert outcome.state is State.FAILED, _types(outcome)
    assert _types(outcome).count("RunFailed") == 1
    assert _types(outcome)[-1] == "RunFailed"
    reason = _one_line(outcome.last_error, *words)
    assert outcome.events[-1][1]["reason"] == reason


@pytest.mark.parametrize(
    ("match_id", "phase", "job"),
    [
        ("result-not-json", "analysis", ("failed", "not JSON serializable")),
        ("result-huge", "predictions", ("completed", None)),
    ],
    ids=["result-not-json", "result-huge"],
)
def test_a_worker_returning_garbage_does_not_break_the_run(
    heal: Heal, match_id: str, phase: str, job: tuple[str, str | None]
) -> None:
    outcome = heal.outcomes[match_id]
    state, reason = outcome.jobs[phase]
    assert state == job[0], outcome.jobs  # the garbage really reached BullMQ
    assert (reason is None) if job[1] is None else (job[1] in (reason or "")), reason
    assert outcome.state is State.DONE, (_types(outcome), outcome.last_error)
    assert "RunFailed" not in _types(outcome)
    assert set(outcome.predictions.values()) == {"scored"}
    assert len(outcome.predictions) == len(MODELS)


def test_a_100kb_error_message_is_stored_as_one_short_line(heal: Heal) -> None:
    outcome = heal.outcomes["error-100kb"]
    assert outcome.state is State.FAILED, _types(outcome)
    reasons = [d["reason"] for t, d in outcome.events if t in ("JobFailed", "RunFailed")]
    assert len(reasons) == 3  # two failed jobs, one failed run
    for reason in [*reasons, outcome.last_error]:
        _one_line(reason, "disk on fire")
    _one_line(outcome.last_error, "settlement", "2 times")
    assert outcome.predictions == dict.fromkeys(MODELS, "pending")


# --- events this version does not know --------------------------------------------------


async def test_unknown_event_type_fails_verify_and_the_daemon_serves_the_other_runs(
    tmp_path: Path, embedded_redis: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, seeded = await asyncio.to_thread(seeded_database, tmp_path)
    assert len(seeded) >= 3
    corrupt, *others = seeded
    with begin(url) as conn:
        conn.execute(
            update(backfill_events)
            .where(backfill_events.c.run_id == corrupt, backfill_events.c.seq == 1)
            .values(type="RunTeleported", data=json.dumps({"to": "mars"}))
        )
    before = fingerprint(url)
    verify = await asyncio.to_thread(
        run_retro, "verify", cwd=tmp_path, env={"RETRO_DATABASE_URL": url}
    )
    assert verify.code == 1, verify
    lines = [line for line in verify.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("retro: error:"), verify
    assert "RunTeleported" in lines[0], verify
    assert "Traceback" not in verify.output
    assert fingerprint(url) == before

    settings = Settings(
        database_url=url,
        redis_url=embedded_redis,
        queue_prefix="unknownevent",
        tick_interval=0.05,
        max_in_flight=len(seeded),
    )
    stop = asyncio.Event()
    async with App(settings) as app:
        consuming = asyncio.create_task(
            run_workers(url, app.redis_url, prefix=settings.queue_prefix, stop=stop)
        )
        try:
            await asyncio.wait_for(
                Daemon(app).run(until_idle=True, scan=False, handle_signals=False), 60
            )
        finally:
            stop.set()
            await asyncio.wait_for(consuming, 30)
        async with app.engine.connect() as conn:
            states = {run_id: (await runs.get(conn, run_id)) for run_id in others}
            for run_id in others:
                await runs.replay(conn, run_id)  # the others' logs are intact
    assert {run_id: r.state if r else None for run_id, r in states.items()} == dict.fromkeys(
        others, State.DONE
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], errors


def test_an_illegal_history_is_reported_for_its_run_by_verify_and_verify_json(
    tmp_path: Path,
) -> None:
    """A stored history the machine cannot replay (here ``RunCompleted`` straight after
    ``RunSeeded``) is a finding of ``verify`` about that run, exit 1, in text and in
    JSON, not an unexpected error; nothing stored changes."""
    url, seeded = seeded_database(tmp_path)
    corrupt = seeded[0]
    with begin(url) as conn:
        conn.execute(
            insert(backfill_events).values(
                run_id=corrupt, seq=2, type="RunCompleted", data="{}", at=datetime.now(UTC)
            )
        )
    before = fingerprint(url)
    env = {"RETRO_DATABASE_URL": url}
    why = "RunCompleted is not allowed in state pending"

    said = run_retro("verify", cwd=tmp_path, env=env)
    assert said.code == 1, said
    assert said.stdout == "", said
    lines = [line for line in said.stderr.splitlines() if line.strip()]
    assert lines == [f"retro: error: run {corrupt} cannot be replayed: {why}"], said

    as_json = run_retro("verify", "--json", cwd=tmp_path, env=env)
    assert as_json.code == 1, as_json
    assert as_json.stderr.strip() == "", as_json
    assert json.loads(as_json.stdout) == {
        "schema": "retro.verify/1",
        "ok": False,
        "runs": len(seeded),
        "events": len(seeded) + 1,
        "drifted": [],
        "illegal": [{"run_id": corrupt, "reason": why}],
    }
    assert fingerprint(url) == before


def test_verify_text_names_at_most_shown_runs_and_counts_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past :data:`retro.cli.operator.SHOWN` runs per finding, ``verify``'s text says
    how many more there are (``--json`` lists them all); run ids are escaped."""
    from click.testing import CliRunner

    from retro.cli import cli
    from retro.cli import operator as operator_cli

    url, seeded = seeded_database(tmp_path)
    corrupt = seeded[:2]
    with begin(url) as conn:
        for run_id in corrupt:
            conn.execute(
                insert(backfill_events).values(
                    run_id=run_id, seq=2, type="RunCompleted", data="{}", at=datetime.now(UTC)
                )
            )
    for key in [k for k in os.environ if k.startswith("RETRO_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRO_DATABASE_URL", url)
    monkeypatch.setattr(operator_cli, "SHOWN", 1)
    result = CliRunner().invoke(cli, ["verify"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("retro: error: run ") and lines[0].split()[3] in corrupt
    assert lines[1] == (
        "retro: error: … and 1 more run that cannot be replayed (retro verify --json lists "
        "them all)"
    )
