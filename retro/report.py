"""The ``--json`` shapes of the read commands (documented in docs/json.md).

Every document is a JSON object whose ``schema`` key names its shape and version
(``retro.status/1``); a new version is made only for an incompatible change, and
new keys may appear within a version. Instants are ISO-8601 UTC strings ending in
``Z``; durations are seconds as floats; absent values are ``null``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from retro.backfill import Action
from retro.backfill_commands import BackfillCancel, Listing, Steered
from retro.commands import CancelReport, History, InFlight, SeedReport, StatusReport
from retro.config import mask
from retro.machine import State, Waiting
from retro.progress import BackfillSummary, Progress
from retro.store.runs import Audit, EventRow
from retro.text import json_safe

STATES = tuple(str(s) for s in State)
"""Every run state, in the order of a run's life."""


def dumps(document: dict[str, Any]) -> str:
    """``document`` as indented JSON text (keys in the order built, UTF-8 kept; the
    line breaks and controls the encoder leaves raw, such as U+2028, escaped)."""
    return json_safe(json.dumps(document, indent=2, ensure_ascii=False))


def iso(instant: datetime | None) -> str | None:
    """``2025-05-26T12:00:00.123456Z`` (UTC), or ``None``."""
    if instant is None:
        return None
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def seconds(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in seconds, or ``None`` when either is missing."""
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)


def masked(value: Any) -> Any:
    """``value`` with passwords in URLs masked, inside strings, lists and dicts."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    return value


def progress_json(progress: Progress) -> dict[str, Any]:
    """The ``progress`` object of ``retro.status/1`` (and of each backfill)."""
    return {
        "total_runs": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "cancelled": progress.cancelled,
        "live": progress.live,
        "finished": progress.finished,
        "percent_finished": round(progress.percent_finished, 2),
        "percent_done": round(progress.percent_done, 2),
        "window_seconds": progress.window,
        "measured_over_seconds": round(progress.measured_over, 3),
        "handoffs_in_window": progress.handoffs,
        "handoffs_per_minute": None if progress.rate is None else round(progress.rate, 4),
        "handoffs_left": progress.handoffs_left,
        "eta_seconds": None if progress.eta is None else round(progress.eta, 3),
    }


def waiting_json(wait: Waiting) -> dict[str, Any]:
    """The ``waiting`` object of an ``in_flight`` item (``retro.status/1``)."""
    return {
        "queue": wait.queue,
        "seconds": round(wait.seconds, 3),
        "reason": str(wait.reason),
        "reason_text": wait.reason.text,
        "budget_seconds": wait.budget,
        "over_budget": wait.over_budget,
        "text": wait.text,
    }


HELD = "backfill paused"
"""The ``held`` reason of a run whose paused backfill keeps it from a new job."""


def _run_item(item: InFlight) -> dict[str, Any]:
    """The fields every run entry of ``retro.status/1`` starts with (in flight or in
    back-off): ids, teams, state, phase and attempt, its backfill, and ``held``:
    why it starts no job (its backfill is paused) or ``None``."""
    run = item.run
    return {
        "run_id": run.id,
        "match_id": run.match_id,
        "home_team": item.home_team,
        "away_team": item.away_team,
        "state": str(run.state),
        "phase": None if run.phase is None else str(run.phase),
        "attempt": run.attempt,
        "backfill_id": run.backfill_id,
        "held": HELD if item.held else None,
    }


def status_json(report: StatusReport, *, now: datetime) -> dict[str, Any]:
    """``retro status --json`` (``retro.status/1``)."""
    in_flight = []
    for item in report.in_flight:
        run = item.run
        since = run.requested_at or run.updated_at
        in_flight.append(
            _run_item(item)
            | {
                "job_id": run.job_id,
                "job_state": item.job_state,
                "waiting_for_worker": item.waiting_for_worker,
                "waiting": None if item.waiting is None else waiting_json(item.waiting),
                "since": iso(since),
                "elapsed_seconds": seconds(since, now),
            }
        )
    backoff = []
    for item in report.backoff:
        run = item.run
        backoff.append(
            _run_item(item)
            | {
                "last_error": masked(run.last_error),
                "retry_at": iso(run.not_before),
                "holds_slot": run.holds_slot,
                "retry_in_seconds": (
                    None
                    if run.not_before is None
                    else max((run.not_before - now).total_seconds(), 0.0)
                ),
            }
        )
    failed = [
        {
            "run_id": run.id,
            "match_id": run.match_id,
            "attempt": run.attempt,
            "failed_at": iso(run.finished_at),
            "reason": masked(run.last_error),
            "backfill_id": run.backfill_id,
        }
        for run in report.failed
    ]
    return {
        "schema": "retro.status/1",
        "generated_at": iso(now),
        "counts": {state: report.counts.get(state, 0) for state in STATES},
        "progress": None if report.progress is None else progress_json(report.progress),
        "in_flight": in_flight,
        "backoff": backoff,
        "failed": failed,
        "workers": dict(report.workers),
        "database": {"reachable": True},
        "redis": {
            "reachable": report.redis_error is None,
            "error": masked(report.redis_error),
        },
        "backfill": None if report.backfill is None else backfill_json(report.backfill),
        "backfills": [backfill_json(summary) for summary in report.backfills],
    }


def backfill_json(summary: BackfillSummary) -> dict[str, Any]:
    """One backfill (``retro.backfills/1``, and ``backfill``/``backfills`` of
    ``retro.status/1``): its row, state, runs by state and progress with ETA."""
    backfill, tally = summary.backfill, summary.tally
    return {
        "id": backfill.id,
        "label": backfill.label,
        "window": {"from": iso(backfill.window_from), "to": iso(backfill.window_to)},
        "created_at": iso(backfill.created_at),
        "created_by": backfill.created_by,
        "options": masked(dict(backfill.options)),
        "gap_counts": dict(backfill.gap_counts),
        "state": str(summary.state),
        "paused": backfill.paused,
        "cancelled_at": iso(backfill.cancelled_at),
        "runs": {
            "seeded": tally.seeded,
            "finished": tally.finished,
            "done": tally.done,
            "failed": tally.failed,
            "cancelled": tally.cancelled,
            "live": tally.live,
        },
        "counts": {state: tally.of(state) for state in STATES},
        "progress": progress_json(summary.progress),
    }


def backfills_json(listing: Listing, *, now: datetime) -> dict[str, Any]:
    """``retro backfills --json`` (``retro.backfills/1``)."""
    return {
        "schema": "retro.backfills/1",
        "generated_at": iso(now),
        "total": listing.total,
        "window_seconds": listing.window,
        "backfills": [backfill_json(summary) for summary in listing.summaries],
    }


def action_json(action: Action) -> dict[str, Any]:
    """One ``backfill_actions`` row: what was done, by whom, when, with what data."""
    return {
        "type": str(action.type),
        "by": action.by,
        "at": iso(action.at),
        "data": masked(dict(action.data)),
    }


def steered_json(steered: Steered) -> dict[str, Any]:
    """``retro pause|resume|retry --backfill --json`` (``retro.backfill_action/1``)."""
    return {
        "schema": "retro.backfill_action/1",
        "action": str(steered.action),
        "changed": steered.changed,
        "by": steered.by,
        "at": iso(steered.at),
        "runs": list(steered.runs),
        "since": None if steered.since is None else action_json(steered.since),
        "backfill": backfill_json(steered.summary),
    }


def event_json(event: EventRow, previous: EventRow | None) -> dict[str, Any]:
    """One event of a ``retro.history/1`` timeline."""
    return {
        "seq": event.seq,
        "at": iso(event.at),
        "type": event.type,
        "data": masked(event.data),
        "since_previous_seconds": seconds(previous.at, event.at) if previous else None,
    }


def history_json(found: History) -> dict[str, Any]:
    """``retro history --json`` (``retro.history/1``)."""
    out = []
    for item in found.runs:
        run, events = item.run, item.events
        out.append(
            {
                "run_id": run.id,
                "match_id": run.match_id,
                "state": str(run.state),
                "gaps": list(run.gaps),
                "attempt": run.attempt,
                "created_at": iso(run.created_at),
                "finished_at": iso(run.finished_at),
                "last_error": masked(run.last_error),
                "total_seconds": seconds(events[0].at, events[-1].at) if events else None,
                "events": [
                    event_json(e, events[i - 1] if i else None) for i, e in enumerate(events)
                ],
            }
        )
    return {
        "schema": "retro.history/1",
        "query": found.query,
        "resolved_as": found.resolved_as,
        "runs": out,
    }


def verify_json(audit: Audit) -> dict[str, Any]:
    """``retro verify --json`` (``retro.verify/1``)."""
    return {
        "schema": "retro.verify/1",
        "ok": audit.ok,
        "runs": audit.runs,
        "events": audit.events,
        "drifted": list(audit.drifted),
        "illegal": [{"run_id": run_id, "reason": why} for run_id, why in audit.illegal.items()],
    }


def start_json(report: SeedReport) -> dict[str, Any]:
    """``retro start --json`` (``retro.start/1``), dry run or not."""
    scan = report.scan
    return {
        "schema": "retro.start/1",
        "dry_run": report.dry_run,
        "window": {"since": iso(scan.since), "until": iso(scan.until)},
        "expected_per_match": scan.expected,
        "gaps": [
            {
                "match_id": gap.match_id,
                "home_team": gap.home_team,
                "away_team": gap.away_team,
                "kickoff": iso(gap.kickoff),
                "status": gap.status,
                "kinds": [str(k) for k in gap.kinds],
                "found": gap.found,
                "expected": gap.expected,
                "cannot_heal": report.cannot_heal.get(gap.match_id),
            }
            for gap in scan.gaps
        ],
        "by_kind": {str(kind): n for kind, n in scan.by_kind().items()},
        "complete": scan.complete,
        "blocked": scan.blocked,
        "skipped": [{"match_id": r.match_id, "reason": masked(r.reason)} for r in scan.skipped],
        "would_seed": len(scan.gaps) if report.dry_run else None,
        "seeded": list(report.seeded),
        "backfill": None
        if report.backfill is None
        else {"id": report.backfill.id, "label": report.backfill.label},
    }


def cancel_json(report: CancelReport, backfill: BackfillCancel | None = None) -> dict[str, Any]:
    """``retro cancel --json`` (``retro.cancel/1``); with ``--backfill`` its
    ``backfill`` (the backfill after the cancel) is set, else ``null``."""
    return {
        "schema": "retro.cancel/1",
        "backfill": None if backfill is None else backfill_json(backfill.summary),
        "cancelled": [
            {
                "run_id": c.run.id,
                "match_id": c.run.match_id,
                "was_state": str(c.run.state),
                "phase": None if c.phase is None else str(c.phase),
                "job_id": c.job_id,
                "job_state": c.job_state,
                "job_removed": c.job_removed,
            }
            for c in report.cancelled
        ],
        "ended_first": [
            {"run_id": r.id, "match_id": r.match_id, "state": str(r.state)}
            for r in report.ended_first
        ],
    }
