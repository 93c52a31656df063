"""Faults for the reference workers: injected failures (chaos tests) and database outages.

Two things a worker of a real pipeline meets, made explicit:

* **Injected failures**, opt-in (``retro workers --fail-rate 0.1``, on the
  command line only): a job fails with :data:`INJECTED` with that
  probability. The draw is a hash of the job's id, BullMQ timestamp and
  ``attemptsMade``, not a random number, so it is reproducible: a job redelivered
  by BullMQ after a worker crash draws the same verdict, a new enqueue of the
  same job id (a new timestamp) draws anew.
* **Database outages**: a stage whose database is unreachable (a restart, a
  dropped connection) is retried with exponential backoff for up to
  :data:`DB_RETRY_SECONDS` before the job fails. A worker that cannot reach its
  database waits; it does not burn the run's attempt.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
    wait_random,
)

from retro.pipeline.stages import StageError
from retro.store.db import first_line, is_unreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

INJECTED = "injected failure"
"""The reason of every injected failure (BullMQ's ``failedReason``, the journal's error)."""

DB_RETRY_SECONDS = 60.0
"""How long a stage keeps retrying an unreachable database before the job fails."""


class InjectedFailure(StageError):
    """A failure injected on purpose (``--fail-rate``); its message is :data:`INJECTED`."""

    def __init__(self) -> None:
        super().__init__(INJECTED)


def draw(job_id: str, job_timestamp: int, attempts_made: int = 0) -> float:
    """A number in ``[0, 1)`` fixed by the job's identity (SHA-256, not a random source).

    Args:
        job_id: BullMQ job id.
        job_timestamp: BullMQ ``timestamp`` of the job, in milliseconds.
        attempts_made: BullMQ ``attemptsMade`` (a BullMQ-level retry draws anew).
    """
    key = f"{job_id}\x00{job_timestamp}\x00{attempts_made}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def should_fail(rate: float, job_id: str, job_timestamp: int, attempts_made: int = 0) -> bool:
    """True when the job must fail with :data:`INJECTED` at failure ``rate`` (0 to 1)."""
    return rate > 0 and draw(job_id, job_timestamp, attempts_made) < rate


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "database unreachable (%s); retry %d in %.1f s",
        first_line(error) if error is not None else "no error",
        state.attempt_number,
        wait,
    )


async def with_db_retry(
    call: Callable[[], Awaitable[T]], *, max_seconds: float = DB_RETRY_SECONDS
) -> T:
    """Await ``call()``; while it fails because the database is unreachable, retry it
    with exponential backoff (0.2 s doubling to 5 s, jittered) for up to ``max_seconds``.

    ``call`` must be safe to repeat (every stage is idempotent). Other errors
    propagate at once.

    Raises:
        Exception: the last error once ``max_seconds`` have passed, or any
            error that is not a lost or refused database connection.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception(is_unreachable),
        stop=stop_after_delay(max_seconds),
        wait=wait_exponential(multiplier=0.2, max=5.0) + wait_random(0, 0.2),
        before_sleep=_log_retry,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
