"""Gap-scan benchmark: retro's ``gaps.scan`` vs the original script's GROUP BY query.

    .venv/bin/python bench/gaps.py             # about 1-2 minutes on 2 cores

What it does, from scratch each time:

1. Creates a fresh PostgreSQL database ``retro_gaps_<random>`` on
   ``RETRO_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``),
   the host tables (``host.create_host_tables``) and retro's tables
   (``migrate.upgrade``). It is dropped at the end.
2. Generates, server-side with ``INSERT … SELECT generate_series``, 42 active models,
   100,000 matches over ten years (about 27 a day, up to 30 days after "now"),
   their analyses and 42 predictions per match (about 4.2 million rows).
   ``kickoff_time`` is text in four ISO-8601 forms (``….000Z``, ``…Z``, ``+00:00``,
   ``+02:00``), plus a few unparseable values. An outage from 10 to 3 days before
   "now" leaves gaps: missing analyses, analyses without a favourite, matches
   with no or only 20 of 42 predictions, finished matches with pending predictions.
   2,000 old finished runs and a few live runs sit in ``backfill_runs``.
   Constraints are dropped for the load and added back after it; then the
   README's optional host indexes are created as an operator would, and
   ``VACUUM ANALYZE`` runs.
3. Times, interleaved, ``--repeat`` (15) runs of retro's ``gaps.scan`` (14 days:
   every statement it sends, plus parsing in Python) and of the original
   script's query (matches LEFT JOIN match_analysis LEFT JOIN predictions,
   GROUP BY match, HAVING count(DISTINCT model_id) < expected OR …) over the same
   window, and prints medians, the ratio, the EXPLAIN (ANALYZE, BUFFERS) plan of
   every statement retro's scan sends, and which indexes the plans use.

The last lines are the figures; the target is retro's median ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos import DEFAULT_POSTGRES, fresh_database
from retro.pipeline import host
from retro.store import gaps, migrate
from retro.store.db import create_engine

NOW = datetime(2025, 5, 26, 12, tzinfo=UTC)
DAYS = 14
MATCHES = 100_000
MODELS = 42
SPAN_DAYS = 3680  # ten years back, 30 days ahead
HOST_TABLES = ("models", "matches", "match_analysis", "predictions")
README_INDEXES = (
    "CREATE INDEX IF NOT EXISTS ix_matches_kickoff_time ON matches (kickoff_time)",
    "CREATE INDEX IF NOT EXISTS ix_match_analysis_match_id ON match_analysis (match_id)",
    "CREATE INDEX IF NOT EXISTS ix_matches_unreadable_kickoff ON matches (id) "
    f"WHERE {gaps.UNREADABLE_KICKOFF_SQL}",
)
WATCHED_INDEXES = (
    "ix_matches_kickoff_time",
    "ix_match_analysis_match_id",
    "ix_matches_unreadable_kickoff",
    "uq_predictions_match_model",
    "ix_backfill_runs_match_id",
    "uq_backfill_runs_live_match",
)

# i = 1..100000; ts = kickoff instant; outage = kicked off 10 to 3 days before NOW.
GEN = f"""
CREATE TEMP TABLE gen AS
SELECT i, ts,
       ts >= :now - interval '10 days' AND ts < :now - interval '3 days' AS outage,
       CASE
         WHEN i % 25000 = 7 THEN 'TBD'
         WHEN ts > :now THEN 'scheduled'
         WHEN ts > :now - interval '3 hours' THEN 'live'
         WHEN i % 100 = 13 THEN 'postponed'
         WHEN i % 500 = 17 THEN 'cancelled'
         ELSE 'finished'
       END AS status
FROM (
  SELECT i, date_trunc('minute', :start + make_interval(secs => i * {SPAN_DAYS * 86400 / MATCHES}))
         AS ts
  FROM generate_series(1, {MATCHES}) AS i
) AS s
"""

LOAD = (
    f"""
INSERT INTO models (id, provider, model_name, display_name, active, auto_disabled)
SELECT 'model-' || lpad(k::text, 2, '0'), 'baseline', 'stat-' || k, 'Model ' || k, true, false
FROM generate_series(1, {MODELS}) AS k
""",
    """
INSERT INTO matches (id, external_id, competition_id, home_team, away_team, kickoff_time,
                     home_score, away_score, status, quota_home, quota_draw, quota_away)
SELECT 'match-' || i, 'ext-' || i, 'comp-' || (i % 5), 'Team ' || (i % 97), 'Team ' || (i % 89),
       CASE
         WHEN i % 25000 = 7 THEN 'TBD'
         WHEN i % 4 = 0 THEN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
         WHEN i % 4 = 1 THEN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
         WHEN i % 4 = 2 THEN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
         ELSE to_char((ts + interval '2 hours') AT TIME ZONE 'UTC',
                      'YYYY-MM-DD"T"HH24:MI:SS"+02:00"')
       END,
       CASE WHEN status = 'finished' THEN i * 7 % 4 END,
       CASE WHEN status = 'finished' THEN i * 3 % 3 END,
       CASE WHEN status = 'TBD' THEN 'scheduled' ELSE status END,
       2 + i % 5, 3 + i % 3, 2 + i % 7
