"""The BullMQ adapter on a real Redis (DESIGN §1, §4): payloads, dedup, stale jobs.

Jobs are processed by real ``bullmq.Worker``s on the test's own key prefix.
Every Worker and Queue opened here is closed (``filterwarnings = error``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from bullmq import Job, Worker
from redis.asyncio import Redis

from retro.events import Phase
from retro.queue import (
    JOB_ID_FORMATS,
    JobOptions,
    Queues,
    RedisUnreachable,
    analysis_payload,
    predictions_payload,
    settlement_payload,
)
from tests.conftest import Backend, close_worker, eventually

NAMES = {
    Phase.ANALYSIS: "analysis-queue",
    Phase.PREDICTIONS: "predictions-queue",
    Phase.SETTLEMENT: "settlement-queue",
}
Processor = Callable[[Job, str], Awaitable[Any]]


@pytest.fixture
async def redis(backend: Backend) -> AsyncIterator[Redis]:
    """A plain client on the test's Redis; the test's keys are deleted afterwards."""
    client = Redis.from_url(backend.redis_url, decode_responses=True)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{backend.prefix}:*", count=500)]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def queues(backend: Backend, redis: Redis) -> AsyncIterator[Queues]:
    async with Queues(
        backend.redis_url, prefix=backend.prefix, names=NAMES, options=JobOptions()
    ) as adapter:
        yield adapter


@pytest.fixture
async def start_worker(backend: Backend) -> AsyncIterator[Callable[[Phase, Processor], Worker]]:
    """Start a real bullmq Worker on a queue of the test's prefix; closed at teardown."""
    workers: list[Worker] = []

    def start(phase: Phase, processor: Processor) -> Worker:
        worker = Worker(
            NAMES[phase],
            processor,
            {"connection": backend.redis_url, "prefix": backend.prefix, "drainDelay": 1},
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        if not worker.closed:
            await worker.close(force=True)  # a failed test may leave a job hanging


async def raw_job(redis: Redis, backend: Backend, phase: Phase, job_id: str) -> dict[str, str]:
    """The job's Redis hash as BullMQ (and the host's Node workers) read it."""
    return await redis.hgetall(f"{backend.prefix}:{NAMES[phase]}:{job_id}")


async def state_is(queues: Queues, phase: Phase, job_id: str, *states: str) -> bool:
    return (await queues.job_view(phase, job_id)).state in states


# --- payloads and dedup -------------------------------------------------------------


async def test_enqueue_writes_the_host_payloads_once(
    queues: Queues, redis: Redis, backend: Backend
) -> None:
    expected = {
        Phase.ANALYSIS: (
            "analyze-retro-m1",
            "analyze-match",
            analysis_payload("m1", "ext-1", "Home FC", "Away FC"),
            {
                "matchId": "m1",
                "externalId": "ext-1",
                "homeTeam": "Home FC",
                "awayTeam": "Away FC",
                "allowRetroactive": True,
            },
        ),
        Phase.PREDICTIONS: (
            "predict-retro-m1",
            "predict-match",
            predictions_payload("m1"),
            {"matchId": "m1", "attempt": 1, "skipIfDone": True, "allowRetroactive": True},
        ),
        Phase.SETTLEMENT: (
            "settle-retro-m1",
            "settle-match",
            settlement_payload("m1", 2, 1, "finished"),
            {"matchId": "m1", "homeScore": 2, "awayScore": 1, "status": "finished"},
        ),
    }
    for phase, (job_id, name, payload, shape) in expected.items():
        assert JOB_ID_FORMATS[phase].format(matchId="m1") == job_id
        assert payload == shape
        await queues.enqueue(phase, job_id, payload)
        # The same id again, with other data: BullMQ keeps the first job only.
        await queues.enqueue(phase, job_id, {**payload, "matchId": "other"})
        counts = await queues.queue(phase).getJobCounts()
        assert sum(counts.values()) == 1, counts
        view = await queues.job_view(phase, job_id)
        assert view.state == "prioritized"  # waiting, ordered by priority
        assert view.created_at is not None and view.processed_at is None
        raw = await raw_job(redis, backend, phase, job_id)
        assert raw["name"] == name
        assert json.loads(raw["data"]) == shape
        assert list(json.loads(raw["data"])) == list(shape)  # key order as the original
        opts = json.loads(raw["opts"])
        assert opts["priority"] == 3
        assert raw["priority"] == "3"
        assert opts.get("delay", 0) == 0 and raw.get("delay", "0") == "0"
        assert opts["attempts"] == 1
        assert "backoff" not in opts
    # Settlement of a match without a score still carries the keys, as null.
    assert settlement_payload("m2", None, None, "live") == {
        "matchId": "m2",
        "homeScore": None,
        "awayScore": None,
        "status": "live",
    }


async def test_attempts_and_backoff_are_configurable(backend: Backend, redis: Redis) -> None:
    options = JobOptions(priority=3, attempts=4, backoff_ms=2500)
    async with Queues(
        backend.redis_url, prefix=backend.prefix, names=NAMES, options=options
    ) as adapter:
        await adapter.enqueue(Phase.PREDICTIONS, "predict-retro-m1", predictions_payload("m1"))
    opts = json.loads(
        (await raw_job(redis, backend, Phase.PREDICTIONS, "predict-retro-m1"))["opts"]
    )
    assert opts["attempts"] == 4
    assert opts["backoff"] == {"type": "exponential", "delay": 2500}
    assert opts["priority"] == 3
    assert opts.get("delay", 0) == 0


async def test_job_view_of_a_missing_job_is_unknown(queues: Queues) -> None:
    for phase in Phase:
        view = await queues.job_view(phase, "analyze-retro-nope")
        assert view.state == "unknown"
        assert (view.created_at, view.processed_at, view.finished_at) == (None, None, None)


# --- stale jobs, adoption, removal ----------------------------------------------------


async def test_clear_stale_removes_finished_jobs_and_adopts_waiting_ones(
    queues: Queues, start_worker: Callable[[Phase, Processor], Worker]
) -> None:
    phase = Phase.ANALYSIS

    async def process(job: Job, token: str) -> Any:
        if job.data["matchId"] == "bad":
            raise RuntimeError("provider quota exceeded")
        return {"ok": job.data["matchId"]}

    await queues.enqueue(phase, "analyze-retro-good", analysis_payload("good", None, "A", "B"))
    await queues.enqueue(phase, "analyze-retro-bad", analysis_payload("bad", None, "A", "B"))
    worker = start_worker(phase, process)
    await eventually(lambda: state_is(queues, phase, "analyze-retro-good", "completed"))
    await eventually(lambda: state_is(queues, phase, "analyze-retro-bad", "failed"))
    await close_worker(worker)

    failed = await queues.job_view(phase, "analyze-retro-bad")
    assert failed.failed_reason == "provider quota exceeded"
    assert failed.processed_at is not None and failed.finished_at is not None
    # Without the cleanup a new add is dropped as a duplicate: the old job stays.
    await queues.enqueue(phase, "analyze-retro-good", analysis_payload("good", None, "A", "B"))
    assert (await queues.job_view(phase, "analyze-retro-good")).state == "completed"

    await queues.enqueue(phase, "analyze-retro-waits", analysis_payload("waits", None, "A", "B"))
    waiting = await queues.job_view(phase, "analyze-retro-waits")

    for job_id in ("analyze-retro-good", "analyze-retro-bad"):
        assert (await queues.clear_stale(phase, job_id)).state == "unknown"
        assert (await queues.job_view(phase, job_id)).state == "unknown"
        assert await queues.queue(phase).getJob(job_id) is None
    adopted = await queues.clear_stale(phase, "analyze-retro-waits")
    assert adopted == waiting
    assert adopted.state == "prioritized"
    assert await queues.job_view(phase, "analyze-retro-waits") == waiting
    assert (await queues.clear_stale(phase, "analyze-retro-never")).state == "unknown"

    # After the cleanup the same id is a fresh job again.
    await queues.enqueue(phase, "analyze-retro-good", analysis_payload("good", None, "A", "B"))
    fresh = await queues.job_view(phase, "analyze-retro-good")
    assert fresh.state == "prioritized"
    assert fresh.processed_at is None and fresh.finished_at is None


async def test_remove_unstarted_removes_waiting_jobs_and_refuses_active_ones(
    queues: Queues, start_worker: Callable[[Phase, Processor], Worker]
) -> None:
    phase = Phase.PREDICTIONS
    await queues.enqueue(phase, "predict-retro-w", predictions_payload("w"))
    assert await queues.remove_unstarted(phase, "predict-retro-w") is True
    assert (await queues.job_view(phase, "predict-retro-w")).state == "unknown"
    assert await queues.remove_unstarted(phase, "predict-retro-w") is False

    started, release = asyncio.Event(), asyncio.Event()

    async def process(job: Job, token: str) -> str:
        started.set()
        await release.wait()
        return "done"

    await queues.enqueue(phase, "predict-retro-a", predictions_payload("a"))
    start_worker(phase, process)
    await asyncio.wait_for(started.wait(), timeout=20)
    assert (await queues.job_view(phase, "predict-retro-a")).state == "active"
    assert await queues.remove_unstarted(phase, "predict-retro-a") is False
    active = await queues.job_view(phase, "predict-retro-a")
    assert active.state == "active"
    assert active.processed_at is not None
    release.set()
    await eventually(lambda: state_is(queues, phase, "predict-retro-a", "completed"))
    assert await queues.remove_unstarted(phase, "predict-retro-a") is False
    assert (await queues.job_view(phase, "predict-retro-a")).state == "completed"


# --- workers, events, health ----------------------------------------------------------


async def test_worker_count_follows_running_workers(
    queues: Queues, start_worker: Callable[[Phase, Processor], Worker]
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def process(job: Job, token: str) -> None:
        started.set()
        await release.wait()

    for phase in Phase:
        assert await queues.worker_count(phase) == 0
    worker = start_worker(Phase.SETTLEMENT, process)
    await eventually(lambda: _equals(queues.worker_count(Phase.SETTLEMENT), 1))
    await asyncio.sleep(0.3)  # steady: the Worker counts once, not once per connection
    assert await queues.worker_count(Phase.SETTLEMENT) == 1
    assert await queues.worker_count(Phase.ANALYSIS) == 0
    assert await queues.worker_count(Phase.PREDICTIONS) == 0
    # A second Worker, one of the two busy with a job: two workers.
    other = start_worker(Phase.SETTLEMENT, process)
    await queues.enqueue(Phase.SETTLEMENT, "settle-retro-m1", settlement_payload("m1", 1, 0, "x"))
    await asyncio.wait_for(started.wait(), timeout=20)
    await eventually(lambda: _equals(queues.worker_count(Phase.SETTLEMENT), 2))
    await asyncio.sleep(0.3)
    assert await queues.worker_count(Phase.SETTLEMENT) == 2
    release.set()
    await close_worker(worker)
    await other.close()
    await eventually(lambda: _equals(queues.worker_count(Phase.SETTLEMENT), 0))


async def test_an_idle_worker_seen_only_by_its_script_connection_still_counts(
    backend: Backend, queues: Queues
) -> None:
    """An idle python-bullmq Worker drops its blocking connection for seconds at a
    time; its other connection, named alike, last ran a Lua script. That alone still
    shows a consumer: 1, not 0 (which would read as "no worker consuming")."""
    name = f"{backend.prefix}:{NAMES[Phase.PREDICTIONS]}"
    client = Redis.from_url(backend.redis_url)
    try:
        await client.client_setname(name)
        await client.eval("return 1", 0)  # its last command: a script, as BullMQ's are
        assert await queues.worker_count(Phase.PREDICTIONS) == 1
        assert await queues.worker_count(Phase.ANALYSIS) == 0
    finally:
        await client.aclose()
    # the server drops the connection a moment after the client closed it
    await eventually(lambda: _equals(queues.worker_count(Phase.PREDICTIONS), 0))


async def _equals(count: Awaitable[int], n: int) -> bool:
    return await count == n


async def _new_xread_clients(redis: Redis, known: set[str]) -> int:
    return sum(1 for c in await redis.client_list() if c["cmd"] == "xread" and c["id"] not in known)


async def test_watch_reports_completed_and_failed_jobs(
    queues: Queues,
    redis: Redis,
    start_worker: Callable[[Phase, Processor], Worker],
) -> None:
    finished: list[str] = []
    known = {c["id"] for c in await redis.client_list()}
    queues.watch(finished.append)
    # QueueEvents read from "now": wait until all three listeners block on XREAD.
    await eventually(lambda: _at_least(_new_xread_clients(redis, known), 3))

    async def process(job: Job, token: str) -> str:
        if job.data["matchId"] == "bad":
            raise RuntimeError("no data")
        return "ok"

    await queues.enqueue(Phase.SETTLEMENT, "settle-retro-ok", settlement_payload("ok", 1, 0, "x"))
    await queues.enqueue(
        Phase.ANALYSIS, "analyze-retro-bad", analysis_payload("bad", None, "A", "B")
    )
    start_worker(Phase.SETTLEMENT, process)
    start_worker(Phase.ANALYSIS, process)
    await eventually(lambda: {"settle-retro-ok", "analyze-retro-bad"} <= set(finished))
    assert sorted(finished) == ["analyze-retro-bad", "settle-retro-ok"]


async def test_watch_hears_a_job_that_finishes_after_an_idle_spell(
    queues: Queues,
    redis: Redis,
    start_worker: Callable[[Phase, Processor], Worker],
) -> None:
    """QueueEvents block well inside the connection's read timeout: no XREAD times
    out on an idle stream, so a job that finishes after 6 s of quiet (past redis-py's
    5 s read timeout; BullMQ's default block is 10 s) is heard at once. With the
    default block it was heard after a retry back-off, or, before the first event,
    not at all (the retry read from ``$`` again)."""
    finished: list[str] = []
    known = {c["id"] for c in await redis.client_list()}
    queues.watch(finished.append)
    await eventually(lambda: _at_least(_new_xread_clients(redis, known), 3))
    for events in queues._events:
        timeout = events.client.connection_pool.connection_kwargs.get("socket_timeout")
        assert timeout is None or events.opts["blockingTimeout"] / 1000 < timeout, timeout
    await asyncio.sleep(6)  # idle past the read timeout

    async def process(job: Job, token: str) -> str:
        return "ok"

    await queues.enqueue(
        Phase.SETTLEMENT, "settle-retro-late", settlement_payload("late", 1, 0, "x")
    )
    start_worker(Phase.SETTLEMENT, process)
    await eventually(lambda: "settle-retro-late" in finished, timeout=3)


async def _at_least(count: Awaitable[int], n: int) -> bool:
    return await count >= n


async def test_check_accepts_a_noeviction_redis(queues: Queues, redis: Redis) -> None:
    assert (await redis.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
    assert await queues.check() is None


async def test_check_masks_the_password_of_an_unreachable_redis() -> None:
    url = "redis://:secret@127.0.0.1:1/0"
    async with Queues(url, prefix="unused", names=NAMES, options=JobOptions()) as adapter:
        with pytest.raises(RedisUnreachable) as raised:
            await asyncio.wait_for(adapter.check(), timeout=30)
    message = str(raised.value)
    assert "secret" not in message
    assert "127.0.0.1:1" in message
    assert "***" in message
