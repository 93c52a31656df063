"""What the board shows: every page's reads, as plain frozen values.

The routes (:mod:`retro.board.app`) only render what these functions return. A
:class:`Reader` holds the board's own connections, opened in the board's event
loop (:mod:`retro.board.server`): an :class:`~retro.app.App` without Redis for the
database (the operator commands take one) and a :class:`~retro.queue.Queues` for
BullMQ. Every Redis read is bounded (:data:`REDIS_SECONDS`) and a Redis that does
not answer is reported on the page, never raised.

Per-backfill progress (tally, state, ETA) comes from the backfill read model,
:func:`retro.progress.summaries`, as ``retro backfills`` shows it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from retro import commands
from retro.app import App
from retro.clock import Clocks
from retro.config import error_line
from retro.events import HANDOFF_TYPES, Phase
from retro.machine import JobMeaning, Run, State, Waiting
from retro.progress import BackfillSummary, summaries
from retro.queue import JobOptions, Queues, is_unreachable, queue_names
from retro.report import history_json
from retro.store import backfills as backfill_rows
from retro.store.facts import match_facts
from retro.store.runs import run_from_row
from retro.store.schema import backfill_events, backfill_runs, matches
from retro.tick import wait_of

REDIS_SECONDS = 3.0
"""Seconds a page's Redis reads may take together before Redis is shown unreachable."""
CHART_MINUTES = 60
"""Minutes of hand-offs the backfill page charts, one bar a minute."""
BACKFILLS_SHOWN = 100
"""Most backfills the backfills page lists (newest first; every periodic scan that
seeds runs is one, thousands a month); it counts the older ones."""
RUNS_SHOWN = 500
"""Most runs one backfill page lists (newest first); the tally counts them all."""
FAILURES_SHOWN = 50
"""Most failed runs (with reasons) one backfill page lists."""


@dataclass(frozen=True)
class BackfillsPage:
    """The backfills page: the :data:`BACKFILLS_SHOWN` newest ``summaries``, newest
    first, out of ``total`` stored."""

    summaries: list[BackfillSummary]
    total: int

    @property
    def older(self) -> int:
        """Backfills stored but not listed."""
        return self.total - len(self.summaries)


@dataclass(frozen=True)
class RunRow:
    """A run with its match's teams (``None`` when the match row is gone)."""

    run: Run
    home_team: str | None
    away_team: str | None


@dataclass(frozen=True)
class Chart:
    """Hand-offs per minute: ``counts[i]`` in the minute starting at ``start +
    i`` minutes (aware UTC), oldest first, :data:`CHART_MINUTES` of them."""

    start: datetime
    counts: Sequence[int]

    @property
    def bars(self) -> list[tuple[datetime, int]]:
        """``(minute start, hand-offs)`` per bar, oldest first."""
        return [(self.start + timedelta(minutes=i), n) for i, n in enumerate(self.counts)]

    @property
    def peak(self) -> int:
        """The most hand-offs in one minute (0 without any)."""
        return max(self.counts, default=0)


@dataclass(frozen=True)
class BackfillPage:
    """The backfill page: its summary, its runs (``state`` filter or all), its
    failed runs with reasons and its hand-off chart."""

    summary: BackfillSummary
    state: State | None
    runs: list[RunRow]
    failures: list[RunRow]
    chart: Chart


@dataclass(frozen=True)
class Job:
    """A run's current job as BullMQ sees it now.

    Attributes:
        phase, job_id: the job retro requested last (its run's phase).
        state: BullMQ's state (``waiting``, ``active``, …; ``unknown`` if absent),
            ``None`` when Redis did not answer (``error`` says why).
        waiting: how long and why it waits for a worker (schedule-to-start), or
            ``None`` when no worker is missing.
        error: why Redis could not be read (masked), else ``None``.
    """

    phase: Phase
    job_id: str
    state: str | None = None
    waiting: Waiting | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunPage:
    """The run page: ``history`` is exactly ``retro history RUN --json``
    (``retro.history/1``, :func:`retro.report.history_json`); ``job`` is its
    current job, ``None`` when it has none outstanding."""

    run: RunRow
    history: dict[str, Any]
    job: Job | None


@dataclass(frozen=True)
class QueueRow:
    """One queue: its stage, name, workers (``None``: Redis would not list its
    clients) and whether it is paused (``None``: unknown)."""

    phase: Phase
    name: str
    workers: int | None
    paused: bool | None


