"""Rendering of the CLI's reports with Rich (tables on stdout).

Text from outside retro (match ids, team names, statuses, job ids, failure reasons,
event data, run ids typed by the operator) goes into a :class:`~rich.text.Text` built
by :func:`shown`: escaped onto one line (:func:`retro.text.escape`) and never read as
Rich markup, so a team named ``[red]x`` or a reason holding a newline cannot forge a
row or a line.

Ids are never cut (issue 11): tables holding run, match or job ids are
:class:`~retro.cli.tables.IdTable` (ids whole, other columns wrap), and lines that
name runs (``cancel``) are printed with ``soft_wrap``: the terminal, not Rich, wraps
them, so each id stays whole on its line.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from retro.cli.backfill_render import backfill_header, backfills_table
from retro.cli.tables import IdTable
from retro.commands import CancelReport, History, SeedReport, StatusReport
from retro.config import mask
from retro.demo.scenario import DemoReport
from retro.machine import TERMINAL, State
from retro.progress import describe_eta, short_eta
from retro.text import escape

PIPED_WIDTH = 160
"""Table width when output is not a terminal (logs, cron mail): ids stay whole."""
out = Console(highlight=False, width=None if sys.stdout.isatty() else PIPED_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPED_WIDTH)


def shown(text: object) -> Text:
    """``text`` as a Rich ``Text`` on one line: masked, non-printable characters
    escaped (``\\n``), no markup."""
    return Text(escape(mask(str(text))))


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
        err.print(shown(f"retro: skipped match {row.match_id}: {row.reason}"))
    doomed = report.cannot_heal
    if scan.gaps:
        table = IdTable(
            "match",
            "home",
            "away",
            "kick-off (UTC)",
            "status",
            "gaps",
            "predictions",
            ids={"match"},
            title=f"{plural(len(scan.gaps), 'gap match', 'gap matches')} ({kinds}; "
            "a match may miss several stages)",
        )
        for gap in scan.gaps[:50]:
            table.add_row(
                shown(gap.match_id),
                shown(gap.home_team or ""),
                shown(gap.away_team or ""),
                _when(gap.kickoff),
                shown(gap.status),
                ", ".join(str(k) for k in gap.kinds),
                f"{gap.found}/{gap.expected}",
            )
        out.print(table)
        if len(scan.gaps) > 50:
            out.print(f"… and {len(scan.gaps) - 50} more")
    if doomed:
        fate = "would fail" if report.dry_run else "fail"
        out.print(
            f"{plural(len(doomed), 'gap match', 'gap matches')} cannot heal: no external_id, "
            f"which the analysis worker needs; their runs {fate} at their first tick. "
            "Fill matches.external_id, or set require_external_id = false if the host's "
            "analysis does not need it:"
        )
        for match_id, why in list(doomed.items())[:50]:
            out.print(shown(f"  {match_id}: cannot heal: {why}"))
        if len(doomed) > 50:
            out.print(f"  … and {len(doomed) - 50} more")
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
        named = Text("")
        if report.backfill is not None:  # the label is text as typed, never markup
            named = Text.assemble(
                f" as backfill {report.backfill.id} (", shown(report.backfill.label), ")"
            )
        out.print(
            Text.assemble(
                f"Seeded {plural(len(report.seeded), 'run')}",
                named,
                ". `retro run` heals them; `retro status` shows progress.",
            )
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
    """Counts by state, progress and ETA, in-flight runs, failures, workers, reachability."""
    for part in status_parts(report, now=now):
        out.print(part)


def status_parts(report: StatusReport, *, now: datetime) -> list[RenderableType]:
    """The renderables of ``retro status``, top to bottom (also the watch view's body)."""
    parts: list[RenderableType] = []
    focus = report.backfill
    if focus is not None:
        parts.extend(backfill_header(focus))
    title = "Runs" if focus is None else "Runs of this backfill"
    counts = Table("state", "runs", title=title)
    for state in State:
        counts.add_row(str(state), str(report.counts.get(state, 0)))
    parts.append(counts)
    if report.progress is not None and focus is None:
        p = report.progress
        parts.append(
            Text(
                f"Progress: {p.done}/{p.total} runs done ({p.percent_done:.0f}%); {p.failed} "
                f"failed, {p.cancelled} cancelled, {p.live} live (percent done = done runs "
                "out of every stored run; failed and cancelled count as not done; each "
                "backfill's own progress is below and in `retro backfills`)"
            )
        )
        parts.append(Text(describe_eta(p)))
    if report.backfills and focus is None:
        parts.append(backfills_table(report.backfills, title="Backfills in progress"))
    if report.holding:
        table = IdTable(
            "run",
            "match",
            "teams",
            "phase",
            "attempt",
            "job id",
            "job",
            "elapsed",
            ids={"run", "match", "job id"},
            title="In flight",
        )
        for item in report.holding:
            run = item.run
            since = run.requested_at or run.updated_at
            job = item.job_state or "-"
            if item.waiting is not None and item.waiting.notable:
                over = " (over its budget)" if item.waiting.over_budget else ""
                job = f"{job}: {item.waiting.text}{over}"
            elif item.waiting_for_worker:
                job = f"{job}: no worker consuming {item.waiting_for_worker}"
            if item.backfill_paused:
                job = f"{job} (backfill paused: no new job after this one)"
            table.add_row(
                shown(run.id),
                shown(run.match_id),
                shown(f"{item.home_team} v {item.away_team}"),
                str(run.phase),
                str(run.attempt),
                shown(run.job_id or "-"),
                shown(job),
                f"{(now - since).total_seconds():.0f} s",
            )
        parts.append(table)
    if report.held:
        held = Table("run", "match", "teams", "phase", "backfill", title="Held: backfill paused")
        for item in report.held:
            run = item.run
            held.add_row(
                shown(run.id),
                shown(run.match_id),
                shown(f"{item.home_team} v {item.away_team}"),
                f"{run.phase} (no job until resumed)",
                shown(run.backfill_id),
            )
        parts.append(held)
    if report.backoff:
        parts.append(backoff_table(report, now=now))
    if report.failed:
        table = IdTable(
            "run",
            "match",
            "failed at",
            "reason",
            ids={"run", "match"},
            title="Failed (most recent first)",
        )
        for run in report.failed:
            table.add_row(
                shown(run.id),
                shown(run.match_id),
                _when(run.finished_at) if run.finished_at else "-",
                shown(run.last_error or "-"),
            )
        parts.append(table)
    if report.workers:
        parts.append(
            Text(
                "Workers: "
                + ", ".join(f"{q} {'?' if n is None else n}" for q, n in report.workers.items())
            )
        )
    parts.append(Text("Database: reachable"))
    if report.redis_error:
        parts.append(
            shown(f"Redis: UNREACHABLE ({report.redis_error}); job states and workers unknown")
        )
    else:
        parts.append(Text("Redis: reachable"))
    return parts


def backoff_table(report: StatusReport, *, now: datetime) -> IdTable:
    """The runs sleeping out a retry back-off: their last error, their slot and
    when the retry is due (UTC, and in how many seconds from ``now``). They hold
    no ``max_in_flight`` slot (a due retry waits for a free one), unless the last
    attempt timed out: its job may still run, and the run keeps its slot."""
    table = IdTable(
        "run",
        "match",
        "teams",
        "phase",
        "attempts made",
        "last error",
        "slot",
        "retry due (UTC)",
        ids={"run", "match"},
        title="In back-off (earliest retry first)",
    )
    for item in report.backoff:
        run = item.run
        due = "-"
        if run.not_before is not None:
            left = (run.not_before - now).total_seconds()
            when = run.not_before.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            wait = "due" if run.timed_out else "due; waits for a slot"
            if item.backfill_paused:
                wait = "held: backfill paused"
            due = f"{when} (in {left:.0f} s)" if left > 0 else f"{when} ({wait})"
        table.add_row(
            shown(run.id),
            shown(run.match_id),
            shown(f"{item.home_team} v {item.away_team}"),
            str(run.phase),
            str(run.attempt),
            shown(run.last_error or "-"),
            "kept: its timed-out job may still run" if run.timed_out else "none",
            due,
        )
    return table


class WatchView:
    """The ``retro status --watch`` screen: a header, a progress bar of runs done
    out of all runs (Rich ``Progress``), then the status body. Feed it reports
    with :meth:`update`; render it with Rich ``Live``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.refreshes = 0
        self.bar = Progress(
            TextColumn("runs done"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[eta]}"),
        )
        self._task = self.bar.add_task("runs", total=None, eta="")
        self._body: list[RenderableType] = []
        self._at = ""

    def update(
        self, report: StatusReport | None, *, now: datetime, error: str | None = None
    ) -> None:
        """Show ``report`` (taken at ``now``), or ``error`` when the refresh failed."""
        self.refreshes += 1
        self._at = now.strftime("%H:%M:%S")
        if report is None:
            self._body = [shown(f"refresh failed: {error or 'unknown error'}")]
            return
        if report.progress is not None:
            p = report.progress
            self.bar.update(self._task, total=max(p.total, 1), completed=p.done, eta=short_eta(p))
        self._body = status_parts(report, now=now)

    def __rich__(self) -> RenderableType:
        header = Text(
            f"retro status: refresh {self.refreshes} at {self._at} UTC, every "
            f"{self.interval:g} s (Ctrl-C to stop)"
        )
        return Group(header, self.bar, *self._body)


def _compact(data: dict[str, Any]) -> str:
    """An event's data on one line: ``job_id=analyze-retro-m1 attempt=1`` (masked)."""
    parts = []
    for key, value in data.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}={text}")
    return mask(" ".join(parts))


