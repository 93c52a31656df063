"""Backlog benchmark: a tick must not scan the pending backlog.

    .venv/bin/python bench/backlog.py          # about 1 minute on 2 cores

What it does, from scratch each time, on the embedded default (a SQLite file in a
temporary folder) and on PostgreSQL (a fresh database ``retro_backlog_<random>`` on
``RETRO_TEST_POSTGRES_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``,
dropped at the end), both with a private ``redis-server`` on a free port:

1. For a backlog of 100 and of 10,000 pending runs: creates the host tables with
   42 models and one finished match per run, retro's tables, and the runs
   (``RunSeeded`` events and their projections, written in bulk with the same rows
   ``runs.append`` writes). ``max_in_flight`` is 1 and no worker consumes the
   queues, so after the first tick starts one run its analysis job waits, and
   every later tick finds the cap full.
2. Times ``--ticks`` (100) calls of ``App.tick`` per backlog, interleaved, after 5
   warm-up ticks (statistics gathered first with ``ANALYZE``), and prints
   the median for each backlog and the ratio 10,000 / 100 (target ≤ 1.2).
3. Starts the daemon, ``python -m retro run --no-scan --tick-interval 0.2``, on
   the 10,000-run database for ``--daemon-seconds`` (6) and reads its peak RSS
   (``VmHWM`` in ``/proc/<pid>/status``) before SIGTERM (target ≤ 120 MB).

The last lines are the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos import DEFAULT_POSTGRES, fresh_database, private_redis
from retro import commands
from retro.app import App
from retro.config import Settings
from retro.events import RunSeeded, to_record
from retro.machine import seed
from retro.pipeline import host
from retro.store import migrate, runs
from retro.store.db import create_engine, is_sqlite
from retro.store.schema import backfill_events, backfill_runs, matches, models

BACKLOGS = (100, 10_000)
MODELS = 42
RSS_TARGET_MB = 120.0
RATIO_TARGET = 1.2

Say = Callable[[str], None]


@dataclass(frozen=True)
class TickFigures:
    backend: str
    backlog: int
    median_ms: float
    p90_ms: float
    looked_at: float
    pending_left: int


async def populate(url: str, backlog: int) -> None:
    """Host tables, 42 models, ``backlog`` finished matches, retro's tables and one
    pending run per match (events and projections, in bulk)."""
    engine = create_engine(url)
    try:
        await host.create_host_tables(engine)
        await migrate.upgrade(engine)
        at = datetime.now(UTC) - timedelta(minutes=1)
        kickoff = (at - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        match_rows = [
            {
                "id": f"match-{i}",
                "external_id": f"ext-{i}",
                "home_team": f"Team {i % 97}",
                "away_team": f"Team {i % 89}",
                "kickoff_time": kickoff,
                "home_score": 1,
                "away_score": 0,
                "status": "finished",
            }
            for i in range(backlog)
        ]
        model_rows = [
            {"id": f"model-{k:02d}", "active": True, "auto_disabled": False}
            for k in range(1, MODELS + 1)
        ]
        events, projections = [], []
        for i in range(backlog):
            event = RunSeeded(
                at=at + timedelta(microseconds=i),
                run_id=f"run-{i:05d}",
                match_id=f"match-{i}",
                gaps=("missing_analysis", "missing_predictions"),
                found=0,
                expected=MODELS,
            )
            run = seed(event)
            type_, data, when = to_record(event)
            events.append(
                {
                    "run_id": run.id,
                    "seq": run.version,
                    "type": type_,
                    "data": json.dumps(data, sort_keys=True),
                    "at": when,
                }
            )
            projections.append(runs.run_row(run))
        async with engine.begin() as conn:
            await conn.execute(insert(models), model_rows)
            await conn.execute(insert(matches), match_rows)
            await conn.execute(insert(backfill_events), events)
            await conn.execute(insert(backfill_runs), projections)
        async with engine.begin() as conn:  # statistics, as autovacuum would gather
            await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


async def time_ticks(settings: list[Settings], ticks: int) -> list[TickFigures]:
    """Tick every backlog's App in turn (interleaved, so load on the machine hits all
    alike): one tick to start a run, 5 warm-up ticks, then ``ticks`` timed ones."""
    async with AsyncExitStack() as stack:
        apps = [await stack.enter_async_context(App(s)) for s in settings]
        for app in apps:
            first = await app.tick(now=datetime.now(UTC))  # starts one run: its job waits
            assert first.events, "the first tick should start a run"
        elapsed: list[list[float]] = [[] for _ in apps]
        looked = [0] * len(apps)
        for round_ in range(5 + ticks):
            for i, app in enumerate(apps):
                now = datetime.now(UTC)
                t0 = time.perf_counter()
                report = await app.tick(now=now)
                if round_ >= 5:
                    elapsed[i].append((time.perf_counter() - t0) * 1000)
                    looked[i] += report.looked_at
        counts = [(await commands.status(app)).counts for app in apps]
    figures = []
    for s, times, seen, count in zip(settings, elapsed, looked, counts, strict=True):
        times.sort()
        figures.append(
            TickFigures(
                backend="sqlite" if is_sqlite(s.database_url) else "postgresql",
                backlog=count.get("pending", 0) + 1,
                median_ms=statistics.median(times),
                p90_ms=times[int(len(times) * 0.9) - 1],
                looked_at=seen / ticks,
                pending_left=count.get("pending", 0),
            )
        )
    return figures


def daemon_peak_rss(database_url: str, redis_url: str, prefix: str, seconds: float) -> float:
    """Peak RSS (MB) of ``retro run --no-scan`` on ``database_url`` after ``seconds``."""
    env = {  # no caller RETRO_*: retro refuses a variable it does not know
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("RETRO_")},
        "RETRO_DATABASE_URL": database_url,
        "RETRO_REDIS_URL": redis_url,
        "RETRO_QUEUE_PREFIX": prefix,
        "RETRO_MAX_IN_FLIGHT": "1",
    }
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.Popen(
            [sys.executable, "-m", "retro", "run", "--no-scan", "--tick-interval", "0.2"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            time.sleep(seconds)
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}: {proc.stderr.read()!r}")
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm_kb = next(
                int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM")
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return hwm_kb / 1024


def bench_backend(
    name: str,
    make_url: Callable[[int], str],
    redis_url: str,
    ticks: int,
    daemon_seconds: float,
    say: Say,
) -> tuple[list[TickFigures], float]:
    settings = []
    for backlog in BACKLOGS:
        url = make_url(backlog)
        t0 = time.perf_counter()
        asyncio.run(populate(url, backlog))
        say(f"{name}: seeded {backlog:,} pending runs in {time.perf_counter() - t0:.1f} s")
        prefix = f"bench{uuid.uuid4().hex[:8]}"
        settings.append(
            Settings(database_url=url, redis_url=redis_url, queue_prefix=prefix, max_in_flight=1)
        )
    figures = asyncio.run(time_ticks(settings, ticks))
    for f in figures:
        say(f"{name}: {f.backlog:,} runs: median tick {f.median_ms:.2f} ms")
    biggest = settings[-1]
    rss = daemon_peak_rss(biggest.database_url, redis_url, biggest.queue_prefix, daemon_seconds)
    say(f"{name}: daemon peak RSS with {max(BACKLOGS):,} runs: {rss:.1f} MB")
    return figures, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url", default=os.environ.get("RETRO_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--daemon-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    results: list[tuple[str, list[TickFigures], float]] = []
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retro-backlog-")))
        redis_url = stack.enter_context(private_redis(folder / "redis"))

        def sqlite_url(backlog: int) -> str:
            return f"sqlite+aiosqlite:///{folder}/backlog-{backlog}.db"

        results.append(
            (
                "sqlite",
                *bench_backend(
                    "sqlite", sqlite_url, redis_url, args.ticks, args.daemon_seconds, say
                ),
            )
        )

        def pg_url(backlog: int) -> str:
            return stack.enter_context(fresh_database(args.postgres_url, prefix="retro_backlog"))

        results.append(
            (
                "postgresql",
                *bench_backend(
                    "postgresql", pg_url, redis_url, args.ticks, args.daemon_seconds, say
                ),
            )
        )

    say("\n=== tick cost vs pending backlog (max_in_flight 1, no workers: the job waits) ===")
    ok = True
    for name, figures, rss in results:
        for f in figures:
            say(
                f"{name:10} {f.backlog:6,} pending runs: median tick {f.median_ms:6.2f} ms "
                f"(p90 {f.p90_ms:.2f}, n={args.ticks}, runs looked at per tick "
                f"{f.looked_at:.1f}, pending left {f.pending_left:,})"
            )
        ratio = figures[-1].median_ms / figures[0].median_ms
        rss_ok = rss <= RSS_TARGET_MB
        ratio_ok = ratio <= RATIO_TARGET
        ok = ok and rss_ok and ratio_ok
        say(
            f"{name:10} ratio 10,000/100: {ratio:.2f} (target <= {RATIO_TARGET}: "
            f"{'MET' if ratio_ok else 'NOT MET'}); daemon peak RSS {rss:.1f} MB "
            f"(target <= {RSS_TARGET_MB:.0f} MB: {'MET' if rss_ok else 'NOT MET'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
