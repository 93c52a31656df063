"""Instant workers for the benches: each job does only the writes retro checks, at once.

    python bench/instant_workers.py DATABASE_URL REDIS_URL [--prefix bull] [--concurrency 1]

The issue's benches ask for "instant workers": no processing time, so that what is
measured is the orchestration (retro's or the baseline's), not the stage work. The
reference workers (``retro workers``) compute an analysis from past results and 42
model predictions, 7 to 27 ms a job; these write the same kinds of rows in one SQL
statement per job, with no computation:

* ``analyze-match``: a ``match_analysis`` row with the home team as favourite;
* ``predict-match``: a ``predictions`` row (1-0, ``H``, ``pending``) for every active,
  not auto-disabled model that has none for the match;
* ``settle-match``: every ``pending`` prediction of the match set ``scored`` with 0
  points. These are not Kicktipp scores (the reference workers compute those); the
  benches only need the match to stop being a gap.

Every statement is idempotent, like the host's workers. They consume the queues with
retro's own ``consume`` (python-bullmq), the same way ``retro workers`` does, in a
subprocess of their own, as a host's Node workers would be. SIGTERM stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``retro`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from retro.queue import consume
from retro.store.db import create_engine

QUEUES = ("analysis-queue", "predictions-queue", "settlement-queue")

ANALYZE = text(
    "INSERT INTO match_analysis (id, match_id, favorite_team_name) "
    "SELECT :id, :match_id, home_team FROM matches WHERE id = :match_id "
    "AND NOT EXISTS (SELECT 1 FROM match_analysis WHERE match_id = :match_id "
    "AND favorite_team_name IS NOT NULL)"
)
PREDICT = text(
    "INSERT INTO predictions (id, match_id, model_id, predicted_home, predicted_away, "
    "predicted_result, status, created_at) "
    "SELECT CAST(:match_id AS TEXT) || '/' || m.id, :match_id, m.id, 1, 0, 'H', 'pending', :now "
    "FROM models m WHERE m.active AND NOT m.auto_disabled AND NOT EXISTS "
    "(SELECT 1 FROM predictions p WHERE p.match_id = :match_id AND p.model_id = m.id)"
)
SETTLE = text(
    "UPDATE predictions SET tendency_points = 0, goal_diff_bonus = 0, exact_score_bonus = 0, "
    "total_points = 0, status = 'scored', scored_at = :now "
    "WHERE match_id = :match_id AND status = 'pending'"
)


def handlers(engine: AsyncEngine) -> dict[str, Any]:
    """One processor per queue: run its statement for the job's ``matchId``."""

    def processor(statement: Any) -> Any:
        async def process(job: Any, token: str) -> dict[str, Any]:
            match_id = str(job.data["matchId"])
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            async with engine.begin() as conn:
                result = await conn.execute(
                    statement, {"id": f"instant-{match_id}", "match_id": match_id, "now": now}
                )
            return {"matchId": match_id, "rows": result.rowcount}

        return process

    return dict(
        zip(QUEUES, (processor(ANALYZE), processor(PREDICT), processor(SETTLE)), strict=True)
    )


async def serve(database_url: str, redis_url: str, *, prefix: str, concurrency: int) -> None:
    """Consume the three queues until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = create_engine(database_url)
    try:
        await consume(
            redis_url,
            prefix=prefix,
            handlers=handlers(engine),
            concurrency=concurrency,
            stop=stop,
            name="retro-bench-instant",
            lock_duration=30.0,
        )
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("database_url")
    parser.add_argument("redis_url")
    parser.add_argument("--prefix", default="bull")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    asyncio.run(
        serve(args.database_url, args.redis_url, prefix=args.prefix, concurrency=args.concurrency)
    )


if __name__ == "__main__":
    main()
