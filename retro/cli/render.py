"""Rendering of the CLI's reports with Rich (tables on stdout)."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from retro.app import SeedReport, StatusReport
from retro.demo.scenario import DemoReport

PIPED_WIDTH = 160
"""Table width when output is not a terminal (logs, cron mail): ids stay whole."""
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 gap match``, ``2 gap matches``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def _when(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%d %H:%M")


def render_start(report: SeedReport) -> None:
    """Gap matches by kind, the runs seeded, or why none."""
    scan = report.scan
    kinds = ", ".join(f"{kind} {n}" for kind, n in scan.by_kind().items())
    out.print(
        f"Window {_when(scan.since)} → {_when(scan.until)} UTC, "
        f"{scan.expected} predictions expected per match."
    )
    for row in scan.skipped:
        err.print(f"retro: skipped match {row.match_id}: {row.reason}", markup=False)
    if scan.gaps:
        table = Table(
            "match",
            "home",
            "away",
            "kick-off (UTC)",
            "status",
            "gaps",
            "predictions",
            title=f"{plural(len(scan.gaps), 'gap match', 'gap matches')} ({kinds}; "
            "a match may miss several stages)",
        )
        for gap in scan.gaps[:50]:
            table.add_row(
                gap.match_id,
                gap.home_team or "",
                gap.away_team or "",
                _when(gap.kickoff),
                gap.status,
                ", ".join(str(k) for k in gap.kinds),
                f"{gap.found}/{gap.expected}",
            )
        out.print(table)
        if len(scan.gaps) > 50:
            out.print(f"… and {len(scan.gaps) - 50} more")
    blocked = (
        plural(
            scan.blocked,
            "gap match already has a live run or finished one",
            "gap matches already have a live run or finished one",
        )
        + " within the cooldown"
    )
    if report.dry_run:
        out.print(f"Dry run: would seed {plural(len(scan.gaps), 'run')}; nothing written.")
    elif report.seeded:
        out.print(
            f"Seeded {plural(len(report.seeded), 'run')}. `retro run` heals them; "
            "`retro status` shows progress."
        )
    if not scan.gaps:
        complete = plural(scan.complete, "match in the window is", "matches in the window are")
        reasons = [f"{complete} complete"]
        if scan.blocked:
            reasons.append(blocked)
        if scan.skipped:
            reasons.append(f"{plural(len(scan.skipped), 'row')} skipped as unreadable")
        out.print(
            ("Nothing to seed: " if report.dry_run else "No runs seeded: ")
            + "; ".join(reasons)
            + "."
        )
    elif scan.blocked:
        out.print(f"Besides, {blocked}.")


def render_status(report: StatusReport, *, now: datetime) -> None:
    """Counts by state, in-flight runs, failures, workers."""
    counts = Table("state", "runs", title="Runs")
    for state in ("pending", "analyzing", "predicting", "settling", "done", "failed", "cancelled"):
        counts.add_row(state, str(report.counts.get(state, 0)))
    out.print(counts)
    if report.in_flight:
        table = Table(
            "run",
            "match",
            "teams",
            "phase",
            "attempt",
            "job id",
            "job",
            "elapsed",
            title="In flight",
        )
        for item in report.in_flight:
            run = item.run
            since = run.requested_at or run.updated_at
            job = item.job_state or "-"
            if item.waiting_for_worker:
                job = f"{job}: no worker consuming {item.waiting_for_worker}"
            table.add_row(
                run.id,
                run.match_id,
                f"{item.home_team} v {item.away_team}",
                str(run.phase),
                str(run.attempt),
                run.job_id or "-",
                job,
                f"{(now - since).total_seconds():.0f} s",
            )
        out.print(table)
    if report.failed:
        table = Table("run", "match", "failed at", "reason", title="Failed")
        for run in report.failed:
            table.add_row(
                run.id,
                run.match_id,
                _when(run.finished_at) if run.finished_at else "-",
                run.last_error or "-",
            )
        out.print(table)
    if report.workers:
        out.print(
            "Workers: "
            + ", ".join(f"{q} {'?' if n is None else n}" for q, n in report.workers.items())
        )
    out.print("Database: reachable")
    if report.redis_error:
        out.print(
            f"Redis: UNREACHABLE ({report.redis_error}); job states and workers unknown",
            markup=False,
        )
    else:
        out.print("Redis: reachable")


def render_demo(report: DemoReport) -> None:
    """Before/after gaps, runs by outcome, time taken, and the model leaderboard."""
    before, after = report.before.by_kind(), report.after.by_kind()
    table = Table("", "before", "after", title="Gap matches in the outage window")
    table.add_row("gap matches", str(len(report.before.gaps)), str(len(report.after.gaps)))
    for kind in before:
        table.add_row(f"  {kind}", str(before[kind]), str(after[kind]))
    out.print(table)
    done = report.counts.get("done", 0)
    failed = report.counts.get("failed", 0)
    live = sum(n for s, n in report.counts.items() if s not in ("done", "failed", "cancelled"))
    out.print(
        f"Runs: {report.seeded} seeded, {done} healed (done), {failed} failed, "
        f"{report.counts.get('cancelled', 0)} cancelled, {live} unfinished — "
        f"in {report.seconds:.1f} s."
    )
    for run in report.failed:
        out.print(f"  failed {run.id} (match {run.match_id}): {run.last_error}", markup=False)
    out.print(
        f"Event log: {report.events} events replay to the stored projection of every run "
        f"({report.drift} drifted)."
    )
    board = Table(
        "#",
        "model",
        "scored",
        "points",
        "exact",
        title=f"Leaderboard (top 10 of {len(report.leaderboard)} models, healed data included)",
    )
    for rank, row in enumerate(report.leaderboard[:10], 1):
        board.add_row(str(rank), row.display_name, str(row.scored), str(row.points), str(row.exact))
    out.print(board)


def render_config(values: dict[str, Any], sources: dict[str, str]) -> None:
    """One row per setting: name, value (passwords already masked), source, env variable."""
    table = Table(title="Effective configuration", title_justify="left")
    for column in ("setting", "value", "source", "environment variable"):
        table.add_column(column, overflow="fold")
    for name, value in values.items():
        shown = "(not set)" if value is None else str(value)
        table.add_row(name, shown, sources[name], f"RETRO_{name.upper()}")
    out.print(table, markup=False)
    out.print("Sources, highest priority first: option, env, .env, retro.toml, default.")
