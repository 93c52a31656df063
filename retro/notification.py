"""Webhook notifications (``notify_url``): what they say, pure (no I/O).

Two kinds, each built from the facts of the transaction that causes it
(:mod:`retro.store.outbox` records it there; :mod:`retro.notify` sends it):

- ``run.failed``: a run appended ``RunFailed``. Key ``run-failed:<run id>:<seq>``
  (the event's seq in the run's log).
- ``backfill.finished``: the append that left a backfill with no live run. Key
  ``backfill-finished:<backfill id>:<n>``, ``n`` the number of ``RunRearmed`` events
  of its runs so far: a backfill finishes again only after a retry re-armed a run,
  so each finish has its own key, and the same finish always the same one.

The body (schema ``retro.notification/1``, docs/json.md) carries a ``text`` line
that Slack and Mattermost incoming webhooks show as is, and the structured facts.
Text from outside (team names, match ids, failure reasons) is put in ``text`` on
one line (control characters and line breaks escaped visibly, ``&``, ``<`` and
``>`` escaped as Slack's formatting rules ask, so a team name cannot forge a line,
a link or an ``@channel``), with passwords masked; the structured fields carry the
same values unescaped (JSON needs no help) but masked and clipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from retro.config import mask
from retro.text import escape

SCHEMA = "retro.notification/1"
"""``schema`` of every notification body (docs/json.md)."""
RUN_FAILED = "run.failed"
BACKFILL_FINISHED = "backfill.finished"
KINDS = (RUN_FAILED, BACKFILL_FINISHED)
FAILED_RUNS_SHOWN = 50
"""Failed runs listed in a ``backfill.finished`` body; the rest are counted in
``more_failed_runs``."""
TEXT_LIMIT = 200
"""Longest piece of outside text (a team name, a reason) inside ``text``, characters."""


@dataclass(frozen=True)
class Notification:
    """One notification: ``key`` (its idempotency key and outbox id), ``kind``
    (:data:`KINDS`) and ``payload`` (the JSON body)."""

    key: str
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class FailedRun:
    """A failed run of a finished backfill: ids and its reason (one line)."""

    run_id: str
    match_id: str
    reason: str | None


def run_failed(
    *,
    run_id: str,
    seq: int,
    match_id: str,
    reason: str,
    at: datetime,
    phase: str | None,
    attempt: int,
    home_team: str | None,
    away_team: str | None,
    backfill_id: str,
    backfill_label: str | None,
) -> Notification:
    """The ``run.failed`` notification of ``RunFailed`` (``seq`` in ``run_id``'s log,
    at ``at``, aware UTC) with its ``reason``; ``phase`` and ``attempt`` are where the
    run stood when it failed, the teams from the host's ``matches`` row (``None``
    when unknown)."""
    key = f"run-failed:{run_id}:{seq}"
    teams = _teams(home_team, away_team)
    label = f" of backfill {_line(backfill_label)}" if backfill_label else ""
    text = (
        f"retro: run {run_id} (match {_line(match_id)}{teams}){label} failed"
        f"{f' in {phase}' if phase else ''}: {_line(reason)}"
    )
    return Notification(
        key=key,
        kind=RUN_FAILED,
        payload={
            "schema": SCHEMA,
            "kind": RUN_FAILED,
            "idempotency_key": key,
            "text": text,
            "at": _iso(at),
            "run": {
                "run_id": run_id,
                "match_id": match_id,
                "home_team": _field(home_team),
                "away_team": _field(away_team),
                "phase": phase,
                "attempt": attempt,
                "reason": _field(reason),
            },
            "backfill": {"id": backfill_id, "label": backfill_label},
        },
    )


def backfill_finished(
    *,
    backfill_id: str,
    label: str,
    n: int,
    created_at: datetime,
    at: datetime,
    cancelled: bool,
    counts: Mapping[str, int],
    failed: Sequence[FailedRun],
) -> Notification:
    """The ``backfill.finished`` notification of backfill ``backfill_id`` (its
    ``n``-th finish: see the module) at ``at`` (aware UTC), created at
    ``created_at``. ``counts`` are its runs by terminal state (``done``, ``failed``,
    ``cancelled``); ``failed`` its failed runs, first finished first (the first
    :data:`FAILED_RUNS_SHOWN` are listed, the others counted in
    ``more_failed_runs`` from ``counts["failed"]``, so the caller may pass only
    those). ``cancelled``: an operator cancelled it."""
    key = f"backfill-finished:{backfill_id}:{n}"
    seconds = max(0.0, (at - created_at).total_seconds())
    done, failures, cancels = (counts.get(s, 0) for s in ("done", "failed", "cancelled"))
    verb = "was cancelled after" if cancelled else "finished in"
    text = (
        f"retro: backfill {_line(label)} ({backfill_id}) {verb} {duration_text(seconds)}: "
        f"{done} done, {failures} failed, {cancels} cancelled"
    )
    shown = failed[:FAILED_RUNS_SHOWN]
    if shown:
        first = shown[0]
        text += f"; first failure: run {first.run_id} (match {_line(first.match_id)})"
        text += f": {_line(first.reason or 'no reason given')}"
    return Notification(
        key=key,
        kind=BACKFILL_FINISHED,
        payload={
            "schema": SCHEMA,
            "kind": BACKFILL_FINISHED,
            "idempotency_key": key,
            "text": text,
            "at": _iso(at),
            "backfill": {
                "id": backfill_id,
                "label": label,
                "state": "cancelled" if cancelled else "finished",
                "created_at": _iso(created_at),
            },
            "counts": {"runs": done + failures + cancels, **dict(counts)},
            "duration_seconds": round(seconds, 3),
            "failed_runs": [
                {"run_id": r.run_id, "match_id": r.match_id, "reason": _field(r.reason)}
                for r in shown
            ],
            "more_failed_runs": max(0, failures - len(shown)),
        },
    )


def duration_text(seconds: float) -> str:
    """``seconds`` for people: ``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 3 h``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _iso(instant: datetime) -> str:
    """An instant as docs/json.md writes them: ISO-8601 in UTC, ending in ``Z``."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _teams(home: str | None, away: str | None) -> str:
    if not home and not away:
        return ""
    return f", {_line(home or '?')} - {_line(away or '?')}"


def _field(value: str | None) -> str | None:
    """Outside text for a structured field: passwords masked, clipped."""
    if value is None:
        return None
    masked = mask(value)
    return masked if len(masked) <= 500 else masked[:499] + "…"


def _line(value: str | None) -> str:
    """Outside text for ``text``: one line (:func:`retro.text.escape`), passwords
    masked, Slack's control characters escaped, at most :data:`TEXT_LIMIT` characters."""
    one = escape(mask(value or "").strip())
    if len(one) > TEXT_LIMIT:
        one = one[: TEXT_LIMIT - 1] + "…"
    return one.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
