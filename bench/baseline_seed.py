"""The baseline: the original one-shot script's loop, re-implemented faithfully.

    .venv/bin/python bench/baseline_seed.py              # 5 gap matches, embedded default
    .venv/bin/python bench/baseline_seed.py --backend postgres --matches 3

What the original did (issue 4), and what :func:`baseline` does, sequentially:
for each gap match, for each stage it needs (analysis when the analysis is
missing; predictions when analysis or predictions are missing; settlement when
the match is finished with a score):

1. stale cleanup: if a job with the deterministic id (``analyze-retro-<matchId>``…)
   exists and is completed or failed, remove it;
2. add the stage job with ``delay: 1000`` (ms);
3. poll the job's state every 2 s until it is completed or failed (or the
   stage's timeout passes);
4. go on with the next stage, then the next match.

Queues, job names, payloads and job ids are retro's own (``retro.queue``), and the
jobs go to the same reference workers on the same data as retro's benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from retro.app import job_payload
from retro.events import Phase
from retro.machine import SETTLED_STATUSES
from retro.queue import (
    FINISHED_STATES,
    JOB_ID_FORMATS,
    JOB_NAMES,
    Queues,
)
from retro.store.db import create_engine
from retro.store.facts import MatchFacts, match_facts

DELAY_MS = 1000
"""The original's ``delay`` on every job."""
POLL_SECONDS = 2.0
"""The original's polling interval."""
TIMEOUTS = {Phase.ANALYSIS: 120.0, Phase.PREDICTIONS: 300.0, Phase.SETTLEMENT: 60.0}
"""The original's per-stage timeouts, seconds (retro's defaults are the same)."""


@dataclass
class BaselineReport:
    """What :func:`baseline` did: matches, jobs by outcome, wall time."""

    matches: int = 0
    jobs: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    late: int = 0
    """Jobs not yet finished at their first poll (each cost one more 2 s poll)."""

    @property
    def per_match(self) -> float:
        """Seconds per match (NaN for none)."""
        return self.seconds / self.matches if self.matches else float("nan")


def stages(facts: MatchFacts) -> list[Phase]:
    """The stages the original ran for a gap match, in order."""
    needed: list[Phase] = []
    if not facts.has_analysis:
        needed.append(Phase.ANALYSIS)
    if not facts.has_analysis or facts.found < facts.expected:
        needed.append(Phase.PREDICTIONS)
    if (
        facts.status in SETTLED_STATUSES
        and facts.home_score is not None
        and facts.away_score is not None
    ):
        needed.append(Phase.SETTLEMENT)
    return needed


async def baseline(
    database_url: str,
    queues: Queues,
    match_ids: Sequence[str],
    *,
    delay_ms: int = DELAY_MS,
    poll: float = POLL_SECONDS,
    say: Callable[[str], None] = lambda _: None,
    job_ids: Mapping[Phase, str] = JOB_ID_FORMATS,
) -> BaselineReport:
    """Heal ``match_ids`` the way the original script did (see the module docstring);
    ``job_ids`` are the job-id templates (the original's by default)."""
    engine = create_engine(database_url)
    report = BaselineReport()
    started = time.perf_counter()
    try:
        for match_id in match_ids:
            async with engine.connect() as conn:
                facts = await match_facts(conn, match_id)
            if facts is None:
                continue
            for phase in stages(facts):
                queue = queues.queue(phase)
                job_id = job_ids[phase].format(matchId=match_id)
                # 1. stale cleanup of the deterministic id
                if await queue.getJobState(job_id) in FINISHED_STATES:
                    await queue.remove(job_id)
                # 2. add with delay: 1000
                opts = {**queues.options.for_job(job_id), "delay": delay_ms}
                await queue.add(JOB_NAMES[phase], job_payload(phase, facts), opts)
                report.jobs += 1
                # 3. poll every 2 s until finished (or the stage's timeout)
                deadline = time.monotonic() + TIMEOUTS[phase]
                state = "unknown"
                polls = 0
                while time.monotonic() < deadline:
                    await asyncio.sleep(poll)
                    polls += 1
                    state = str(await queue.getJobState(job_id))
                    if state in FINISHED_STATES:
                        break
                else:
                    state = "timed out"
                report.late += polls > 1
                report.outcomes[state] = report.outcomes.get(state, 0) + 1
                say(f"baseline: {job_id} {state}")
                # the payload of the next stage needs the fresh score/status
                async with engine.connect() as conn:
                    facts = await match_facts(conn, match_id) or facts
            report.matches += 1
    finally:
        report.seconds = time.perf_counter() - started
        await engine.dispose()
    return report


async def _main(args: argparse.Namespace) -> BaselineReport:
    with harness.backend(args.backend, args.postgres_url) as be:
        ids = await harness.seed(be, outage_days=14, competitions=None)
        async with harness.app(be) as app:
            assert app.queues is not None
            with harness.workers(be, app.redis_url):
                await harness.wait_for_workers(app.queues)
                return await baseline(
                    be.database_url,
                    app.queues,
                    ids[: args.matches],
                    say=print,
                    job_ids=app.policy.job_ids,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--matches", type=int, default=5, help="gap matches to heal (default 5)")
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument(
        "--postgres-url",
        default=harness.POSTGRES_URL,
        help="server for the fresh database (default $RETRO_TEST_POSTGRES_URL or the local one)",
    )
    args = parser.parse_args(argv)
    report = asyncio.run(_main(args))
    print(
        f"baseline: {report.matches} matches, {report.jobs} jobs {report.outcomes} in "
        f"{report.seconds:.1f} s = {report.per_match:.2f} s per match"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
