"""The host pipeline's three stages in one table (DESIGN §1 and §3).

Everything retro knows of a stage lives here, keyed by :class:`~retro.events.Phase`:
the queue it is sent to (and the setting that renames it), the job name, the default
job-id template, the payload the host's workers expect, what shows the stage done in
the host's data, and the default budgets. :mod:`retro.queue`, the facts query
(:mod:`retro.store.facts`), progress (:mod:`retro.progress`) and the settings
(:mod:`retro.config`) read this table, so a fourth stage starts here.

The module is pure (no Redis, no SQLAlchemy, no clock): the machine may import it.
The stored event names are not stage data: they stay in :mod:`retro.events`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from retro.events import Phase

QUEUE_WAIT_BUDGET = 600.0
"""Default schedule-to-start budget of every stage, seconds (setting
``queue_wait_budget``; each stage's ``{phase}_queue_wait_budget`` overrides it)."""


class MatchRow(Protocol):
    """What a payload is built from: the host's ``matches`` row of one match (read
    through :class:`retro.store.facts.MatchFacts`)."""

    @property
    def match_id(self) -> str: ...
    @property
    def external_id(self) -> str | None: ...
    @property
    def home_team(self) -> str | None: ...
    @property
    def away_team(self) -> str | None: ...
    @property
    def home_score(self) -> int | None: ...
    @property
    def away_score(self) -> int | None: ...
    @property
    def status(self) -> str | None: ...


def analysis_payload(
    match_id: str, external_id: str | None, home: str | None, away: str | None
) -> dict[str, Any]:
    """``analyze-match`` payload.

    ``{matchId, externalId, homeTeam, awayTeam, allowRetroactive: true}``.
    """
    return {
        "matchId": match_id,
        "externalId": external_id,
        "homeTeam": home,
        "awayTeam": away,
        "allowRetroactive": True,
    }


def predictions_payload(match_id: str) -> dict[str, Any]:
    """``predict-match`` payload: ``{matchId, attempt: 1, skipIfDone, allowRetroactive}``."""
    return {"matchId": match_id, "attempt": 1, "skipIfDone": True, "allowRetroactive": True}


def settlement_payload(
    match_id: str, home_score: int | None, away_score: int | None, status: str | None
) -> dict[str, Any]:
    """``settle-match`` payload: ``{matchId, homeScore, awayScore, status}``."""
    return {"matchId": match_id, "homeScore": home_score, "awayScore": away_score, "status": status}


@dataclass(frozen=True)
class Stage:
    """One stage of the host pipeline.

    Attributes:
        phase: the run phase that drives it.
        queue: the host's BullMQ queue name (default of setting :attr:`queue_setting`).
        job_name: the BullMQ job name the host's workers expect.
        job_id: the default deterministic job-id template, ``{matchId}`` once
            (setting :attr:`job_id_setting`).
        payload: the job's JSON payload (camelCase, byte-compatible with the host's
            Node workers) from the match's row.
        done: the fact that shows the stage done in the host's data, by its name in
            :class:`retro.store.facts.MatchFacts`; the SQL behind it is
            :data:`retro.store.facts.DONE_SQL` of the same name.
        timeout: default start-to-close budget, seconds (setting :attr:`timeout_setting`).
    """

    phase: Phase
    queue: str
    job_name: str
    job_id: str
    payload: Callable[[MatchRow], dict[str, Any]]
    done: str
    timeout: float

    @property
    def handoffs_left(self) -> int:
        """Hand-offs (phases finished) a run still needs on entering this stage: this
        one and every later one (3 for analysis, 1 for settlement)."""
        return len(STAGES) - list(STAGES).index(self.phase)

    @property
    def queue_setting(self) -> str:
        """The setting naming this stage's queue, e.g. ``analysis_queue``."""
        return f"{self.phase}_queue"

    @property
    def job_id_setting(self) -> str:
        """The setting holding this stage's job-id template, e.g. ``analysis_job_id``."""
        return f"{self.phase}_job_id"

    @property
    def timeout_setting(self) -> str:
        """The setting holding this stage's start-to-close budget, e.g. ``analysis_timeout``."""
        return f"{self.phase}_timeout"

    @property
    def queue_wait_setting(self) -> str:
        """The setting overriding this stage's schedule-to-start budget, e.g.
        ``analysis_queue_wait_budget`` (unset: :data:`QUEUE_WAIT_BUDGET`)."""
        return f"{self.phase}_queue_wait_budget"


def _stages(*stages: Stage) -> Mapping[Phase, Stage]:
    """The table keyed by phase, in pipeline order; every phase once."""
    table = {stage.phase: stage for stage in stages}
    assert list(table) == list(Phase), "one stage per phase, in Phase order"
    return table


STAGES: Mapping[Phase, Stage] = _stages(
    Stage(
        phase=Phase.ANALYSIS,
        queue="analysis-queue",
        job_name="analyze-match",
        job_id="analyze-retro-{matchId}",
        payload=lambda m: analysis_payload(m.match_id, m.external_id, m.home_team, m.away_team),
        done="has_analysis",
        timeout=120.0,
    ),
    Stage(
        phase=Phase.PREDICTIONS,
        queue="predictions-queue",
        job_name="predict-match",
        job_id="predict-retro-{matchId}",
        payload=lambda m: predictions_payload(m.match_id),
        done="found",
        timeout=300.0,
    ),
    Stage(
        phase=Phase.SETTLEMENT,
        queue="settlement-queue",
        job_name="settle-match",
        job_id="settle-retro-{matchId}",
        payload=lambda m: settlement_payload(m.match_id, m.home_score, m.away_score, m.status),
        done="unscored",
        timeout=60.0,
    ),
)
"""The three stages, keyed by phase, in pipeline order."""

JOB_NAMES: Mapping[Phase, str] = {phase: stage.job_name for phase, stage in STAGES.items()}
"""The BullMQ job name of each phase (``analyze-match``…)."""
JOB_ID_FORMATS: Mapping[Phase, str] = {phase: stage.job_id for phase, stage in STAGES.items()}
"""The default job-id templates (``analyze-retro-{matchId}``…); the effective ones
come from the settings (:func:`retro.queue.job_id_formats`)."""
QUEUE_NAMES: Mapping[Phase, str] = {phase: stage.queue for phase, stage in STAGES.items()}
"""The default queue names (``analysis-queue``…); the effective ones come from the
settings (:func:`retro.queue.queue_names`)."""
