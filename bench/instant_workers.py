"""Instant workers for the benches: each job does only the writes retro checks, at once.

    python bench/instant_workers.py DATABASE_URL REDIS_URL [--prefix bull] [--concurrency 1]
        [--flaky MODEL_ID ...] [--need-external-id] [--unrecoverable MATCH_ID ...]
        [--journal PATH]

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

Every statement is idempotent, like the host's workers.

Options make them behave like the host's workers (``bench/realistic.py``):

* ``--flaky MODEL_ID`` (repeatable): that model fails its first call for each match
  (the worker process remembers the calls): the predictions job leaves its prediction
  out and still completes, so the job completes short; the next job for the match
  writes it.
* ``--need-external-id``: the analysis job throws (a plain ``Error``, which a retry
  cannot mend) for a match whose ``matches.external_id`` is NULL, as the host's
  analysis, which looks the match up at its data provider by that id, does.
* ``--unrecoverable MATCH_ID`` (repeatable): the settlement job of that match throws
  BullMQ's ``UnrecoverableError`` (the provider annulled the result).
* ``--journal PATH``: one JSON line per job appended to PATH: ``queue``, ``job_id``,
  ``match_id``, ``outcome`` (``completed`` or the error's class name) and
  ``seconds``, the handler's own processing time (``time.perf_counter``).

They consume the queues with
retro's own ``consume`` (python-bullmq), the same way ``retro workers`` does, in a
subprocess of their own, as a host's Node workers would be. SIGTERM stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

if __package__ in (None, ""):  # run as a script: make ``retro`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bullmq import UnrecoverableError
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
    "FROM models m WHERE m.active AND NOT m.auto_disabled AND m.id NOT IN :failing "
    "AND NOT EXISTS "
    "(SELECT 1 FROM predictions p WHERE p.match_id = :match_id AND p.model_id = m.id)"
).bindparams(bindparam("failing", expanding=True))
MISSING_MODELS = text(
    "SELECT m.id FROM models m WHERE m.active AND NOT m.auto_disabled AND NOT EXISTS "
    "(SELECT 1 FROM predictions p WHERE p.match_id = :match_id AND p.model_id = m.id)"
)
SETTLE = text(
    "UPDATE predictions SET tendency_points = 0, goal_diff_bonus = 0, exact_score_bonus = 0, "
    "total_points = 0, status = 'scored', scored_at = :now "
    "WHERE match_id = :match_id AND status = 'pending'"
)
EXTERNAL_ID = text("SELECT external_id FROM matches WHERE id = :match_id")
NONE_FAILING = "(none)"
"""A model id no model has: ``NOT IN`` needs at least one value."""


@dataclass
class Behaviour:
    """How the host's workers misbehave (all off by default: the plain instant workers).

    ``flaky``: model ids that fail their first call per match; ``need_external_id``:
    analysis throws for a match with no ``external_id``; ``unrecoverable``: match ids
    whose settlement throws ``UnrecoverableError``.
    """

    flaky: frozenset[str] = frozenset()
    need_external_id: bool = False
    unrecoverable: frozenset[str] = frozenset()
    called: set[tuple[str, str]] = field(default_factory=set)
    """(match id, model id) of the flaky models' calls so far."""

    def failing(self, match_id: str, missing: Collection[str]) -> list[str]:
        """The flaky models among ``missing`` that fail this call for ``match_id``
        (their first); records the call."""
        first = [m for m in sorted(self.flaky & set(missing)) if (match_id, m) not in self.called]
        self.called.update((match_id, m) for m in first)
        return first


Work = Callable[[AsyncConnection, str, str], Awaitable[int]]
"""One stage's writes: ``(conn, match_id, now) -> rows written``; raises to fail the job."""