FROM gen
""",
    """
INSERT INTO match_analysis (id, match_id, favorite_team_name, home_win_pct, draw_pct,
                            away_win_pct, home_form, away_form, home_goals_avg, away_goals_avg)
SELECT 'analysis-match-' || i, 'match-' || i,
       CASE WHEN outage AND i % 7 = 1 THEN NULL ELSE 'Team ' || (i % 97) END,
       45, 25, 30, 'WWDLW', 'LDWWL', '1.6', '1.1'
FROM gen
WHERE NOT (outage AND i % 3 = 0)
""",
    """
INSERT INTO predictions (id, match_id, model_id, predicted_home, predicted_away,
                         predicted_result, tendency_points, goal_diff_bonus, exact_score_bonus,
                         total_points, status, created_at, scored_at)
SELECT 'pred-match-' || i || '-model-' || lpad(k::text, 2, '0'), 'match-' || i,
       'model-' || lpad(k::text, 2, '0'), (i + k) % 4, (i * k) % 3,
       CASE WHEN (i + k) % 4 > (i * k) % 3 THEN 'H' WHEN (i + k) % 4 = (i * k) % 3 THEN 'D'
            ELSE 'A' END,
       scored::int * 2, 0, 0, scored::int * 2,
       CASE WHEN scored THEN 'scored' ELSE 'pending' END,
       to_char((ts - interval '1 day') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
       CASE WHEN scored
            THEN to_char((ts + interval '3 hours') AT TIME ZONE 'UTC',
                         'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') END
FROM (
  SELECT i, ts, k, status = 'finished' AND NOT (outage AND i % 5 IN (0, 1)) AS scored
  FROM gen CROSS JOIN generate_series(1, 42) AS k
  WHERE NOT (outage AND i % 4 = 0) AND NOT (outage AND i % 4 = 1 AND k > 20)
) AS p
""",
    # 2,000 old finished runs, and a live run on every 10th outage match.
    """
INSERT INTO backfill_runs (id, match_id, state, step, attempt, requested_at, next_check_at,
                           gaps, created_at, updated_at, finished_at, version)
SELECT 'old-run-' || i, 'match-' || i, 'done', 'done', 1, ts, NULL, 'missing_analysis',
       ts + interval '1 day', ts + interval '1 day', ts + interval '1 day', 7
FROM gen WHERE i % 40 = 0 AND i <= 80000
UNION ALL
SELECT 'live-run-' || i, 'match-' || i, 'pending', 'analysis', 0, NULL, :now,
       'missing_analysis', :now, :now, NULL, 1
FROM gen WHERE outage AND i % 10 = 0
""",
)


def original_query(expected: int, since: datetime, until: datetime) -> tuple[str, dict[str, Any]]:
    """The original script's gap query: one GROUP BY over the LEFT JOINs, filtered on
    the ISO text of the window (``new Date(...).toISOString()``), index-friendly."""
    sql = """
SELECT m.id, m.home_team, m.away_team, m.kickoff_time, m.status,
       ma.favorite_team_name,
       COUNT(DISTINCT p.model_id) AS prediction_count,
       COUNT(p.id) FILTER (WHERE p.status = 'pending') AS pending_count
FROM matches m
LEFT JOIN match_analysis ma ON ma.match_id = m.id
LEFT JOIN predictions p ON p.match_id = m.id
WHERE m.kickoff_time >= :since AND m.kickoff_time <= :until
  AND m.status IN ('scheduled', 'live', 'finished', 'awarded')
GROUP BY m.id, m.home_team, m.away_team, m.kickoff_time, m.status, ma.favorite_team_name
HAVING ma.favorite_team_name IS NULL
    OR COUNT(DISTINCT p.model_id) < :expected
    OR (m.status IN ('finished', 'awarded')
        AND COUNT(p.id) FILTER (WHERE p.status = 'pending') > 0)
ORDER BY m.kickoff_time
"""
    iso = "%Y-%m-%dT%H:%M:%S.000Z"
    return sql, {"since": since.strftime(iso), "until": until.strftime(iso), "expected": expected}


async def build(engine: AsyncEngine, say: Any) -> None:
    """Create the schema, load the data with constraints off, then constraints,
    the README's optional indexes and statistics."""
    await host.create_host_tables(engine)
    await migrate.upgrade(engine)
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        await conn.execute(text("SET LOCAL synchronous_commit = off"))
        await conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        rows = await conn.execute(
            text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype "
                "FROM pg_constraint WHERE conrelid::regclass::text = ANY(:tables) "
                "ORDER BY contype = 'f' DESC"
            ),
            {"tables": list(HOST_TABLES)},
        )
        constraints = [tuple(r) for r in rows]
        for table, name, _, _ in constraints:  # foreign keys first
            await conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for name in (
            "ix_matches_kickoff_time",
            "ix_match_analysis_match_id",
            "ix_matches_unreadable_kickoff",
        ):
            await conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        params = {"now": NOW, "start": NOW - timedelta(days=SPAN_DAYS - 30)}
        await conn.execute(text(GEN), params)
        for statement in LOAD:
            await conn.execute(text(statement), params)
        for table, name, definition, _ in reversed(constraints):  # keys before foreign keys
            await conn.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
        say("host indexes, as the README documents them (optional):")
        for statement in README_INDEXES:
            say(f"  {statement}")
            await conn.execute(text(statement))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
        counts = {
            t: await conn.scalar(text(f"SELECT count(*) FROM {t}"))
            for t in (*HOST_TABLES, "backfill_runs")
        }
        size = await conn.scalar(
            text("SELECT pg_size_pretty(pg_database_size(current_database()))")
        )
    say(
        f"loaded in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{t} {n:,}" for t, n in counts.items())
        + f"; database {size}"
    )