@dataclass(frozen=True)
class WorkersPage:
    """The workers page: queues (empty when Redis did not answer; ``redis_error``
    says why) and the health checks (:meth:`retro.metrics.Health.check`)."""

    queues: list[QueueRow]
    redis_error: str | None
    checks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Reader:
    """The board's connections: ``app`` (entered, without Redis: the engine and the
    policy), ``queues`` on the Redis at ``redis_url`` (connected on first use) and
    clocks of its own (schedule-to-start from first sight, :mod:`retro.clock`)."""

    def __init__(self, app: App, redis_url: str) -> None:
        self.app = app
        settings = app.settings
        self.queues = Queues(
            redis_url,
            prefix=settings.queue_prefix,
            names=queue_names(settings),
            options=JobOptions(
                priority=settings.job_priority,
                attempts=settings.job_attempts,
                backoff_ms=settings.job_backoff_ms,
            ),
        )
        self.clocks = Clocks()

    async def close(self) -> None:
        """Close the Redis connections (the app is closed by whoever entered it)."""
        await self.queues.close()

    # --- pages ------------------------------------------------------------------

    async def backfills(self, *, now: datetime) -> BackfillsPage:
        """The :data:`BACKFILLS_SHOWN` newest backfills, and how many are stored."""
        async with self.app.engine.connect() as conn:
            found = await summaries(conn, now=now, limit=BACKFILLS_SHOWN)
            return BackfillsPage(found, await backfill_rows.count(conn))

    async def backfill(
        self, backfill_id: str, *, state: State | None, now: datetime
    ) -> BackfillPage | None:
        """The page of ``backfill_id`` (runs in ``state`` only, if given), or ``None``."""
        async with self.app.engine.connect() as conn:
            found = await summary(conn, backfill_id, now=now)
            if found is None:
                return None
            return BackfillPage(
                summary=found,
                state=state,
                runs=await runs_of(conn, backfill_id, state=state, limit=RUNS_SHOWN),
                failures=await runs_of(conn, backfill_id, state=State.FAILED, limit=FAILURES_SHOWN),
                chart=await handoff_chart(conn, backfill_id, now=now),
            )

    async def run(self, run_id: str) -> RunPage:
        """The page of the run ``run_id`` names (its id, or an unambiguous prefix of at
        least :data:`retro.lookup.MIN_PREFIX` characters, as ``retro history``).

        Raises:
            commands.Refused: no run, or several (the message says which).
        """
        found = await commands.history(self.app, run_id, of="run")
        run = found.runs[0].run
        async with self.app.engine.connect() as conn:
            facts = await match_facts(conn, run.match_id)
        row = RunRow(run, *((facts.home_team, facts.away_team) if facts else (None, None)))
        job = None
        if run.job_id and run.phase:  # a live run's last job (a back-off's: failed)
            job = await self._job(run)
        return RunPage(run=row, history=history_json(found), job=job)

    async def history(self, run_id: str) -> dict[str, Any]:
        """``retro history RUN_ID --of run --json`` (``retro.history/1``).

        Raises:
            commands.Refused: as :meth:`run`.
        """
        return history_json(await commands.history(self.app, run_id, of="run"))

    async def workers(self) -> WorkersPage:
        """Workers and pause per queue (the checks are added by the caller)."""
        rows: list[QueueRow] = []

        async def read() -> None:
            for phase, name in self.queues.names.items():
                rows.append(
                    QueueRow(
                        phase,
                        name,
                        await self.queues.worker_count(phase),
                        await self.queues.is_paused(phase),
                    )
                )

        error = await self._bounded(read())
        return WorkersPage(queues=[] if error else rows, redis_error=error)

    async def _job(self, run: Run) -> Job:
        assert run.job_id is not None and run.phase is not None
        phase, job_id, queues = run.phase, run.job_id, self.queues
        seen: list[Job] = []

        async def read() -> None:
            view = await queues.job_view(phase, job_id)
            view = self.clocks.job.measure(
                job_id, view, await self.clocks.queue.now(queues.server_time)
            )
            waiting = None
            if view.meaning in (JobMeaning.WAITING, JobMeaning.PROGRESSING):
                waiting = wait_of(
                    run,
                    view,
                    await queues.worker_count(phase),
                    await queues.is_paused(phase),
                    queues,
                    self.app.policy,
                )
            seen.append(Job(phase, job_id, str(view.state), waiting))

        error = await self._bounded(read())
        return Job(phase, job_id, error=error) if error or not seen else seen[0]

    @staticmethod
    async def _bounded(reads: Awaitable[None]) -> str | None:
        """Await ``reads`` within :data:`REDIS_SECONDS`; ``None``, or why Redis could
        not be read (one masked line)."""
        try:
            async with asyncio.timeout(REDIS_SECONDS):
                await reads
        except TimeoutError:
            return f"Redis did not answer within {REDIS_SECONDS:g} s"
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            return f"Redis unreachable: {error_line(exc)}"
        return None


async def summary(
    conn: AsyncConnection, backfill_id: str, *, now: datetime
) -> BackfillSummary | None:
    """The summary of ``backfill_id`` at ``now`` (aware UTC), or ``None`` when there is
    no such backfill."""
    found = await summaries(conn, now=now, backfill_id=backfill_id)
    return found[0] if found else None


# --- one backfill's runs and chart -----------------------------------------------------


async def runs_of(
    conn: AsyncConnection, backfill_id: str, *, state: State | None, limit: int
) -> list[RunRow]:
    """Runs of ``backfill_id`` (only in ``state``, if given) with their teams, most
    recently updated first, at most ``limit``."""
    query = (
        select(backfill_runs, matches.c.home_team, matches.c.away_team)
        .select_from(backfill_runs.outerjoin(matches, matches.c.id == backfill_runs.c.match_id))
        .where(backfill_runs.c.backfill_id == backfill_id)
        .order_by(backfill_runs.c.updated_at.desc(), backfill_runs.c.id)
        .limit(limit)
    )
    if state is not None:
        query = query.where(backfill_runs.c.state == str(state))
    rows = (await conn.execute(query)).mappings()
    return [RunRow(run_from_row(row), row["home_team"], row["away_team"]) for row in rows]


async def handoff_chart(conn: AsyncConnection, backfill_id: str, *, now: datetime) -> Chart:
    """Hand-offs (:data:`retro.events.HANDOFF_TYPES`) of ``backfill_id``'s runs per
    minute over the :data:`CHART_MINUTES` minutes before ``now`` (aware UTC), the last
    bar being the current minute."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=CHART_MINUTES)
    counts = [0] * CHART_MINUTES
    events = backfill_events.c
    rows = await conn.execute(
        select(events.at)
        .select_from(backfill_events.join(backfill_runs, events.run_id == backfill_runs.c.id))
        .where(
            backfill_runs.c.backfill_id == backfill_id,
            events.type.in_(HANDOFF_TYPES),
            events.at >= start,
            events.at < end,
        )
    )
    for (at,) in rows:
        counts[int((at - start).total_seconds() // 60)] += 1
    return Chart(start=start, counts=counts)