def stages(behaviour: Behaviour) -> dict[str, Work]:
    """The three stages' work, by queue."""

    async def analyze(conn: AsyncConnection, match_id: str, now: str) -> int:
        if behaviour.need_external_id:
            external = await conn.execute(EXTERNAL_ID, {"match_id": match_id})
            if external.scalar_one_or_none() is None:
                raise RuntimeError(f"match {match_id} has no external_id: cannot look it up")
        result = await conn.execute(ANALYZE, {"id": f"instant-{match_id}", "match_id": match_id})
        return result.rowcount

    async def predict(conn: AsyncConnection, match_id: str, now: str) -> int:
        failing: list[str] = []
        if behaviour.flaky:
            missing = (await conn.execute(MISSING_MODELS, {"match_id": match_id})).scalars()
            failing = behaviour.failing(match_id, list(missing))
        params = {"match_id": match_id, "now": now, "failing": failing or [NONE_FAILING]}
        return (await conn.execute(PREDICT, params)).rowcount

    async def settle(conn: AsyncConnection, match_id: str, now: str) -> int:
        if match_id in behaviour.unrecoverable:
            raise UnrecoverableError(f"the provider annulled the result of match {match_id}")
        return (await conn.execute(SETTLE, {"match_id": match_id, "now": now})).rowcount

    return dict(zip(QUEUES, (analyze, predict, settle), strict=True))


def handlers(
    engine: AsyncEngine, behaviour: Behaviour | None = None, journal: TextIO | None = None
) -> dict[str, Any]:
    """One processor per queue: its stage's writes for the job's ``matchId``, in one
    transaction; each job's processing time goes to ``journal`` (JSON lines)."""

    def processor(queue: str, work: Work) -> Any:
        async def process(job: Any, token: str) -> dict[str, Any]:
            started = time.perf_counter()
            match_id = str(job.data["matchId"])
            outcome = "completed"
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            try:
                async with engine.begin() as conn:
                    rows = await work(conn, match_id, now)
                return {"matchId": match_id, "rows": rows}
            except Exception as exc:
                outcome = type(exc).__name__
                raise
            finally:
                if journal is not None:
                    line = {
                        "queue": queue,
                        "job_id": job.id,
                        "match_id": match_id,
                        "outcome": outcome,
                        "seconds": time.perf_counter() - started,
                    }
                    journal.write(json.dumps(line) + "\n")
                    journal.flush()

        return process

    work = stages(behaviour or Behaviour())
    return {queue: processor(queue, work[queue]) for queue in QUEUES}


async def serve(
    database_url: str,
    redis_url: str,
    *,
    prefix: str,
    concurrency: int,
    behaviour: Behaviour | None = None,
    journal: Path | None = None,
) -> None:
    """Consume the three queues until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = create_engine(database_url)
    out = open(journal, "a") if journal is not None else None  # closed below
    try:
        await consume(
            redis_url,
            prefix=prefix,
            handlers=handlers(engine, behaviour, out),
            concurrency=concurrency,
            stop=stop,
            name="retro-bench-instant",
            lock_duration=30.0,
        )
    finally:
        if out is not None:
            out.close()
        await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("database_url")
    parser.add_argument("redis_url")
    parser.add_argument("--prefix", default="bull")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument(
        "--flaky",
        action="append",
        default=[],
        metavar="MODEL_ID",
        help="this model fails its first call per match (repeatable)",
    )
    parser.add_argument(
        "--need-external-id",
        action="store_true",
        help="analysis throws for a match whose external_id is NULL",
    )
    parser.add_argument(
        "--unrecoverable",
        action="append",
        default=[],
        metavar="MATCH_ID",
        help="this match's settlement throws UnrecoverableError (repeatable)",
    )
    parser.add_argument("--journal", type=Path, help="append each job's processing time here")
    args = parser.parse_args(argv)
    behaviour = Behaviour(
        flaky=frozenset(args.flaky),
        need_external_id=args.need_external_id,
        unrecoverable=frozenset(args.unrecoverable),
    )
    asyncio.run(
        serve(
            args.database_url,
            args.redis_url,
            prefix=args.prefix,
            concurrency=args.concurrency,
            behaviour=behaviour,
            journal=args.journal,
        )
    )


if __name__ == "__main__":
    main()
