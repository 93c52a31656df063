"""The events of a backfill run (DESIGN §3), past tense, and their stored form.

Each event is a frozen dataclass carrying the instant it happened (``at``,
aware UTC) and its data. ``to_record``/``from_record`` convert to and from the
``backfill_events`` row shape ``(type, data: dict, at)``; datetimes inside data
are ISO-8601 strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from retro.backfill import LEGACY_BACKFILL_ID


class Phase(StrEnum):
    """A stage of the host pipeline, as retro drives it."""

    ANALYSIS = "analysis"
    PREDICTIONS = "predictions"
    SETTLEMENT = "settlement"


class UnknownEvent(ValueError):
    """A stored event has a type or data this version of retro does not know."""


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event: ``at`` is when it happened (aware UTC)."""

    TYPE: ClassVar[str] = ""
    at: datetime

    def data(self) -> dict[str, Any]:
        """The event's data as JSON-ready values (without ``at``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "at":
                continue
            value = getattr(self, f.name)
            if value is None and f.default is None:
                continue  # optional and unset: stored events stay as they were
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, kw_only=True)
class RunSeeded(Event):
    """A gap was found and a run created for it (the gap facts as found), as part
    of the backfill ``backfill_id`` (:mod:`retro.backfill`)."""

    TYPE: ClassVar[str] = "RunSeeded"
    run_id: str
    match_id: str
    gaps: tuple[str, ...]
    found: int
    expected: int
    backfill_id: str = LEGACY_BACKFILL_ID
    """Upcast: a ``RunSeeded`` stored before backfills existed (migration 0005) has
    no ``backfill_id``; it replays as part of the legacy backfill, which the
    migration created for exactly those runs."""


@dataclass(frozen=True, kw_only=True)
class Requested(Event):
    """Intent to run a phase's job, committed before the job is enqueued (DESIGN §4)."""

    PHASE: ClassVar[Phase]
    job_id: str
    attempt: int
    adopted_created_at: datetime | None = None
    """Creation instant of a job with this id that was already queued or running
    when the intent was recorded, and was adopted instead of enqueued anew."""


@dataclass(frozen=True, kw_only=True)
class AnalysisRequested(Requested):
    """An analysis job is (about to be) enqueued."""

    TYPE: ClassVar[str] = "AnalysisRequested"
    PHASE: ClassVar[Phase] = Phase.ANALYSIS


@dataclass(frozen=True, kw_only=True)
class PredictionsRequested(Requested):
    """A predictions job is (about to be) enqueued."""

    TYPE: ClassVar[str] = "PredictionsRequested"
    PHASE: ClassVar[Phase] = Phase.PREDICTIONS


@dataclass(frozen=True, kw_only=True)
class SettlementRequested(Requested):
    """A settlement job is (about to be) enqueued."""

    TYPE: ClassVar[str] = "SettlementRequested"
    PHASE: ClassVar[Phase] = Phase.SETTLEMENT


@dataclass(frozen=True, kw_only=True)
class AnalysisSkipped(Event):
    """Analysis with a favourite already present: nothing to do."""

    TYPE: ClassVar[str] = "AnalysisSkipped"
    reason: str


@dataclass(frozen=True, kw_only=True)
class AnalysisCompleted(Event):
    """The database shows an analysis row with a favourite."""

    TYPE: ClassVar[str] = "AnalysisCompleted"


@dataclass(frozen=True, kw_only=True)
class PredictionsCompleted(Event):
    """Every expected model has its prediction (``found >= expected``)."""

    TYPE: ClassVar[str] = "PredictionsCompleted"
    found: int
    expected: int


@dataclass(frozen=True, kw_only=True)
class PredictionsShort(Event):
    """The predictions job completed but ``found < expected``: a retry, not a success."""

    TYPE: ClassVar[str] = "PredictionsShort"
    found: int
    expected: int
    job_created_at: datetime | None = None
    """Creation instant of the job judged (BullMQ ``timestamp``): identifies it."""


@dataclass(frozen=True, kw_only=True)
class SettlementSkipped(Event):
    """Match not settleable (not finished, or no score): predictions stay pending."""

    TYPE: ClassVar[str] = "SettlementSkipped"
    reason: str


@dataclass(frozen=True, kw_only=True)
class SettlementCompleted(Event):
    """Every prediction of the match is scored or void."""

    TYPE: ClassVar[str] = "SettlementCompleted"


@dataclass(frozen=True, kw_only=True)
class JobFailed(Event):
    """The phase's job failed, or completed without the data it should have written."""

    TYPE: ClassVar[str] = "JobFailed"
    phase: str
    reason: str
    job_created_at: datetime | None = None
    """Creation instant of the job judged (BullMQ ``timestamp``): identifies it."""


