"""The operator's read and control commands on real data: ``status`` (percent done,
ETA from the hand-off rate, ``--watch``, ``--json``), ``history``, ``verify --json``,
``start --json``/``--reprocess``, and ``cancel`` with a job really waiting (or
running) in BullMQ, on both backends. Runs are healed by the real daemon and the
reference workers, so timelines and hand-off rates are real."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from retro import commands
from retro.app import App
from retro.commands import cancel
from retro.config import Settings
from retro.events import HANDOFF_TYPES, Phase, RunCancelled
from retro.machine import TERMINAL, State
from retro.pipeline.workers import run_workers
from retro.queue import consume
from retro.report import cancel_json
from retro.scheduler import Daemon
from retro.store import runs
from tests.conftest import Backend
from tests.e2e.clirunner import Result, clean_env, invoke_retro, ok, one_error_line
from tests.e2e.hostdata import seed_host, upgrade_retro
from tests.healing import DEMO_NOW, heal_until_idle, seed_runs

pytestmark = pytest.mark.e2e

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STATES = ("pending", "analyzing", "predicting", "settling", "done", "failed", "cancelled")
LEFT = {"pending": 3, "analyzing": 3, "predicting": 2, "settling": 1}


def settings_for(backend: Backend, **more: Any) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        **more,
    )


def as_json(result: Result, schema: str) -> dict[str, Any]:
    """stdout parsed as one JSON document of ``schema`` (nothing else on stdout)."""
    document = json.loads(result.stdout)
    assert isinstance(document, dict), result
    assert document["schema"] == schema, document
    return document


def instant(text: str) -> datetime:
    assert ISO_Z.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def partial_heal(backend: Backend, *, done_at_least: int) -> None:
    """Heal with the real daemon and reference workers until ``done_at_least`` runs
    are done, stop the workers, then tick twice more: runs whose job finished move
    on and their next job stays waiting in BullMQ (no worker left)."""
    settings = settings_for(backend, max_in_flight=3, tick_interval=0.2)
    async with App(settings) as app:
        stop = asyncio.Event()
        workers = asyncio.create_task(
            run_workers(backend.database_url, app.redis_url, prefix=backend.prefix, stop=stop)
        )
        daemon = Daemon(app)
        try:
            deadline = time.monotonic() + 60
            while (await commands.status(app)).counts.get("done", 0) < done_at_least:
                assert time.monotonic() < deadline, "healing stalled"
                await daemon.run_once()
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await workers
        for _ in range(3):
            await daemon.run_once()


async def facts(backend: Backend) -> tuple[dict[str, int], int, list[datetime]]:
    """Runs by state, hand-offs the live runs still need (from the replayed runs),
    and the instants of every hand-off event (decoded from the log)."""
    async with App(settings_for(backend), redis=False) as app, app.engine.connect() as conn:
        counts: dict[str, int] = {}
        left = 0
        handoffs: list[datetime] = []
        for run_id in await runs.all_ids(conn):
            run = await runs.replay(conn, run_id)
            counts[str(run.state)] = counts.get(str(run.state), 0) + 1
            left += 0 if str(run.step) == "finished" else LEFT.get(str(run.state), 0)
            for event in await runs.events_of(conn, run_id):
                if event.TYPE in HANDOFF_TYPES:
                    handoffs.append(event.at)
        return counts, left, handoffs


async def waiting_jobs(backend: Backend) -> list[tuple[str, Phase, str]]:
    """(run id, phase, job id) of every live run whose job waits in BullMQ."""
    async with App(settings_for(backend)) as app:
        assert app.queues is not None
        found = []
        for item in (await commands.status(app)).in_flight:
            run = item.run
            if run.job_id and run.phase and item.job_state in ("waiting", "prioritized"):
                found.append((run.id, run.phase, run.job_id))
        return found


async def job_state(backend: Backend, phase: Phase, job_id: str) -> str:
    async with App(settings_for(backend)) as app:
        assert app.queues is not None
        return (await app.queues.job_view(phase, job_id)).state


async def snapshot(backend: Backend) -> dict[str, tuple[State, list[str], str | None]]:
    """Every run: (state, its event types in order, last error), in one connection."""
    async with App(settings_for(backend), redis=False) as app, app.engine.connect() as conn:
        found = {}
        for run_id in await runs.all_ids(conn):
            run = await runs.get(conn, run_id)
            assert run is not None
            events = await runs.events_of(conn, run_id)
            found[run_id] = (run.state, [e.TYPE for e in events], run.last_error)
        return found


async def run_state(backend: Backend, run_id: str) -> tuple[State, list[str], str | None]:
    return (await snapshot(backend))[run_id]


# --- status, history, verify, cancel after a real partial heal -----------------------


def test_operator_commands_after_a_partial_heal(tmp_path: Path, backend: Backend) -> None:
    env = backend.env()
    run_ids = asyncio.run(
        seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    )
    total = len(run_ids)

    # Before any hand-off: nothing done, ETA unknown.
    fresh = as_json(ok(invoke_retro("status", "--json", cwd=tmp_path, env=env)), "retro.status/1")
    assert fresh["counts"] == {s: (total if s == "pending" else 0) for s in STATES}
    assert fresh["progress"]["percent_done"] == 0.0
    assert fresh["progress"]["handoffs_in_window"] == 0
    assert fresh["progress"]["handoffs_per_minute"] is None
    assert fresh["progress"]["eta_seconds"] is None
    assert fresh["progress"]["handoffs_left"] == 3 * total
    text = ok(invoke_retro("status", cwd=tmp_path, env=env)).stdout
    assert f"Progress: 0/{total} runs done (0%" in text, text
    assert f"ETA unknown: no hand-off in the last 10 min ({3 * total} hand-offs left)" in text

    asyncio.run(partial_heal(backend, done_at_least=2))
    counts, left, handoffs = asyncio.run(facts(backend))
    waiting = asyncio.run(waiting_jobs(backend))
    assert waiting, "a job must be waiting in BullMQ for the cancel below"

    before = time.time()
    result = ok(invoke_retro("status", "--json", cwd=tmp_path, env=env))
    assert result.stderr.strip() == "", result  # stdout holds the JSON alone; no log lines
    doc = as_json(result, "retro.status/1")
    generated = instant(doc["generated_at"])
    assert abs(generated.timestamp() - before) < 30
    assert doc["counts"] == {s: counts.get(s, 0) for s in STATES}
    p = doc["progress"]
    done = counts.get("done", 0)
    assert p["total_runs"] == total and p["done"] == done
    assert p["live"] == total - done - counts.get("failed", 0) - counts.get("cancelled", 0)
    assert p["percent_done"] == round(100 * done / total, 2)
    assert p["handoffs_in_window"] == len(handoffs) >= 3 * done  # all within 10 min
    assert p["handoffs_left"] == left
    assert p["window_seconds"] == 600.0
    oldest = min(handoffs)
    assert 60.0 <= p["measured_over_seconds"] <= 600.0
    assert p["measured_over_seconds"] >= min((generated - oldest).total_seconds(), 600) - 0.01
    rate = p["handoffs_in_window"] / p["measured_over_seconds"] * 60
    assert p["handoffs_per_minute"] == pytest.approx(rate, rel=1e-3)
    assert p["eta_seconds"] == pytest.approx(left / rate * 60, rel=1e-3)
    # --eta-window: the hand-offs just made lie inside any window of a minute or more
    hour = as_json(
        ok(invoke_retro("status", "--json", "--eta-window", "3600", cwd=tmp_path, env=env)),
        "retro.status/1",
    )["progress"]
    assert hour["window_seconds"] == 3600.0 and hour["handoffs_in_window"] == len(handoffs)
    assert isinstance(doc["workers"], dict) and set(doc["workers"].values()) == {0}
    assert doc["database"] == {"reachable": True}
    assert doc["redis"] == {"reachable": True, "error": None}
    assert doc["failed"] == []
    assert {item["run_id"] for item in doc["in_flight"]} >= {w[0] for w in waiting}
    for item in doc["in_flight"]:
        assert set(item) == {
            "run_id",
            "match_id",
            "home_team",
            "away_team",
            "state",
            "phase",
            "attempt",
            "job_id",
            "job_state",
            "waiting_for_worker",
            "waiting",
            "since",
            "elapsed_seconds",
            "backfill_id",
            "held",
        }
        if item["job_state"] in ("waiting", "prioritized"):  # no worker runs here
            assert item["waiting"]["reason"] == "no-worker", item
            assert item["waiting"]["queue"] == item["waiting_for_worker"]
        assert item["phase"] in ("analysis", "predictions", "settlement")
        assert isinstance(item["elapsed_seconds"], float) and item["elapsed_seconds"] >= 0
        instant(item["since"])
        assert item["home_team"] and item["away_team"]

    text = ok(invoke_retro("status", cwd=tmp_path, env=env)).stdout
    percent = f"{100 * done / total:.0f}%"
    assert f"Progress: {done}/{total} runs done ({percent}); " in text, text
    assert "(percent done = done runs out of every stored run;" in text
    eta = re.search(
        r"ETA ~(\d+ s|\d+ min|\d+ h \d\d min) at (\d+\.\d) hand-offs/min over the last "
        r"(\d+ s|\d+ min) \((\d+) hand-offs left",
        text,
    )
    assert eta, text
    assert float(eta.group(2)) == pytest.approx(rate, abs=0.06)
    assert int(eta.group(4)) == left

    # history of a healed run: every event, times ascending, durations adding up.
    every = asyncio.run(snapshot(backend))
    healed = next(r for r in run_ids if every[r][0] is State.DONE)
    hist = as_json(
        ok(invoke_retro("history", healed, "--json", cwd=tmp_path, env=env)), "retro.history/1"
    )
    assert hist["resolved_as"] == "run" and hist["query"] == healed
    (entry,) = hist["runs"]
    _, types, _ = every[healed]
    assert [e["type"] for e in entry["events"]] == types
    assert types[0] == "RunSeeded" and types[-1] == "RunCompleted"
    assert [e["seq"] for e in entry["events"]] == list(range(1, len(types) + 1))
    assert entry["events"][0]["since_previous_seconds"] is None
    steps = [e["since_previous_seconds"] for e in entry["events"][1:]]
    assert all(isinstance(s, float) and s >= 0 for s in steps)
    assert entry["total_seconds"] == pytest.approx(sum(steps), abs=1e-4)
    first, last = instant(entry["events"][0]["at"]), instant(entry["events"][-1]["at"])
    assert entry["total_seconds"] == pytest.approx((last - first).total_seconds(), abs=1e-4)
    assert entry["state"] == "done" and entry["events"][0]["data"]["run_id"] == healed
    requested = [e for e in entry["events"] if e["type"].endswith("Requested")]
    assert all(e["data"]["job_id"].endswith(entry["match_id"]) for e in requested)
    text = ok(invoke_retro("history", healed, cwd=tmp_path, env=env)).stdout
    assert f"Run {healed} (match {entry['match_id']}): done, {len(types)} events over" in text
    for seq, kind in enumerate(types, 1):
        assert re.search(
            rf"^\W*{seq}\W+\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}\W.*{kind}", text, re.MULTILINE
        ), f"{seq} {kind} not in\n{text}"
    assert "Total: " in text
    # by match id: that match's runs, each with its timeline
    by_match = as_json(
        ok(invoke_retro("history", entry["match_id"], "--json", cwd=tmp_path, env=env)),
        "retro.history/1",
    )
    assert by_match["resolved_as"] == "match"
    assert [r["run_id"] for r in by_match["runs"]] == [healed]
    assert by_match["runs"][0]["events"] == entry["events"]
    one_error_line(invoke_retro("history", "no-such-id", cwd=tmp_path, env=env), "no-such-id")
    one_error_line(
        invoke_retro("history", healed, "--of", "match", cwd=tmp_path, env=env), healed, "match"
    )

    # verify --json
    audit = as_json(ok(invoke_retro("verify", "--json", cwd=tmp_path, env=env)), "retro.verify/1")
    assert audit["ok"] is True and audit["drifted"] == []
    assert audit["runs"] == total
    assert audit["events"] == sum(len(every[r][1]) for r in run_ids)

    # cancel a run whose job is waiting in BullMQ: the job is gone afterwards.
    victim, phase, job_id = waiting[0]
    assert asyncio.run(job_state(backend, phase, job_id)) in ("waiting", "prioritized")
    cancelled = ok(invoke_retro("cancel", victim, "--json", cwd=tmp_path, env=env))
    report = as_json(cancelled, "retro.cancel/1")
    (item,) = report["cancelled"]
    assert item["run_id"] == victim and item["job_id"] == job_id
    assert item["job_removed"] is True and item["job_state"] in ("waiting", "prioritized")
    assert item["phase"] == str(phase) and item["was_state"] in (
        "analyzing",
        "predicting",
        "settling",
    )
    assert report["ended_first"] == []
    assert asyncio.run(job_state(backend, phase, job_id)) == "unknown"
    state, types, reason = asyncio.run(run_state(backend, victim))
    assert state is State.CANCELLED and types[-1] == "RunCancelled"
    assert reason == "cancelled by operator"
    # the daemon leaves it alone: no event is appended, nothing re-enqueued
    asyncio.run(tick_twice(backend))
    assert asyncio.run(run_state(backend, victim))[1] == types
    assert asyncio.run(job_state(backend, phase, job_id)) == "unknown"

    # a terminal run is refused, nothing written; unknown ids likewise
    refused = invoke_retro("cancel", victim, cwd=tmp_path, env=env)
    one_error_line(refused, victim, "already cancelled")
    one_error_line(invoke_retro("cancel", healed, "nope", cwd=tmp_path, env=env), healed, "done")
    one_error_line(invoke_retro("cancel", "nope", cwd=tmp_path, env=env), "nope")
    assert asyncio.run(run_state(backend, victim))[1] == types

    # --all: every live run, text report
    live = [r for r, v in asyncio.run(snapshot(backend)).items() if v[0] not in TERMINAL]
    still_waiting = asyncio.run(waiting_jobs(backend))
    assert live and still_waiting, "cancel --all needs live runs and a waiting job to act on"
    every = ok(
        invoke_retro("cancel", "--all", "--reason", "maintenance window", cwd=tmp_path, env=env)
    )
    assert f"Cancelled {len(live)} runs." in every.stdout, every
    for run_id in live:
        assert f"Cancelled run {run_id} (match " in every.stdout, every
        assert asyncio.run(run_state(backend, run_id))[2] == "maintenance window"
    for run_id, phase, job_id in still_waiting:
        line = next(li for li in every.stdout.splitlines() if run_id in li)
        assert f"job {job_id} removed from its queue" in line, line
        assert asyncio.run(job_state(backend, phase, job_id)) == "unknown"
    after = as_json(ok(invoke_retro("status", "--json", cwd=tmp_path, env=env)), "retro.status/1")
    assert after["counts"]["cancelled"] == len(live) + 1
    assert after["progress"]["live"] == 0 and after["progress"]["eta_seconds"] == 0.0
    assert "ETA: nothing left to do" in ok(invoke_retro("status", cwd=tmp_path, env=env)).stdout
    none = ok(invoke_retro("cancel", "--all", cwd=tmp_path, env=env))
    assert none.stdout.strip() == "Cancelled 0 runs.", none
    assert (
        as_json(ok(invoke_retro("verify", "--json", cwd=tmp_path, env=env)), "retro.verify/1")["ok"]
        is True
    )

    # a match with two runs: history by match id lists both, newest first
    again = asyncio.run(reseed(backend))
    match_of = asyncio.run(matches_of(backend))
    match_id = match_of[victim]
    (newer,) = [r for r in again if match_of[r] == match_id]
    both = as_json(
        ok(invoke_retro("history", match_id, "--json", cwd=tmp_path, env=env)), "retro.history/1"
    )
    assert both["resolved_as"] == "match"
    assert [r["run_id"] for r in both["runs"]] == [newer, victim]
    assert [e["type"] for e in both["runs"][0]["events"]] == ["RunSeeded"]
    assert both["runs"][1]["events"][-1]["type"] == "RunCancelled"
    text = ok(invoke_retro("history", match_id, cwd=tmp_path, env=env)).stdout
    assert f"Match {match_id}: 2 runs, newest first" in text, text
    assert text.index(f"Run {newer} ") < text.index(f"Run {victim} "), text


async def matches_of(backend: Backend) -> dict[str, str]:
    """Run id -> match id, for every run."""
    async with App(settings_for(backend), redis=False) as app, app.engine.connect() as conn:
        return {r.id: r.match_id for r in await runs.list_runs(conn, limit=10_000)}


async def reseed(backend: Backend) -> list[str]:
    """``start --reprocess all`` over the demo's outage window: a new run per gap match."""
    async with App(settings_for(backend), redis=False) as app:
        report = await commands.start(
            app, days=14, now=datetime.now(UTC), until=DEMO_NOW, reprocess="all"
        )
        return report.seeded


