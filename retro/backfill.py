"""A backfill: one named heal (``retro start``, or one periodic scan that seeded
runs), the runs it seeded, and what operators did to it.

A backfill is stored in ``backfills`` (its row, updated in place) and
``backfill_actions`` (what was done to it and by whom, append-only). Its runs are
the ``backfill_runs`` rows whose ``backfill_id`` names it; each run's
``RunSeeded`` event carries that id too. Runs seeded before backfills existed
(migration 0005) belong to :data:`LEGACY_BACKFILL_ID`: their stored
``RunSeeded`` events have no ``backfill_id`` and replay with that one (an upcast,
:class:`retro.events.RunSeeded`).
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

LEGACY_BACKFILL_ID = "legacy"
"""The backfill of every run seeded before backfills existed (migration 0005)."""
LEGACY_LABEL = "before-backfills"
"""The label of :data:`LEGACY_BACKFILL_ID`."""
SCAN_LABEL = "scan"
"""The label of a backfill created by the daemon's periodic scan."""


class BackfillState(StrEnum):
    """Where a backfill stands, for ``retro backfills`` and the board.

    ``cancelled``: an operator cancelled it; ``finished``: no run of it is live;
    ``paused``: it starts no new job (a job already queued or active finishes and
    is judged); ``running`` otherwise.
    """

    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"


class ActionType(StrEnum):
    """What was done to a backfill, as recorded in ``backfill_actions``."""

    CREATED = "BackfillCreated"
    PAUSED = "BackfillPaused"
    RESUMED = "BackfillResumed"
    CANCELLED = "BackfillCancelled"
    RETRIED = "BackfillRetried"


@dataclass(frozen=True)
class Backfill:
    """One backfill as its ``backfills`` row stores it.

    Attributes:
        id: 12 hex characters (``LEGACY_BACKFILL_ID`` for runs from before backfills).
        label: ``retro start --label`` text, ``scan`` for a periodic scan, or a
            default made from the window.
        window_from, window_to: the scanned window of kickoffs (aware UTC);
            ``None`` for the legacy backfill.
        created_at: when it was created (aware UTC).
        created_by: the OS user who created it (``retro start``), or the daemon's.
        options: the options it was started with, e.g. ``{"reprocess": "missing"}``.
        gap_counts: gap matches by kind (:class:`retro.store.gaps.GapKind` values)
            at seeding; a match may count under several kinds.
        paused: it starts no new job (``retro pause --backfill``).
        cancelled_at: when an operator cancelled it (aware UTC), else ``None``.
    """

    id: str
    label: str
    window_from: datetime | None
    window_to: datetime | None
    created_at: datetime
    created_by: str
    options: Mapping[str, Any] = field(default_factory=dict)
    gap_counts: Mapping[str, int] = field(default_factory=dict)
    paused: bool = False
    cancelled_at: datetime | None = None

    def state(self, *, live: int) -> BackfillState:
        """Its state, given how many of its runs are ``live`` (not terminal)."""
        if self.cancelled_at is not None:
            return BackfillState.CANCELLED
        if live == 0:
            return BackfillState.FINISHED
        if self.paused:
            return BackfillState.PAUSED
        return BackfillState.RUNNING


LIVE_STATES = ("pending", "analyzing", "predicting", "settling")
"""Run states a run can still leave (:data:`retro.machine.LIVE`, as text)."""
FINISHED_STATES = ("done", "failed", "cancelled")
"""Run states a run ends in (:data:`retro.machine.TERMINAL`, as text)."""


@dataclass(frozen=True)
class Tally:
    """A backfill's runs counted by state (``backfill_runs`` grouped by its
    ``backfill_id`` and ``state``).

    Attributes:
        by_state: runs in each state that has any (run states as text).
    """

    by_state: Mapping[str, int] = field(default_factory=dict)

    def of(self, state: str) -> int:
        """Runs in ``state`` (0 if none)."""
        return self.by_state.get(state, 0)

    @property
    def seeded(self) -> int:
        """Every run the backfill seeded (re-armed ones count once)."""
        return sum(self.by_state.values())

    @property
    def done(self) -> int:
        """Runs that healed their match."""
        return self.of("done")

    @property
    def failed(self) -> int:
        """Runs that failed (``retro retry`` re-arms them)."""
        return self.of("failed")

    @property
    def cancelled(self) -> int:
        """Runs cancelled by an operator or by their match being called off."""
        return self.of("cancelled")

    @property
    def live(self) -> int:
        """Runs not yet ended: pending, analyzing, predicting or settling."""
        return sum(self.of(state) for state in LIVE_STATES)

    @property
    def finished(self) -> int:
        """Runs that ended: done, failed or cancelled."""
        return self.seeded - self.live

    @property
    def percent(self) -> float:
        """Progress in percent: :func:`percent_finished` of ``finished`` out of ``seeded``."""
        return percent_finished(self.finished, self.seeded)


def percent_finished(finished: int, total: int) -> float:
    """``100 * finished / total``, kept below 100 while a run is live: 100.0 exactly
    when ``finished == total`` (and ``total > 0``), at most 99.99 otherwise (so two
    decimals never round 9,999 of 10,000 up to 100); 0.0 without runs."""
    if total <= 0:
        return 0.0
    if finished >= total:
        return 100.0
    return min(100.0 * finished / total, 99.99)


@dataclass(frozen=True)
class Action:
    """One ``backfill_actions`` row: ``type`` done to ``backfill_id`` by ``by`` (an
    OS user) at ``at`` (aware UTC), with JSON-ready ``data``."""

    backfill_id: str
    type: ActionType
    by: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


def os_user() -> str:
    """The OS user running retro (``getpass.getuser``), or ``"unknown"`` when the
    environment and the password database name nobody (a container's bare uid)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