def _secs(value: float) -> str:
    """``1.250 s``; a negative span says the recording clock went back."""
    if value < 0:
        return f"{value:.3f} s (clock went back)"
    return f"{value:.3f} s"


def _since(previous: datetime, at: datetime) -> str:
    seconds = (at - previous).total_seconds()
    return ("+" if seconds >= 0 else "") + _secs(seconds)


def render_history(found: History) -> None:
    """Each run's events: seq, time (UTC), time since the previous event, type, data."""
    if found.resolved_as == "match":
        out.print(
            shown(f"Match {found.query}: {plural(len(found.runs), 'run')}, newest first"),
            soft_wrap=True,
        )
    for item in found.runs:
        run, events = item.run, item.events
        total = (events[-1].at - events[0].at).total_seconds() if events else 0.0
        table = IdTable(
            "seq",
            "time (UTC)",
            "+since prev",
            "event",
            "data",
            tokens={"event", "data"},  # words stay whole; data carries ids
            title=shown(
                f"Run {run.id} (match {run.match_id}): {run.state}, "
                f"{plural(len(events), 'event')} over {_secs(total)}"
            ),
        )
        previous = None
        for event in events:
            table.add_row(
                str(event.seq),
                event.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                "-" if previous is None else _since(previous.at, event.at),
                shown(event.type),
                shown(_compact(event.data)),
            )
            previous = event
        out.print(table)
        out.print(Text(f"Total: {_secs(total)} from first to last event."))