async def tick_twice(backend: Backend) -> None:
    async with App(settings_for(backend)) as app:
        daemon = Daemon(app)
        await daemon.run_once()
        await daemon.run_once()


# --- cancel: an active job, and a daemon running beside it -----------------------------


async def test_cancel_leaves_an_active_job_running_and_the_daemon_ignores_it(
    tmp_path: Path, backend: Backend
) -> None:
    await seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    release, taken = asyncio.Event(), asyncio.Event()

    async def hold(job: Any, token: str) -> None:
        taken.set()
        await release.wait()

    async with App(settings_for(backend, max_in_flight=1)) as app:
        assert app.queues is not None
        daemon = Daemon(app)
        await daemon.run_once()
        (item,) = (await commands.status(app)).in_flight
        run, phase, job_id = item.run, item.run.phase, item.run.job_id
        assert phase is not None and job_id is not None
        stop = asyncio.Event()
        blocker = asyncio.create_task(
            consume(
                app.redis_url,
                prefix=backend.prefix,
                handlers={name: hold for name in app.queues.names.values()},
                concurrency=1,
                stop=stop,
                name="test-blocker",
            )
        )
        try:
            await asyncio.wait_for(taken.wait(), 20)
            assert (await app.queues.job_view(phase, job_id)).state == "active"
            result = await asyncio.to_thread(
                invoke_retro, "cancel", run.id, cwd=tmp_path, env=backend.env()
            )
            assert result.code == 0, result
            assert (
                f"Cancelled run {run.id} (match {run.match_id}, was {run.state}): job {job_id} "
                "is active and was left running" in result.stdout
            ), result
            assert "Cancelled 1 run." in result.stdout, result
            assert (await app.queues.job_view(phase, job_id)).state == "active"
            release.set()
            for _ in range(200):
                if (await app.queues.job_view(phase, job_id)).state == "completed":
                    break
                await asyncio.sleep(0.05)
            assert (await app.queues.job_view(phase, job_id)).state == "completed"
        finally:
            release.set()
            stop.set()
            await blocker
        async with app.engine.connect() as conn:
            before = await runs.events_of(conn, run.id)
        assert isinstance(before[-1], RunCancelled)
        assert before[-1].reason == "cancelled by operator"
        for _ in range(3):  # the finished job wakes nothing: the run is terminal
            report = await daemon.run_once()
            assert run.id not in {run_id for run_id, _ in report.events}
        async with app.engine.connect() as conn:
            assert await runs.events_of(conn, run.id) == before
            assert (await runs.get(conn, run.id)).state is State.CANCELLED  # type: ignore[union-attr]
            assert (await runs.audit(conn)).drifted == []


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_cancel_all_is_never_read_from_the_environment(tmp_path: Path, backend: Backend) -> None:
    """``RETRO_CANCEL_ALL=1`` (the variable ``--all`` once read) cancels nothing: without
    run ids it is a usage error, with one it is refused as an unknown variable."""
    run_ids = asyncio.run(
        seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    )
    env = {**backend.env(), "RETRO_CANCEL_ALL": "1"}
    one_error_line(invoke_retro("cancel", cwd=tmp_path, env=env), "run ids or --all")
    one_error_line(
        invoke_retro("cancel", run_ids[0], cwd=tmp_path, env=env),
        "unknown environment variable RETRO_CANCEL_ALL",
        "cancel --all only from the command line",
    )
    states = {state for state, _, _ in asyncio.run(snapshot(backend)).values()}
    assert states == {State.PENDING}, states


