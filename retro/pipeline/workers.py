"""BullMQ workers for the host's three queues: the reference pipeline's shell.

Each processor validates the job's payload (the host's camelCase JSON, DESIGN
§1), reads the clock once, runs its stage (:mod:`retro.pipeline.stages`),
appends one row to ``pipeline_job_log`` whatever the outcome, and returns a
small JSON-able dict. Failures raise with a one-line reason, which BullMQ keeps
as the job's ``failedReason``. Every stage is idempotent, so a job that runs
twice changes nothing the second time.

Faults (:mod:`retro.pipeline.faults`): with a ``fail_rate`` a job fails with
``injected failure`` (journalled like any failure); a stage that loses its
database is retried with backoff instead of failing the job. A job BullMQ hands
out again for the same attempt (``attemptsMade``) although the journal already
holds its outcome (the worker died after the stage, before BullMQ recorded the
result) is not run again: it ends with the journalled outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from retro.events import Phase
from retro.pipeline import host
from retro.pipeline.faults import DB_RETRY_SECONDS, InjectedFailure, should_fail, with_db_retry
from retro.pipeline.host_rows import JobLogEntry
from retro.pipeline.stages import StageError, run_analysis, run_predictions, run_settlement
from retro.queue import consume
from retro.stages import JOB_NAMES, QUEUE_NAMES
from retro.store.db import create_engine

log = logging.getLogger(__name__)

ANALYZE_JOB = JOB_NAMES[Phase.ANALYSIS]
PREDICT_JOB = JOB_NAMES[Phase.PREDICTIONS]
SETTLE_JOB = JOB_NAMES[Phase.SETTLEMENT]
QUEUES: tuple[str, str, str] = (
    QUEUE_NAMES[Phase.ANALYSIS],
    QUEUE_NAMES[Phase.PREDICTIONS],
    QUEUE_NAMES[Phase.SETTLEMENT],
)


class PayloadError(StageError):
    """A job's payload is not what the host's workers accept; the message says which field."""


# --- payload validation ----------------------------------------------------------------


def _object(data: object) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise PayloadError(f"payload is {type(data).__name__}, expected a JSON object")
    return data


def _match_id(data: Mapping[str, Any]) -> str:
    value = data.get("matchId")
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"payload matchId must be a non-empty string, got {value!r}")
    return value


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"payload {key} must be a string or null, got {value!r}")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise PayloadError(f"payload {key} must be true or false, got {value!r}")
    return value


def _goals(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PayloadError(f"payload {key} must be a non-negative integer or null, got {value!r}")
    return value


def _attempt(data: Mapping[str, Any]) -> None:
    value = data.get("attempt", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PayloadError(f"payload attempt must be a positive integer, got {value!r}")


# --- processors ------------------------------------------------------------------------

Stage = Callable[[Mapping[str, Any], datetime], Awaitable[dict[str, Any]]]


class ReferenceWorkers:
    """The three processors, bound to one host database engine."""

    def __init__(
        self,
        engine: host.HostEngine,
        queues: tuple[str, str, str] = QUEUES,
        *,
        fail_rate: float = 0.0,
        db_retry_seconds: float = DB_RETRY_SECONDS,
    ) -> None:
        """Bind the processors to ``engine`` (the caller disposes of it).

        Args:
            engine: the host database.
            queues: the (analysis, predictions, settlement) queue names, for the journal.
            fail_rate: probability (0 to 1) that a job fails with ``injected failure``,
                drawn from the job's id, timestamp and attempts (0: never).
            db_retry_seconds: how long a stage retries an unreachable database.
        """
        self._engine = engine
        self._queues = dict(zip(("analysis", "predictions", "settlement"), queues, strict=True))
        self._fail_rate = fail_rate
        self._db_retry = db_retry_seconds

    async def analyze(self, job: Any, token: str) -> dict[str, Any]:
        """Process an ``analyze-match`` job: ``{matchId, externalId, homeTeam, awayTeam,
        allowRetroactive}``.

        Raises:
            StageError: bad payload or the stage refused (see :func:`run_analysis`).
        """

        async def stage(data: Mapping[str, Any], now: datetime) -> dict[str, Any]:
            match_id = _match_id(data)
            _optional_str(data, "externalId")
            teams = (_optional_str(data, "homeTeam"), _optional_str(data, "awayTeam"))
            retroactive = _flag(data, "allowRetroactive")
            return await run_analysis(
                self._engine, match_id, now=now, allow_retroactive=retroactive, teams=teams
            )

        return await self._execute("analysis", ANALYZE_JOB, job, stage)

    async def predict(self, job: Any, token: str) -> dict[str, Any]:
        """Process a ``predict-match`` job: ``{matchId, attempt, skipIfDone, allowRetroactive}``.

        ``attempt`` and ``skipIfDone`` are validated; existing predictions are
        always kept (``skipIfDone: false`` does not overwrite them).

        Raises:
            StageError: bad payload or the stage refused (see :func:`run_predictions`).
        """

        async def stage(data: Mapping[str, Any], now: datetime) -> dict[str, Any]:
            match_id = _match_id(data)
            _attempt(data)
            _flag(data, "skipIfDone")
            retroactive = _flag(data, "allowRetroactive")
            return await run_predictions(
                self._engine, match_id, now=now, allow_retroactive=retroactive
            )

        return await self._execute("predictions", PREDICT_JOB, job, stage)

    async def settle(self, job: Any, token: str) -> dict[str, Any]:
        """Process a ``settle-match`` job: ``{matchId, homeScore, awayScore, status}``.

        Raises:
            StageError: bad payload, match not final, or the stage refused
                (see :func:`run_settlement`).
        """

        async def stage(data: Mapping[str, Any], now: datetime) -> dict[str, Any]:
            match_id = _match_id(data)
            status = data.get("status")
            if not isinstance(status, str):
                raise PayloadError(f"payload status must be a string, got {status!r}")
            return await run_settlement(
                self._engine,
                match_id,
                home_score=_goals(data, "homeScore"),
                away_score=_goals(data, "awayScore"),
                status=status,
                now=now,
            )

        return await self._execute("settlement", SETTLE_JOB, job, stage)

    async def _execute(self, phase: str, name: str, job: Any, stage: Stage) -> dict[str, Any]:
        started = datetime.now(UTC)
        data = job.data
        match_id = data.get("matchId") if isinstance(data, dict) else None
        earlier = await self._journalled(job, match_id)
        if earlier is not None:
            log.warning(
                "job %s (timestamp %s, attempt %s) redelivered after its outcome %r was "
                "journalled: not run again",
                job.id,
                job.timestamp,
                job.attemptsMade,
                earlier,
            )
            if earlier != "ok":
                raise StageError(earlier.removeprefix("error: "))
            return {"written": 0, "redelivered": True}
        try:
            if job.name != name:
                raise PayloadError(f"job name {job.name!r} on the {phase} queue, expected {name!r}")
            if should_fail(self._fail_rate, str(job.id), int(job.timestamp), int(job.attemptsMade)):
                raise InjectedFailure()
            payload = _object(data)
            result = await with_db_retry(
                lambda: stage(payload, started), max_seconds=self._db_retry
            )
        except Exception as exc:
            reason = _one_line(exc)
            await self._journal(phase, job, match_id, started, f"error: {reason}")
            if isinstance(exc, StageError):
                raise
            raise StageError(reason) from exc
        await self._journal(phase, job, match_id, started, "ok")
        return result

    async def _journal(
        self, phase: str, job: Any, match_id: Any, started: datetime, outcome: str
    ) -> None:
        entry = JobLogEntry(
            queue=self._queues[phase],
            job_name=str(job.name),
            job_id=str(job.id),
            job_timestamp=int(job.timestamp),
            match_id=match_id if isinstance(match_id, str) else None,
            attempts_made=int(job.attemptsMade),
            started_at=started,
            outcome=outcome,
        )
        try:
            await with_db_retry(
                lambda: host.log_job(self._engine, entry), max_seconds=self._db_retry
            )
        except Exception as exc:  # the journal must never turn a success into a failure
            log.warning("could not journal job %s: %s", job.id, _one_line(exc))

    async def _journalled(self, job: Any, match_id: Any) -> str | None:
        """The journalled outcome of this very delivery (job id, timestamp and
        ``attemptsMade``), or None when it has not run to the end before."""
        if not isinstance(match_id, str):
            return None
        try:
            entries = await with_db_retry(
                lambda: host.job_log(self._engine, match_id=match_id), max_seconds=self._db_retry
            )
        except Exception as exc:  # cannot tell: run it (every stage is idempotent)
            log.warning("could not read the journal for job %s: %s", job.id, _one_line(exc))
            return None
        for entry in entries:
            if (entry.job_id, entry.job_timestamp, entry.attempts_made) == (
                str(job.id),
                int(job.timestamp),
                int(job.attemptsMade),
            ):
                return entry.outcome
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- running --------------------------------------------------------------------------


async def run_workers(
    database_url: str,
    redis_url: str,
    *,
    prefix: str = "bull",
    queues: tuple[str, str, str] = QUEUES,
    stop: asyncio.Event,
    concurrency: int = 1,
    fail_rate: float = 0.0,
    lock_duration: float = 30.0,
) -> None:
    """Consume the three queues until ``stop`` is set, then close the workers cleanly.

    Jobs being processed when ``stop`` is set are finished first.

    Args:
        database_url: the host database (``sqlite+aiosqlite://…`` or ``postgresql+psycopg://…``).
        redis_url: ``redis://``, ``rediss://`` or ``unix://`` URL of the BullMQ Redis.
        prefix: BullMQ key prefix.
        queues: the (analysis, predictions, settlement) queue names.
        stop: set it to shut down.
        concurrency: jobs in parallel per queue.
        fail_rate: probability (0 to 1) that a job fails with ``injected failure``.
        lock_duration: BullMQ job lock, in seconds; a job whose worker died is handed
            out again after one to two lock durations (BullMQ's stalled-job check).

    Raises:
        RuntimeError: a worker's loop ended before ``stop`` was set.
    """
    engine = create_engine(database_url)
    processors = ReferenceWorkers(engine, queues, fail_rate=fail_rate)
    handlers = (processors.analyze, processors.predict, processors.settle)
    try:
        await consume(
            redis_url,
            prefix=prefix,
            handlers=dict(zip(queues, handlers, strict=True)),
            concurrency=concurrency,
            stop=stop,
            name="retro-reference",
            lock_duration=lock_duration,
        )
    finally:
        await engine.dispose()