@contextmanager
def capture(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """Every (statement, parameters) the engine sends while inside."""
    seen: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listener)


async def retro_scan(conn: AsyncConnection) -> gaps.Scan:
    return await gaps.scan(conn, now=NOW, days=DAYS, cooldown=timedelta(days=1))


async def original_scan(conn: AsyncConnection, expected: int) -> list[Any]:
    sql, params = original_query(expected, NOW - timedelta(days=DAYS), NOW)
    return list(await conn.execute(text(sql), params))


async def explain(conn: AsyncConnection, statement: str, parameters: Any) -> str:
    rows = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters or None)
    return "\n".join(r[0] for r in rows)


async def bench(url: str, repeat: int, say: Any) -> int:
    engine = create_engine(url)
    try:
        await build(engine, say)
        async with engine.connect() as conn:
            expected = await gaps.expected_models(conn)
            for _ in range(2):  # warm the cache and the statement cache
                scan = await retro_scan(conn)
                original = await original_scan(conn, expected)
            retro_ms: list[float] = []
            original_ms: list[float] = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                scan = await retro_scan(conn)
                retro_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                original = await original_scan(conn, expected)
                original_ms.append((time.perf_counter() - t0) * 1000)
            with capture(engine) as statements:
                await retro_scan(conn)
            plans = [(s, await explain(conn, s, p)) for s, p in statements]
            sql, params = original_query(expected, NOW - timedelta(days=DAYS), NOW)
            compiled = text(sql).bindparams(**params).compile(engine.sync_engine)
            original_plan = await explain(conn, str(compiled), compiled.params)
            await conn.rollback()
    finally:
        await engine.dispose()

    for number, (statement, plan) in enumerate(plans, 1):
        say(f"\n--- retro statement {number}/{len(plans)} ---")
        say(" ".join(statement.split()))
        say("--- EXPLAIN (ANALYZE, BUFFERS) ---")
        say(plan)
    say("\n--- original query: EXPLAIN (ANALYZE, BUFFERS) ---")
    say(original_plan)

    retro_plans = "\n".join(p for _, p in plans)
    retro_median = statistics.median(retro_ms)
    original_median = statistics.median(original_ms)
    kinds = ", ".join(f"{k} {n}" for k, n in scan.by_kind().items())
    say("\n=== gap scan: 100,000 matches, 42 models, ~4.2 M predictions, 14-day window ===")
    say(
        f"retro gaps.scan: {len(scan.gaps)} gap matches ({kinds}), "
        f"{scan.complete} complete, {scan.blocked} blocked, {len(scan.skipped)} skipped"
    )
    say(f"original query:  {len(original)} gap rows (no live-run or cooldown filter)")
    for name in WATCHED_INDEXES:
        used = "used" if name in retro_plans else "NOT used"
        say(
            f"index {name}: {used} by retro; {'used' if name in original_plan else 'not used'}"
            " by the original"
        )
    say(
        f"retro    median {retro_median:7.2f} ms  (min {min(retro_ms):.2f}, "
        f"max {max(retro_ms):.2f}, n={repeat})"
    )
    say(
        f"original median {original_median:7.2f} ms  (min {min(original_ms):.2f}, "
        f"max {max(original_ms):.2f}, n={repeat})"
    )
    ratio = original_median / retro_median
    met = retro_median <= 50
    say(f"ratio original/retro: {ratio:.1f}x")
    say(f"target retro <= 50 ms: {'MET' if met else 'NOT MET'}")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url", default=os.environ.get("RETRO_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    with fresh_database(args.postgres_url, prefix="retro_gaps") as url:
        return asyncio.run(bench(url, args.repeat, lambda line: print(line, flush=True)))


if __name__ == "__main__":
    sys.exit(main())