async def test_cancel_all_beside_a_running_daemon(tmp_path: Path, backend: Backend) -> None:
    """Cancel every live run while the daemon and workers heal: each run ends done or
    cancelled, nothing is appended after a RunCancelled, and the log replays clean."""
    run_ids = await seed_runs(
        backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix
    )
    settings = settings_for(backend, max_in_flight=2, tick_interval=0.1)
    async with App(settings) as app:
        stop = asyncio.Event()
        workers = asyncio.create_task(
            run_workers(backend.database_url, app.redis_url, prefix=backend.prefix, stop=stop)
        )
        daemon = asyncio.create_task(
            Daemon(app).run(until_idle=True, scan=False, handle_signals=False)
        )
        try:
            deadline = time.monotonic() + 30
            while (await commands.status(app)).counts.get("done", 0) < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            # a second App, as a separate `retro cancel` process would have
            async with App(settings_for(backend)) as operator:
                done = await cancel(operator, [], every_live=True, now=datetime.now(UTC))
            report = cancel_json(done)
            await asyncio.wait_for(daemon, 30)  # idle: every run ended
        finally:
            daemon.cancel()
            stop.set()
            await workers
        async with app.engine.connect() as conn:
            counts = await runs.counts_by_state(conn)
            assert set(counts) <= {"done", "cancelled"}, counts
            assert counts.get("cancelled", 0) == len(report["cancelled"]) > 0
            cancelled = {c["run_id"] for c in report["cancelled"]}
            ended = {e["run_id"] for e in report["ended_first"]}
            assert not cancelled & ended
            for run_id in run_ids:
                events = await runs.events_of(conn, run_id)
                stops = [i for i, e in enumerate(events) if isinstance(e, RunCancelled)]
                assert stops == ([len(events) - 1] if run_id in cancelled else []), run_id
            assert (await runs.audit(conn)).drifted == []