def render_cancel(report: CancelReport) -> None:
    """One line per run cancelled (and what became of its job), then a summary."""
    for item in report.cancelled:
        run = item.run
        line = f"Cancelled run {run.id} (match {run.match_id}, was {run.state})"
        if item.job_id is None:
            line += ": no job"
        elif item.job_removed:
            line += f": {item.job_state} job {item.job_id} removed from its queue"
        elif item.job_state == "active":
            line += (
                f": job {item.job_id} is active and was left running (a worker holds it); "
                "its result will be ignored"
            )
        else:
            line += f": job {item.job_id} is {item.job_state}, nothing to remove"
        out.print(shown(line), soft_wrap=True)
    for run in report.ended_first:
        out.print(
            shown(f"Run {run.id} (match {run.match_id}) ended {run.state} before the cancel"),
            soft_wrap=True,
        )
    out.print(
        f"Cancelled {plural(len(report.cancelled), 'run')}"
        + (f"; {len(report.ended_first)} had already ended." if report.ended_first else ".")
    )


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
    live = sum(n for s, n in report.counts.items() if s not in TERMINAL)
    out.print(
        f"Runs: {report.seeded} seeded, {done} healed (done), {failed} failed, "
        f"{report.counts.get('cancelled', 0)} cancelled, {live} unfinished — "
        f"in {report.seconds:.1f} s."
    )
    for run in report.failed:
        out.print(shown(f"  failed {run.id} (match {run.match_id}): {run.last_error}"))
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
        board.add_row(
            str(rank), shown(row.display_name), str(row.scored), str(row.points), str(row.exact)
        )
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
