"""Chaos harness: heal ≥ 300 gap matches while killing, wiping and restarting everything.

    .venv/bin/python bench/chaos.py            # about 2 minutes on 2 cores

What it does, from scratch each time:

1. Creates a fresh PostgreSQL database ``retro_chaos_<random>`` on
   ``RETRO_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
   and seeds the demo season with a 60-day outage (338 gap matches), then
   ``retro start``. It is dropped at the end.
2. Starts a private ``redis-server`` on a free port in a temporary folder
   (``noeviction``, no persistence), so ``FLUSHALL`` hurts nobody.
3. Runs ``retro workers --concurrency 2 --fail-rate 0.1`` (10 % of jobs fail with
   ``injected failure``) and ``retro run --no-scan --max-in-flight 8
   --tick-interval 0.2`` as subprocesses, and during the heal:

   * SIGKILLs the daemon at random moments (after a random number of newly
     appended events, plus up to 30 ms) and restarts it, 60 times by default;
   * SIGKILLs the workers while a job is active, 5 times, and restarts them;
   * wipes Redis once (``FLUSHALL``) with the daemon and workers running;
   * restarts PostgreSQL once, with the daemon and workers running:
     ``pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart``.
     That is this machine's cluster (Debian's ``postgresql-common``, one
     cluster ``main``); elsewhere pass ``--pg-outage terminate`` (drop every
     connection to the chaos database with ``pg_terminate_backend``) or ``none``.

4. Finishes with ``retro run --until-idle`` and checks the invariants:

   * **lost**: runs not terminal, plus ``done`` runs whose match lacks its analysis,
     any expected prediction (one per active model, exactly) or, when settleable,
     a score on every prediction;
   * **duplicated**: journal entries (``pipeline_job_log``, one per stage
     execution) sharing a ``(job_id, job_timestamp)``, plus predictions scored
     more than once (a trigger on ``predictions`` records every scoring write);
   * **drift**: runs whose stored projection differs from the replay of their
     events (``runs.audit``);
   * **unexplained attempts**: ``JobFailed``/``PhaseTimedOut``/``PredictionsShort``
     events not caused by an injected failure (the journal holds the job's
     ``injected failure``) or by a worker SIGKILLed while it held the job. A
     restart of the daemon, Redis or PostgreSQL must cost no attempt. A
     ``JobFailed`` of an injected failure whose recorded reason is not
     ``injected failure`` is printed as *misreported* (charged rightly, reason lost).

   Runs that end ``failed`` because injected failures used up ``max_attempts``
   are legitimate; they are counted and their reasons printed.

The last line is ``kills: N  redis wipes: 1  pg restarts: 1  lost: 0  duplicated: 0
drift: 0``. Exit status 0 when lost, duplicated, drift and unexplained are all 0.
The core, :func:`chaos`, is importable (``tests/e2e/test_chaos.py`` runs a shorter one).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from redis.asyncio import Redis
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from retro import commands
from retro.app import App
from retro.config import Settings
from retro.demo.seed import seed_demo
from retro.events import JobFailed, PhaseTimedOut, PredictionsShort, Requested
from retro.machine import SETTLED_STATUSES, TERMINAL, State
from retro.pipeline import host
from retro.pipeline.faults import INJECTED
from retro.pipeline.workers import QUEUES
from retro.store import gaps, migrate, runs
from retro.store.db import create_engine
from retro.store.schema import backfill_events, backfill_runs, match_analysis, matches, predictions

DEMO_NOW = datetime(2025, 5, 26, 12, tzinfo=UTC)
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PREFIX = "bull"
EVENTS_PER_RUN = 7
"""Rough events per run, to spread the daemon kills over the whole heal."""

SCORING_LOG = """
CREATE TABLE chaos_scoring (prediction_id text, old_status text, new_status text,
                            at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION chaos_scoring_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.status IS DISTINCT FROM OLD.status
     OR NEW.total_points IS DISTINCT FROM OLD.total_points
     OR NEW.scored_at IS DISTINCT FROM OLD.scored_at THEN
    INSERT INTO chaos_scoring (prediction_id, old_status, new_status)
    VALUES (OLD.id, OLD.status, NEW.status);
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER chaos_scoring AFTER UPDATE ON predictions
  FOR EACH ROW EXECUTE FUNCTION chaos_scoring_log();
"""
"""Records every write to a prediction's score, so a second scoring cannot hide."""


@dataclass(frozen=True)
class ChaosConfig:
    """One chaos run. Durations in seconds.

    ``pg_outage``: ``restart`` (this machine's cluster, see the module docstring),
    ``terminate`` (``pg_terminate_backend`` on the chaos database) or ``none``.
    """

    database_url: str
    redis_url: str
    workdir: Path
    kills: int = 60
    worker_kills: int = 5
    redis_wipe: bool = True
    pg_outage: str = "restart"
    outage_days: int = 60
    competitions: tuple[str, ...] | None = None
    fail_rate: float = 0.1
    concurrency: int = 2
    max_in_flight: int = 8
    tick_interval: float = 0.2
    lock_duration: float = 30.0
    final_timeout: float = 180.0
    seed: int = 20250526


@dataclass
class ChaosReport:
    """What a chaos run did and what the invariants show."""

    gaps: int = 0
    runs: int = 0
    by_state: dict[str, int] = field(default_factory=dict)
    events: int = 0
    kills: int = 0
    kills_in_flight: int = 0
    worker_kills: int = 0
    worker_kills_mid_job: int = 0
    redis_wipes: int = 0
    pg_restarts: int = 0
    pg_terminations: int = 0
    daemon_exits: int = 0
    worker_exits: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    misreported: list[str] = field(default_factory=list)
    charged_injected: int = 0
    charged_killed_worker: int = 0
    injected_failures: int = 0
    executions: int = 0
    settle_executions: int = 0
    scored_predictions: int = 0
    redeliveries: int = 0
    worker_db_retries: int = 0
    reenqueued: int = 0
    gaps_left: int = 0
    failed_runs: list[str] = field(default_factory=list)
    heal_seconds: float = 0.0
    final_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No run lost, nothing done twice, no drift, every charged attempt explained."""
        return not (self.lost or self.duplicated or self.drift or self.unexplained)

    def last_line(self) -> str:
        """The figures line every chaos run ends with."""
        return (
            f"kills: {self.kills}  redis wipes: {self.redis_wipes}  "
            f"pg restarts: {self.pg_restarts}  "
            f"lost: {len(self.lost)}  duplicated: {len(self.duplicated)}  drift: {len(self.drift)}"
        )


# --- resources ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A ``redis-server`` of our own on a free port (noeviction, no persistence); its URL.

    Raises:
        RuntimeError: ``redis-server`` is not on PATH or does not answer within 10 s.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "redis.log", "ab") as log:
        proc = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
                *("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def fresh_database(base_url: str, prefix: str = "retro_chaos") -> Iterator[str]:
    """A new, empty PostgreSQL database ``<prefix>_<random>`` on ``base_url``'s server,
    dropped afterwards; yields its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base = make_url(base_url).set(drivername="postgresql+psycopg")
    admin = create_sync_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        for _ in range(30):  # PostgreSQL may still be coming back from the restart
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except Exception:
                time.sleep(1)
        admin.dispose()


def pg_cluster_version() -> str:
    """This machine's PostgreSQL cluster version: the one folder in /etc/postgresql."""
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    if not versions:
        raise RuntimeError("no cluster under /etc/postgresql")
    return versions[-1]


# --- the harness ---------------------------------------------------------------------------


class Harness:
    """The processes, the clients and the tallies of one chaos run."""

    def __init__(self, config: ChaosConfig, say: Callable[[str], None]) -> None:
        self.config = config
        self.say_line = say
        self.rng = random.Random(config.seed)
        self.report = ChaosReport()
        self.started = time.monotonic()
        self.engine = create_engine(config.database_url)
        self.redis: Redis = Redis.from_url(config.redis_url)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RETRO_")},
            "RETRO_DATABASE_URL": config.database_url,
            "RETRO_REDIS_URL": config.redis_url,
            "RETRO_QUEUE_PREFIX": PREFIX,
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.worker: subprocess.Popen[bytes] | None = None
        self.killed_jobs: set[tuple[str, int]] = set()
        self._last_events = 0
        self._last_in_flight = 0

    def say(self, line: str) -> None:
        self.say_line(f"[{time.monotonic() - self.started:6.1f}s] {line}")

    async def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        await self.redis.aclose()
        await self.engine.dispose()

    def spawn(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        log: IO[bytes]
        with open(self.config.workdir / f"{log_name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "retro", *args],
                cwd=self.config.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.processes.append(proc)
        return proc

    def start_worker(self) -> None:
        c = self.config
        self.worker = self.spawn(
            "workers",
            "workers",
            "--concurrency",
            str(c.concurrency),
            "--fail-rate",
            str(c.fail_rate),
            "--lock-duration",
            str(c.lock_duration),
        )

    def daemon_args(self) -> list[str]:
        c = self.config
        return [
            "run",
            "--no-scan",
            "--max-in-flight",
            str(c.max_in_flight),
            "--tick-interval",
            str(c.tick_interval),
        ]

    async def progress(self) -> tuple[int, int]:
        """(events appended so far, runs in flight); the last known values during an outage."""
        try:
            async with self.engine.connect() as conn:
                events = await conn.scalar(select(func.count()).select_from(backfill_events))
                self._last_events = int(events or 0)
                self._last_in_flight = await runs.count_in_flight(conn)
        except Exception:
            pass
        return self._last_events, self._last_in_flight

    async def active_jobs(self) -> set[tuple[str, int]]:
        """(job id, BullMQ timestamp) of every job in an ``active`` list."""
        found: set[tuple[str, int]] = set()
        for queue in QUEUES:
            for raw in await self.redis.lrange(f"{PREFIX}:{queue}:active", 0, -1):
                job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                stamp = await self.redis.hget(f"{PREFIX}:{queue}:{job_id}", "timestamp")
                if stamp is not None:
                    found.add((job_id, int(stamp)))
        return found

    def check_worker(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            self.report.worker_exits += 1
            self.say(f"workers exited on their own (code {self.worker.returncode}); restarting")
            self.start_worker()

    # --- faults -----------------------------------------------------------------------

    async def kill_worker_mid_job(self, patience: float = 10.0) -> bool:
        """SIGKILL the workers as soon as a job is active; restart them. True if a job
        was caught mid-execution (still active after the kill)."""
        assert self.worker is not None
        before = set(self.killed_jobs)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if await self.active_jobs() - before:
                break
            await asyncio.sleep(0.002)
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.report.worker_kills += 1
        caught = await self.active_jobs() - before
        self.killed_jobs |= caught
        self.start_worker()
        if caught:
            self.report.worker_kills_mid_job += 1
            names = ", ".join(sorted(job for job, _ in caught))
            self.say(f"workers SIGKILLed mid-job ({names}); restarted")
        else:
            self.say("workers SIGKILLed between jobs; restarted")
        return bool(caught)

    async def wipe_redis(self) -> None:
        keys = await self.redis.dbsize()
        await self.redis.flushall()
        self.report.redis_wipes += 1
        self.say(f"redis FLUSHALL ({keys} keys gone)")

    async def pg_outage(self) -> None:
        deadline = time.monotonic() + 5  # strike while a worker holds a job, if one comes
        while not await self.active_jobs() - self.killed_jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        if self.config.pg_outage == "restart":
            version = pg_cluster_version()
            clock = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                version,
                "main",
                "restart",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"pg_ctlcluster restart failed: {err.decode().strip()}")
            self.report.pg_restarts += 1
            self.say(f"postgresql {version}/main restarted in {time.monotonic() - clock:.1f} s")
        elif self.config.pg_outage == "terminate":
            async with self.engine.connect() as conn:
                killed = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            await self.engine.dispose()
            self.report.pg_terminations += 1
            self.say(f"postgresql: terminated {killed} backends of the chaos database")

    # --- phases -----------------------------------------------------------------------------

    async def seed(self) -> None:
        c = self.config
        seeded = await seed_demo(
            self.engine,
            now=DEMO_NOW,
            outage_days=c.outage_days,
            competitions=list(c.competitions) if c.competitions else None,
        )
        await migrate.upgrade(self.engine)
        async with self.engine.begin() as conn:
            await conn.exec_driver_sql(SCORING_LOG)
        settings = Settings(database_url=c.database_url, redis_url=c.redis_url, queue_prefix=PREFIX)
        async with App(settings, redis=False) as app:
            started = await commands.start(
                app, days=c.outage_days, now=datetime.now(UTC), until=DEMO_NOW
            )
        self.report.gaps = seeded.gaps
        self.report.runs = len(started.seeded)
        self.say(
            f"seeded {seeded.matches} matches, {seeded.models} models, an outage of "
            f"{c.outage_days} days: {seeded.gaps} gap matches, {len(started.seeded)} runs"
        )

    async def heal_under_fire(self) -> None:
        c = self.config
        plan = self.plan()
        self.start_worker()
        clock = time.monotonic()
        for kill in range(1, c.kills + 1):
            self.check_worker()
            daemon = self.spawn("run", *self.daemon_args())
            start, _ = await self.progress()
            for fault in plan.get(kill, ()):
                await self.wait_events(daemon, start + 1, timeout=10)
                if fault == "worker":
                    for _ in range(3):  # a kill between two jobs does not count as mid-job
                        if await self.kill_worker_mid_job():
                            break
                elif fault == "redis":
                    await self.wipe_redis()
                elif fault == "pg":
                    await self.pg_outage()
            events, _ = await self.progress()
            remaining_events = max(c.kills, self.report.runs * EVENTS_PER_RUN - events)
            step = max(2, round(1.6 * remaining_events / (c.kills - kill + 1)))
            target = events + self.rng.randint(1, step)
            await self.wait_events(daemon, target, timeout=15)
            await asyncio.sleep(self.rng.uniform(0, 0.03))
            if daemon.poll() is not None:
                self.report.daemon_exits += 1
                self.say(f"daemon exited on its own (code {daemon.returncode})")
            else:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait()
                self.report.kills += 1
            events, in_flight = await self.progress()
            self.report.kills_in_flight += in_flight > 0
            if kill % 10 == 0 or kill == c.kills:
                self.say(
                    f"daemon SIGKILLed {self.report.kills} times; {events} events, "
                    f"{in_flight} runs in flight"
                )
        self.report.heal_seconds = time.monotonic() - clock

    def plan(self) -> dict[int, list[str]]:
        """Which faults come during which daemon life (1-based), before its kill."""
        c = self.config
        plan: dict[int, list[str]] = defaultdict(list)
        for n in range(c.worker_kills):  # spread over the first 60 % of the heal
            plan[max(1, round((n + 0.5) * 0.6 * c.kills / max(c.worker_kills, 1)))].append("worker")
        if c.redis_wipe:
            plan[max(1, round(0.4 * c.kills))].append("redis")
        if c.pg_outage != "none":
            plan[max(1, round(0.7 * c.kills))].append("pg")
        return plan

    async def wait_events(
        self, daemon: subprocess.Popen[bytes], target: int, *, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        while daemon.poll() is None and time.monotonic() < deadline:
            if (await self.progress())[0] >= target:
                return
            await asyncio.sleep(0.01)

    async def finish(self) -> None:
        c = self.config
        self.check_worker()
        clock = time.monotonic()
        final = self.spawn("run", *self.daemon_args(), "--until-idle")
        deadline = clock + c.final_timeout
        while final.poll() is None and time.monotonic() < deadline:
            self.check_worker()
            await asyncio.sleep(0.2)
        if final.poll() is None:
            final.kill()
            final.wait()
            self.say(f"retro run --until-idle did not finish within {c.final_timeout:.0f} s")
        else:
            self.say(f"retro run --until-idle exited {final.returncode}")
        self.report.final_seconds = time.monotonic() - clock
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        workers_log = (c.workdir / "workers.log").read_text(errors="replace")
        daemon_log = (c.workdir / "run.log").read_text(errors="replace")
        self.report.redeliveries = workers_log.count("redelivered after its outcome")
        self.report.worker_db_retries = workers_log.count("database unreachable")
        self.report.reenqueued = daemon_log.count(" retro JobReenqueued ")  # one line a re-add


# --- invariants -----------------------------------------------------------------------------


async def check(harness: Harness) -> None:
    """Fill the report's invariants from the database (after every process stopped)."""
    report = harness.report
    engine = harness.engine
    async with engine.connect() as conn:
        report.by_state = await runs.counts_by_state(conn)
        audit = await runs.audit(conn)
        report.drift = list(audit.drifted)
        report.events = audit.events
        histories = {
            run_id: await runs.events_of(conn, run_id) for run_id in await runs.all_ids(conn)
        }
        rows = (await conn.execute(select(backfill_runs))).mappings().all()
        scoring = (
            await conn.execute(
                text("SELECT prediction_id, old_status, new_status FROM chaos_scoring")
            )
        ).all()
    journal = await host.job_log(engine)
    expected = {m.id for m in await host.active_models(engine)}

    # lost: not terminal, or done with incomplete data
    done_matches: list[str] = []
    for row in rows:
        if State(row["state"]) not in TERMINAL:
            report.lost.append(f"run {row['id']} match {row['match_id']} still {row['state']}")
        elif row["state"] == State.DONE:
            done_matches.append(row["match_id"])
    report.lost += await incomplete(engine, done_matches, expected)

    # duplicated: a (job id, enqueue) executed twice; a prediction scored twice
    report.executions = len(journal)
    executions = Counter((e.job_id, e.job_timestamp) for e in journal)
    report.duplicated = [
        f"job {j} (timestamp {t}) ran {n} times" for (j, t), n in executions.items() if n > 1
    ]
    report.settle_executions = sum(
        1 for e in journal if e.job_name == "settle-match" and e.outcome == "ok"
    )
    writes = Counter(p for p, _, new in scoring if new in ("scored", "void"))
    report.scored_predictions = len(writes)
    rescored = {p for p, old, _ in scoring if old in ("scored", "void")}
    rescored |= {p for p, n in writes.items() if n > 1}
    report.duplicated += [f"prediction {p} scored more than once" for p in sorted(rescored)]

    # charged attempts: each must come from an injected failure or a killed worker
    injected = {(e.job_id, e.job_timestamp) for e in journal if e.outcome == f"error: {INJECTED}"}
    report.injected_failures = len(injected)
    by_id = {row["id"]: row for row in rows}
    for run_id, events in histories.items():
        job_id = None
        explained_all = True
        charged = 0
        for event in events:
            if isinstance(event, Requested):
                job_id = event.job_id
            if not isinstance(event, JobFailed | PhaseTimedOut | PredictionsShort):
                continue
            charged += 1
            stamp = event.job_created_at
            key = (job_id or "?", round(stamp.timestamp() * 1000) if stamp else -1)
            if isinstance(event, JobFailed) and key in injected:
                report.charged_injected += 1
                if INJECTED not in event.reason:  # charged rightly, but the reason is wrong
                    report.misreported.append(
                        f"run {run_id} {event.TYPE} {event.data()}: the journal says {INJECTED!r}"
                    )
            elif key in harness.killed_jobs:
                report.charged_killed_worker += 1
            else:
                explained_all = False
                report.unexplained.append(
                    f"run {run_id} match {by_id[run_id]['match_id']}: {event.TYPE} {event.data()}"
                )
        row = by_id[run_id]
        if row["state"] == State.FAILED:
            legitimate = explained_all and charged > 0  # failed by its attempts, all explained
            verdict = "legitimate" if legitimate else "NOT explained"
            report.failed_runs.append(f"run {run_id} ({verdict}): {row['last_error']}")
            if not legitimate and explained_all:
                report.unexplained.append(f"run {run_id} failed: {row['last_error']}")

    async with engine.connect() as conn:
        left = await gaps.scan(
            conn,
            now=DEMO_NOW,
            clock=datetime.now(UTC),
            days=harness.config.outage_days,
            cooldown=timedelta(0),
        )
    report.gaps_left = len(left.gaps)


async def incomplete(
    engine: host.HostEngine, match_ids: list[str], expected: set[str]
) -> list[str]:
    """Healed (``done``) matches whose data is not whole."""
    problems: list[str] = []
    if not match_ids:
        return problems
    async with engine.connect() as conn:
        with_favourite = select(match_analysis.c.match_id).where(
            match_analysis.c.favorite_team_name.is_not(None)
        )
        analysed = {
            row.match_id
            for row in await host.select_in(
                conn, with_favourite, match_analysis.c.match_id, match_ids
            )
        }
        tips = await host.select_in(
            conn,
            select(predictions.c.match_id, predictions.c.model_id, predictions.c.status),
            predictions.c.match_id,
            match_ids,
        )
        facts = await host.select_in(
            conn,
            select(matches.c.id, matches.c.status, matches.c.home_score, matches.c.away_score),
            matches.c.id,
            match_ids,
        )
    by_match: dict[str, list[Any]] = defaultdict(list)
    for tip in tips:
        by_match[tip.match_id].append(tip)
    for match in facts:
        got = by_match[match.id]
        models = [t.model_id for t in got]
        if match.id not in analysed:
            problems.append(f"match {match.id} done without an analysis")
        if len(models) != len(expected) or set(models) != expected:
            problems.append(
                f"match {match.id} done with {len(models)} predictions "
                f"({len(set(models) & expected)}/{len(expected)} expected models)"
            )
        settleable = match.status in SETTLED_STATUSES and match.home_score is not None
        if settleable and any(t.status not in ("scored", "void") for t in got):
            problems.append(f"match {match.id} done with unscored predictions")
    return problems


# --- entry points -------------------------------------------------------------------------


async def chaos(config: ChaosConfig, say: Callable[[str], None] = print) -> ChaosReport:
    """Seed, heal under fire, finish, check. ``config.database_url`` must be an empty
    PostgreSQL database and ``config.redis_url`` a Redis nobody else uses (it is wiped).

    Returns:
        The figures and every invariant violation found (``report.ok`` when none).
    """
    harness = Harness(config, say)
    try:
        await harness.seed()
        await harness.heal_under_fire()
        await harness.finish()
        await check(harness)
    finally:
        await harness.close()
    harness.report.seconds = time.monotonic() - harness.started
    return harness.report


def render(report: ChaosReport, say: Callable[[str], None] = print) -> None:
    """Print the figures; the last line is :meth:`ChaosReport.last_line`."""
    states = ", ".join(f"{state} {n}" for state, n in sorted(report.by_state.items()))
    say(f"runs: {report.runs} for {report.gaps} gap matches ({states}); {report.events} events")
    say(
        f"faults: daemon SIGKILLed {report.kills} times ({report.kills_in_flight} with runs in "
        f"flight), workers SIGKILLed {report.worker_kills} times ({report.worker_kills_mid_job} "
        f"mid-job), redis wiped {report.redis_wipes}, postgresql restarted {report.pg_restarts}, "
        f"backends terminated {report.pg_terminations}; daemon exits on its own "
        f"{report.daemon_exits}, worker exits on their own {report.worker_exits}"
    )
    say(
        f"stage executions: {report.executions} journalled, {report.injected_failures} injected "
        f"failures, {report.settle_executions} successful settlements, "
        f"{report.scored_predictions} predictions scored; {report.worker_db_retries} stage "
        f"retries while the database was unreachable; {report.redeliveries} BullMQ "
        f"redeliveries of a journalled job not run again; {report.reenqueued} lost jobs "
        "re-enqueued by the daemon"
    )
    say(
        f"attempts charged: {report.charged_injected} by injected failures, "
        f"{report.charged_killed_worker} by killed workers, {len(report.unexplained)} unexplained"
    )
    for line in report.unexplained[:20]:
        say(f"  UNEXPLAINED {line}")
    if report.misreported:
        say(f"charged attempts whose recorded reason is not the job's: {len(report.misreported)}")
        for line in report.misreported[:20]:
            say(f"  MISREPORTED {line}")
    say(f"failed runs: {len(report.failed_runs)}")
    for line in report.failed_runs:
        say(f"  {line}")
    say(f"gap matches left after the heal: {report.gaps_left}")
    for title, items in (("LOST", report.lost), ("DUPLICATED", report.duplicated)):
        for line in items[:20]:
            say(f"  {title} {line}")
    for run_id in report.drift[:20]:
        say(f"  DRIFT run {run_id}")
    say(
        f"time: {report.seconds:.0f} s in all; heal under fire {report.heal_seconds:.0f} s, "
        f"final --until-idle {report.final_seconds:.0f} s"
    )
    say(report.last_line())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("RETRO_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        help="server on which to create the fresh database (default: $RETRO_TEST_POSTGRES_URL "
        f"or {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--kills", type=int, default=60, help="daemon SIGKILLs (default 60)")
    parser.add_argument("--worker-kills", type=int, default=5, help="worker SIGKILLs (default 5)")
    parser.add_argument(
        "--pg-outage",
        choices=("restart", "terminate", "none"),
        default="restart",
        help="restart this machine's cluster (default), terminate the backends, or nothing",
    )
    parser.add_argument("--no-redis-wipe", action="store_true", help="skip the FLUSHALL")
    parser.add_argument(
        "--outage-days", type=int, default=60, help="outage window of the seed (default 60)"
    )
    parser.add_argument(
        "--competitions", help="seed only these competitions, e.g. en.1,de.1 (default: all five)"
    )
    parser.add_argument("--fail-rate", type=float, default=0.1, help="injected failure rate")
    parser.add_argument(
        "--lock-duration",
        type=float,
        default=30.0,
        help="the workers' BullMQ job lock, seconds (default 30, BullMQ's own default)",
    )
    parser.add_argument("--seed", type=int, default=20250526, help="random seed of the kills")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="retro-chaos-"))
    try:
        with (
            private_redis(workdir / "redis") as redis_url,
            fresh_database(args.postgres_url) as database_url,
        ):
            print(
                f"chaos: database {make_url(database_url).database} (fresh), private redis-server "
                f"{redis_url.removeprefix('redis://').removesuffix('/0')}, logs in {workdir}",
                flush=True,
            )
            config = ChaosConfig(
                database_url=database_url,
                redis_url=redis_url,
                workdir=workdir,
                kills=args.kills,
                worker_kills=args.worker_kills,
                redis_wipe=not args.no_redis_wipe,
                pg_outage=args.pg_outage,
                outage_days=args.outage_days,
                competitions=tuple(args.competitions.split(",")) if args.competitions else None,
                fail_rate=args.fail_rate,
                lock_duration=args.lock_duration,
                seed=args.seed,
            )
            report = asyncio.run(chaos(config, say=lambda line: print(line, flush=True)))
        render(report, say=lambda line: print(line, flush=True))
        return 0 if report.ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