# --- status --watch --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_status_watch_refreshes_then_stops(tmp_path: Path, backend: Backend) -> None:
    run_ids = asyncio.run(
        seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    )
    env = backend.env()
    watched = ok(
        invoke_retro(
            "status", "--watch", "--interval", "0.1", "--count", "3", cwd=tmp_path, env=env
        )
    )
    out = watched.stdout
    assert re.search(r"retro status: refresh 3 at \d\d:\d\d:\d\d UTC, every 0.1 s", out), out
    assert re.search(rf"runs done .* 0/{len(run_ids)} +0% ETA unknown", out), out
    assert f"Progress: 0/{len(run_ids)} runs done" in out
    assert "ETA unknown" in out and "Redis: reachable" in out
    assert "watching status every 0.1 s" in watched.stderr
    # Redis down: the watch goes on, says so, and ends 1 like status
    down = invoke_retro(
        "status",
        "--watch",
        "--interval",
        "0.1",
        "--count",
        "2",
        cwd=tmp_path,
        env={**env, "RETRO_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert down.code == 1, down
    assert "refresh 2 at" in down.stdout and "Redis: UNREACHABLE" in down.stdout, down
    one_error_line(
        invoke_retro("status", "--watch", "--json", cwd=tmp_path, env=env), "--watch", "--json"
    )
    one_error_line(invoke_retro("status", "--count", "2", cwd=tmp_path, env=env), "--watch")


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_status_watch_ends_zero_on_ctrl_c(tmp_path: Path, backend: Backend) -> None:
    asyncio.run(seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix))
    proc = subprocess.Popen(
        [sys.executable, "-m", "retro", "status", "--watch", "--interval", "0.2"],
        cwd=tmp_path,
        env=clean_env(backend.env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while "watching status" not in proc.stderr.readline():
            assert time.monotonic() < deadline and proc.poll() is None, "watch did not start"
        time.sleep(0.7)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    refreshes = re.search(r"retro status: refresh (\d+) at", out)
    assert refreshes and int(refreshes.group(1)) >= 2, out
    assert "Progress: 0/" in out, out


# --- start --json, --reprocess; failures with reasons in status ------------------------


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_start_json_and_reprocess_failed(tmp_path: Path, backend: Backend) -> None:
    url, env = backend.database_url, backend.env()
    expect = seed_host(url)
    upgrade_retro(url)
    dry = ok(invoke_retro("start", "--days", "14", "--dry-run", "--json", cwd=tmp_path, env=env))
    doc = as_json(dry, "retro.start/1")
    assert dry.stderr.strip() == ""
    assert doc["dry_run"] is True and doc["seeded"] == []
    assert doc["would_seed"] == len(expect.gaps)
    since, until = instant(doc["window"]["since"]), instant(doc["window"]["until"])
    assert (until - since).days == 14
    assert {g["match_id"]: tuple(g["kinds"]) for g in doc["gaps"]} == expect.gaps
    assert doc["by_kind"] == expect.by_kind()
    assert doc["complete"] == len(expect.complete) and doc["blocked"] == 0
    for gap in doc["gaps"]:
        instant(gap["kickoff"])
        assert isinstance(gap["found"], int) and gap["expected"] == doc["expected_per_match"]
    assert asyncio.run(facts(backend))[0] == {}, "a dry run writes nothing"

    seeded = as_json(
        ok(invoke_retro("start", "--days", "14", "--json", cwd=tmp_path, env=env)), "retro.start/1"
    )
    assert seeded["dry_run"] is False and seeded["would_seed"] is None
    assert len(seeded["seeded"]) == len(expect.gaps)

    asyncio.run(fail_every_run(backend))
    counts = asyncio.run(facts(backend))[0]
    failed = counts.get("failed", 0)
    assert failed > 0, counts

    status = as_json(ok(invoke_retro("status", "--json", cwd=tmp_path, env=env)), "retro.status/1")
    assert len(status["failed"]) == failed
    for item in status["failed"]:
        assert "injected failure" in item["reason"], item
        instant(item["failed_at"])
    text = ok(invoke_retro("status", cwd=tmp_path, env=env)).stdout
    assert "Failed (most recent first)" in text and "injected failure" in text, text

    again = ok(invoke_retro("start", "--days", "14", cwd=tmp_path, env=env))
    assert "No runs seeded" in again.stdout, again
    reprocess = ok(
        invoke_retro("start", "--days", "14", "--reprocess", "failed", cwd=tmp_path, env=env)
    )
    assert f"Seeded {failed} run" in reprocess.stdout, reprocess
    assert asyncio.run(facts(backend))[0].get("pending") == failed
    none = ok(invoke_retro("start", "--days", "14", "--reprocess", "failed", cwd=tmp_path, env=env))
    assert "No runs seeded" in none.stdout, none
    assert f"{failed} gap match" in none.stdout, none


async def fail_every_run(backend: Backend) -> None:
    """The daemon with one attempt per phase and workers that fail every job."""
    settings = settings_for(backend, max_attempts=1, tick_interval=0.1)
    async with App(settings) as app:
        await heal_until_idle(
            app, database_url=backend.database_url, prefix=backend.prefix, timeout=60, fail_rate=1.0
        )


# --- status --json with Redis down ------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_status_json_with_redis_unreachable_exits_one(tmp_path: Path, backend: Backend) -> None:
    asyncio.run(seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix))
    env = {**backend.env(), "RETRO_REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"}
    result = invoke_retro("status", "--json", cwd=tmp_path, env=env)
    assert result.code == 1, result
    doc = as_json(result, "retro.status/1")
    assert doc["redis"]["reachable"] is False
    assert "unreachable" in doc["redis"]["error"] and "s3cret" not in result.output
    assert doc["database"] == {"reachable": True}
    assert doc["workers"] == {} and doc["counts"]["pending"] > 0


def test_cancel_log_lines_carry_the_run_fields(tmp_path: Path, backend: Backend) -> None:
    """``--log-format json``: cancel's line names run, match and event as fields."""
    run_ids = asyncio.run(
        seed_runs(backend.database_url, backend.redis_url, ["en.1"], prefix=backend.prefix)
    )
    result = ok(
        invoke_retro("cancel", run_ids[0], "--log-format", "json", cwd=tmp_path, env=backend.env())
    )
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    line = next(entry for entry in lines if entry.get("event") == "RunCancelled")
    assert line["run"] == run_ids[0] and line["match"].startswith("m-"), line
    assert "run=" not in line["msg"], line  # fields, not text in the message
