"""What a decision reads: :class:`Facts` (what the database and the queue show for
a run's match), :class:`Policy` (retry and budget rules), and the guards read from
them (settlement, a phase's data, a match's ``external_id``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from retro import jobids
from retro.events import Phase
from retro.machine.jobs import JobView
from retro.machine.states import SETTLED_STATUSES
from retro.stages import JOB_ID_FORMATS, QUEUE_WAIT_BUDGET, STAGES
from retro.text import escape


@dataclass(frozen=True)
class Facts:
    """What the database and the queue show for a run's match, at one instant.

    ``predictions_found`` counts expected models that have a prediction (by
    model, not rows); ``unscored`` counts the match's ``pending`` predictions.
    """

    match_found: bool
    match_status: str | None = None
    home_score: int | None = None
    away_score: int | None = None
    has_analysis: bool = False
    predictions_found: int = 0
    predictions_expected: int = 0
    unscored: int = 0
    job: JobView | None = None
    workers: int | None = None
    """Workers consuming the job's queue (``None``: not looked up)."""
    queue_paused: bool | None = None
    """The job's queue is paused (``None``: not looked up)."""
    has_external_id: bool = True
    """The match's ``external_id`` names something (:func:`has_external_id`): the
    analysis worker can look the match up. ``True`` when not looked up."""
    backfill_paused: bool = False
    """The run's backfill is paused (``retro pause --backfill``): the run starts no
    new job (no ``…Requested``, no ``JobReenqueued``); a job it already has is
    still judged (:func:`retro.machine.decide`)."""


@dataclass(frozen=True)
class Policy:
    """Retry and budget rules: seconds throughout; job ids per phase from templates.

    ``job_ids`` maps a phase to a template with ``{matchId}``, e.g.
    ``analyze-retro-{matchId}`` (DESIGN §1); the match id goes in encoded
    (:func:`retro.jobids.encode`: ``%``, ``:`` and control characters as ``%XX``).
    ``budgets`` are start-to-close, ``queue_wait_budgets`` schedule-to-start
    (DESIGN §3); a job over its schedule-to-start budget costs an attempt only with
    ``queue_wait_charged``.
    ``max_reenqueues`` bounds the re-adds of a lost job in a row.
    ``require_external_id``: a match with no ``external_id`` is never sent to the
    analysis worker; its run fails at once (:data:`NO_EXTERNAL_ID`).
    """

    max_attempts: int = 3
    require_external_id: bool = True
    max_reenqueues: int = 3
    queue_wait_charged: bool = False
    queue_wait_budgets: Mapping[Phase, float] = field(
        default_factory=lambda: dict.fromkeys(Phase, QUEUE_WAIT_BUDGET)
    )
    retry_backoff: float = 5.0
    budgets: Mapping[Phase, float] = field(
        default_factory=lambda: {phase: stage.timeout for phase, stage in STAGES.items()}
    )
    job_ids: Mapping[Phase, str] = field(default_factory=lambda: dict(JOB_ID_FORMATS))

    def job_id(self, phase: Phase, match_id: str) -> str:
        """The deterministic job id of ``phase`` for ``match_id`` (encoded:
        ``epl:2024:1`` → ``analyze-retro-epl%3A2024%3A1``)."""
        return jobids.job_id(self.job_ids[phase], match_id)

    def backoff(self, attempt: int) -> timedelta:
        """Delay before attempt ``attempt + 1``: ``retry_backoff · 2^(attempt-1)`` seconds,
        at most :data:`MAX_BACKOFF` (a long chain of attempts must not overflow)."""
        exponent = min(max(attempt - 1, 0), 64)
        return timedelta(seconds=min(self.retry_backoff * 2**exponent, MAX_BACKOFF))


MAX_BACKOFF = 86400.0
"""Longest retry back-off, seconds (a day), however many attempts came before."""

REASON_LIMIT = 500
"""Longest failure reason kept in events and the projection (characters)."""


def clip(reason: str) -> str:
    """``reason`` on one line, at most :data:`REASON_LIMIT` characters: outer blanks
    stripped, line breaks and other control characters escaped visibly (``\\n``)."""
    one_line = escape(reason.strip())
    if len(one_line) <= REASON_LIMIT:
        return one_line
    return one_line[: REASON_LIMIT - 1] + "…"


NO_EXTERNAL_ID = "no external_id"
"""Why a match missing analysis cannot heal under ``require_external_id`` (shown as
``cannot heal: no external_id``)."""


def has_external_id(value: str | None) -> bool:
    """True when a match's ``external_id`` names something: not NULL, not blank."""
    return value is not None and value.strip() != ""


def cannot_heal(*, has_analysis: bool, external_id: bool, policy: Policy) -> str | None:
    """Why a run for a match could never heal, or ``None``: a match missing analysis
    with no ``external_id`` (``external_id``: :func:`has_external_id` of it) while
    ``policy.require_external_id`` is on gives :data:`NO_EXTERNAL_ID`."""
    if policy.require_external_id and not has_analysis and not external_id:
        return NO_EXTERNAL_ID
    return None


def settleable(facts: Facts) -> str | None:
    """``None`` if the match can be settled, else why not (DESIGN §3 guard)."""
    if facts.match_status not in SETTLED_STATUSES:
        return f"match not finished (status {facts.match_status})"
    if facts.home_score is None or facts.away_score is None:
        return f"match {facts.match_status} but its score is not set"
    return None


def phase_done(phase: Phase, facts: Facts) -> bool:
    """True when the database shows ``phase``'s data (DESIGN §3: the data decides)."""
    if phase is Phase.ANALYSIS:
        return facts.has_analysis
    if phase is Phase.PREDICTIONS:
        return facts.predictions_found >= facts.predictions_expected
    return settleable(facts) is None and facts.unscored == 0


def no_external_id_reason(match_id: str) -> str:
    """The ``RunFailed`` reason of a match the analysis worker cannot look up."""
    return (
        f"cannot heal: match {match_id} has no external_id, which its analysis worker "
        "needs to look the match up (set require_external_id = false if the host's does not)"
    )
