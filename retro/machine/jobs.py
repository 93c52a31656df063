"""What BullMQ says of a run's job (DESIGN §4): its state and what that state means
for the run, and why a job no worker has taken still waits (schedule-to-start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class JobState(StrEnum):
    """A BullMQ job state, as ``getState`` names it (``unknown``: in no state list)."""

    COMPLETED = "completed"
    FAILED = "failed"
    DELAYED = "delayed"
    PRIORITIZED = "prioritized"
    ACTIVE = "active"
    WAITING = "waiting"
    WAITING_CHILDREN = "waiting-children"
    UNKNOWN = "unknown"


class JobMeaning(StrEnum):
    """What a job state means for the run waiting on it."""

    PROGRESSING = "progressing"  # a worker holds it
    WAITING = "waiting"  # queued for a consumer (or its children, or its delay)
    FINISHED = "finished"  # completed or failed: an outcome to judge
    LOST = "lost"  # BullMQ does not hold it in any state: enqueue it again


MEANING: Mapping[JobState, JobMeaning] = {
    JobState.ACTIVE: JobMeaning.PROGRESSING,
    JobState.WAITING: JobMeaning.WAITING,
    JobState.PRIORITIZED: JobMeaning.WAITING,
    JobState.DELAYED: JobMeaning.WAITING,
    JobState.WAITING_CHILDREN: JobMeaning.WAITING,
    JobState.COMPLETED: JobMeaning.FINISHED,
    JobState.FAILED: JobMeaning.FINISHED,
    JobState.UNKNOWN: JobMeaning.LOST,
}
"""Every :class:`JobState` and its meaning (a test checks that none is missing)."""


class WaitReason(StrEnum):
    """Why a job no worker has taken is still waiting (schedule-to-start)."""

    NO_WORKER = "no-worker"
    PAUSED = "paused"
    CHILDREN = "waiting-children"
    UNKNOWN = "unknown"

    @property
    def text(self) -> str:
        """The reason in words, as ``status`` and the log show it."""
        return _WAIT_TEXT[self]


_WAIT_TEXT = {
    WaitReason.NO_WORKER: "no worker consuming it on this Redis database",
    WaitReason.PAUSED: "queue paused",
    WaitReason.CHILDREN: "waiting for children",
    WaitReason.UNKNOWN: "unknown",
}


@dataclass(frozen=True)
class JobView:
    """What BullMQ says of a job.

    ``created_at``/``processed_at``/``finished_at`` come from the job's
    ``timestamp``/``processedOn``/``finishedOn`` (milliseconds there, aware UTC here).
    ``orphaned``: the state is ``unknown`` but the job's hash is still in Redis
    (BullMQ issue 1644), which makes BullMQ ignore every ``add`` of that id.
    ``unrecognized``: the state string BullMQ gave when retro does not know it
    (``state`` is then ``waiting``). ``active_for`` (start-to-close) and
    ``waiting_for`` (schedule-to-start) are seconds, measured by the shell:
    since a worker took the job, and since it was requested while no worker has.
    """

    state: JobState
    created_at: datetime | None = None
    processed_at: datetime | None = None
    finished_at: datetime | None = None
    failed_reason: str | None = None
    orphaned: bool = False
    """The job's hash exists but its id is in no state list (BullMQ issue 1644)."""
    unrecognized: str | None = None
    """The state string BullMQ gave when retro does not know it (then ``state`` is
    waiting)."""
    unrecoverable: bool = False
    """A failed job whose worker threw BullMQ's ``UnrecoverableError`` (Node or Python):
    retrying it cannot succeed."""
    active_for: float | None = None
    """Seconds since a worker took the job (start-to-close), measured by the shell on
    clocks a jump of retro's wall clock cannot move (:mod:`retro.clock`); ``None``:
    not measured (then :func:`running_for` falls back on the timestamps)."""
    waiting_for: float | None = None
    """Seconds the job has waited for a worker since it was requested
    (schedule-to-start), measured like ``active_for``; ``None``: not measured."""

    @property
    def meaning(self) -> JobMeaning:
        """Whether the job is progressing, waiting, finished or lost; a state string
        retro does not know means waiting (never lost: no re-enqueue loop)."""
        return MEANING.get(self.state, JobMeaning.WAITING)


@dataclass(frozen=True)
class Waiting:
    """A job no worker has taken: on ``queue`` for ``seconds`` (schedule-to-start),
    ``reason`` why, against its ``budget`` (seconds)."""

    queue: str
    seconds: float
    reason: WaitReason
    budget: float

    @property
    def over_budget(self) -> bool:
        """The job has waited longer than its schedule-to-start budget."""
        return self.seconds > self.budget

    @property
    def notable(self) -> bool:
        """Worth telling the operator: a known blocker, or over budget."""
        return self.reason is not WaitReason.UNKNOWN or self.over_budget

    @property
    def text(self) -> str:
        """``waiting 12 min on analysis-queue: queue paused`` (seconds under a minute)."""
        span = f"{self.seconds:.0f} s" if self.seconds < 60 else f"{self.seconds // 60:.0f} min"
        return f"waiting {span} on {self.queue}: {self.reason.text}"


def why_waiting(
    job: JobView | None, *, workers: int | None, paused: bool | None
) -> WaitReason | None:
    """Why ``job`` still waits for a consumer, or ``None`` if it is not waiting
    (finished, lost, absent, or held by a worker). ``workers``/``paused`` as in
    :class:`Facts`. An active job on a queue with no worker left waits too: its
    worker died, and only a worker that comes back re-queues it (BullMQ's stalled
    check runs in workers), so it is shown as no worker, not timed out."""
    if job is None:
        return None
    if job.meaning is JobMeaning.PROGRESSING:
        return WaitReason.NO_WORKER if workers == 0 else None
    if job.meaning is not JobMeaning.WAITING:
        return None
    if job.state == JobState.WAITING_CHILDREN:
        return WaitReason.CHILDREN
    if paused:
        return WaitReason.PAUSED
    if workers == 0:
        return WaitReason.NO_WORKER
    return WaitReason.UNKNOWN