@dataclass(frozen=True, kw_only=True)
class PhaseTimedOut(Event):
    """A worker held the job longer than the phase budget (seconds, from ``processedOn``)."""

    TYPE: ClassVar[str] = "PhaseTimedOut"
    phase: str
    budget: float
    job_created_at: datetime | None = None
    """Creation instant of the job judged (BullMQ ``timestamp``): identifies it."""


@dataclass(frozen=True, kw_only=True)
class JobReenqueued(Event):
    """The phase's job was lost (BullMQ holds it in no state) and is enqueued again,
    an orphaned hash removed first; committed before the re-add (DESIGN §4.4).
    Costs no attempt; the re-adds in a row are bounded (``max_reenqueues``)."""

    TYPE: ClassVar[str] = "JobReenqueued"
    phase: str
    job_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class RetryScheduled(Event):
    """The phase will be requested again, not before ``not_before`` (aware UTC)."""

    TYPE: ClassVar[str] = "RetryScheduled"
    phase: str
    not_before: datetime


@dataclass(frozen=True, kw_only=True)
class RunFailed(Event):
    """The run gave up; ``reason`` says why."""

    TYPE: ClassVar[str] = "RunFailed"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunCancelled(Event):
    """The run was cancelled (by an operator, or the match was called off)."""

    TYPE: ClassVar[str] = "RunCancelled"
    reason: str


@dataclass(frozen=True, kw_only=True)
class RunCompleted(Event):
    """Every phase is done as the database shows it."""

    TYPE: ClassVar[str] = "RunCompleted"


@dataclass(frozen=True, kw_only=True)
class RunRearmed(Event):
    """An operator re-armed a failed run; it starts again from ``pending``."""

    TYPE: ClassVar[str] = "RunRearmed"


EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        RunSeeded,
        AnalysisRequested,
        AnalysisSkipped,
        AnalysisCompleted,
        PredictionsRequested,
        PredictionsCompleted,
        PredictionsShort,
        SettlementRequested,
        SettlementSkipped,
        SettlementCompleted,
        JobFailed,
        PhaseTimedOut,
        JobReenqueued,
        RetryScheduled,
        RunFailed,
        RunCancelled,
        RunCompleted,
        RunRearmed,
    )
}

REQUESTED: dict[Phase, type[Requested]] = {
    Phase.ANALYSIS: AnalysisRequested,
    Phase.PREDICTIONS: PredictionsRequested,
    Phase.SETTLEMENT: SettlementRequested,
}


def to_record(event: Event) -> tuple[str, dict[str, Any], datetime]:
    """``(type, data, at)`` for a ``backfill_events`` row."""
    return event.TYPE, event.data(), event.at


def from_record(type_: str, data: dict[str, Any], at: datetime) -> Event:
    """Rebuild an event from its stored row.

    Raises:
        UnknownEvent: ``type_`` is not an event of this version, or ``data``
            does not fit it.
    """
    cls = EVENT_TYPES.get(type_)
    if cls is None:
        raise UnknownEvent(f"unknown event type {type_!r}")
    kwargs: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(cls):
            if f.name == "at":
                continue
            if f.name not in data and f.default is not dataclasses.MISSING:
                continue  # a field added later, absent from older events
            kwargs[f.name] = _field_value(f.name, str(f.type), data[f.name])
        return cls(at=at, **kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownEvent(f"event {type_!r} has unusable data: {exc}") from None


def _field_value(name: str, type_: str, value: Any) -> Any:
    """``value`` (as stored in JSON) for a field of type ``type_``, checked: a value
    of the wrong kind (a text budget, a naive instant) would otherwise surface later
    as an error deep in the replay rather than as an unusable event.

    Raises:
        TypeError: ``value`` is not of the field's kind.
        ValueError: a datetime that is not ISO-8601 or has no offset.
    """
    if type_ == "datetime | None" and value is None:
        return None
    if type_ in ("datetime", "datetime | None"):
        if not isinstance(value, str):
            raise TypeError(f"{name} is not an ISO-8601 string")
        instant = datetime.fromisoformat(value)
        if instant.tzinfo is None:
            raise ValueError(f"{name} has no UTC offset")
        return instant
    if type_ == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} is not a list of strings")
        return tuple(value)
    if type_ == "str" and isinstance(value, str):
        return value
    if type_ == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if type_ == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{name} is not {type_}")


HANDOFF_TYPES: tuple[str, ...] = (
    "AnalysisCompleted",
    "AnalysisSkipped",
    "PredictionsCompleted",
    "SettlementCompleted",
    "SettlementSkipped",
)
"""Events that end a phase: a hand-off to the next stage. Every run that ends
``done`` has exactly three (one per phase)."""
