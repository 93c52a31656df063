"""Metrics, health and structured logs of the daemon as a process (issue 5, items 4-5).

A real heal (``retro run --http-port``, reference workers, a private redis-server)
is scraped while it runs: hand-offs, hand-off latency and runs done move; ``/healthz``
is 200 while healthy and 503 naming Redis once that Redis is stopped. Its
``--log-format json`` stderr is one JSON object a line, with run, match, job and
event fields. Bad ``--log-format``/``--http-port`` values and a port in use are
one-line usage errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.harness import handoffs
from retro.config import Settings
from retro.pipeline.workers import run_workers
from retro.queue import JOB_ID_FORMATS, JobOptions, Queues, queue_names
from tests.e2e.clirunner import one_error_line, run_retro
from tests.e2e.hostdata import files
from tests.e2e.test_daemon import make_host_db
from tests.e2e.test_outage import RedisServer, free_port
from tests.healing import assert_healed, seed_runs

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: stopping it disturbs nobody."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    yield server
    server.stop()


def get(url: str) -> tuple[int, str]:
    """``(status, body)`` of a GET (a 503 is an answer, not an error)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    """Every sample of ``/metrics``, keyed by (sample name, sorted labels)."""
    status, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def start_daemon(
    cwd: Path, env: dict[str, str], *args: str, stderr: IO[str] | int = subprocess.PIPE
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "retro", "run", "--no-scan", "--tick-interval", "0.5", *args],
        cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RETRO_")}, **env},
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def stop_daemon(daemon: subprocess.Popen[str]) -> str:
    """SIGTERM, then its whole stderr; it must exit 0."""
    daemon.send_signal(signal.SIGTERM)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr[-3000:]
    return stderr


async def wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_metrics_health_and_json_logs_over_a_heal(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'host.db'}"
    seeded = await seed_runs(url, private_redis.url, ["it.1"])
    port = free_port()
    env = {"RETRO_DATABASE_URL": url, "RETRO_REDIS_URL": private_redis.url}
    # settings, not options: the port and the log format from retro.toml (host: 127.0.0.1)
    (tmp_path / "retro.toml").write_text(
        f'http_port = {port}\nlog_format = "json"\n', encoding="utf-8"
    )
    daemon = start_daemon(tmp_path, env)
    stop = asyncio.Event()
    workers: asyncio.Task[None] | None = None
    try:

        def healthy() -> bool:
            try:
                return get(f"http://127.0.0.1:{port}/healthz")[0] == 200
            except OSError:  # not listening yet
                assert daemon.poll() is None, "the daemon exited"
                return False

        await wait_for(healthy, "/healthz 200 (first tick)")
        before = scrape(port)
        live = ("pending", "analyzing", "predicting", "settling")
        assert sum(value(before, "retro_runs", state=s) for s in live) == len(seeded)
        assert value(before, "retro_runs", state="done") == 0  # no workers yet
        assert value(before, "retro_ticks_total") >= 1

        workers = asyncio.create_task(run_workers(url, private_redis.url, stop=stop))
        done_seen: list[float] = []

        def all_done() -> bool:
            done_seen.append(value(scrape(port), "retro_runs", state="done"))
            return done_seen[-1] == len(seeded)

        await wait_for(all_done, "every run done")
        stop.set()
        await workers
        workers = None
        assert done_seen == sorted(done_seen), done_seen  # runs done only ever increases
        assert len(set(done_seen)) >= 2, done_seen  # ... and was seen moving

        after = scrape(port)
        for stage in ("analysis", "predictions", "settlement"):
            assert value(after, "retro_handoffs_total", stage=stage) > 0, stage
        requested = {
            stage: value(after, "retro_events_total", event=f"{stage.title()}Requested")
            for stage in ("analysis", "predictions", "settlement")
        }
        assert requested == {
            stage: value(after, "retro_handoffs_total", stage=stage) for stage in requested
        }
        # Latency: BullMQ's own stamps (bench/handoff.py's definition) give the pairs.
        async with Queues(
            private_redis.url, prefix="bull", names=queue_names(Settings()), options=JobOptions()
        ) as queues:
            pairs = await handoffs(queues, await _match_ids(url), JOB_ID_FORMATS)
        observed = sum(
            value(after, "retro_handoff_latency_seconds_count", stage=stage)
            for stage in ("predictions", "settlement")
        )
        assert observed == len(pairs) > 0, (observed, len(pairs))
        assert value(after, "retro_handoff_latency_seconds_count", stage="analysis") == 0
        latency_sum = sum(
            value(after, "retro_handoff_latency_seconds_sum", stage=stage)
            for stage in ("predictions", "settlement")
        )
        assert latency_sum / observed < 1.0  # event-driven hand-offs, not tick polling
        bench_sum = sum(pairs) / 1000  # milliseconds there
        assert abs(latency_sum - bench_sum) <= 0.01 * observed, (latency_sum, bench_sum)
        assert time.time() - value(after, "retro_last_tick_timestamp_seconds") < 5
        assert value(after, "retro_gap_scans_total") == 0  # --no-scan

        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200, body
        assert json.loads(body)["status"] == "ok"

        private_redis.stop()  # this test's own Redis: the daemon's dependency goes down
        started = time.monotonic()
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert time.monotonic() - started < 5
        assert status == 503, body
        report = json.loads(body)
        assert "redis" in report["failed"], report
        assert report["checks"]["database"]["ok"] is True, report
        assert report["checks"]["redis"]["error"], report
        private_redis.start()  # let the daemon stop on a live Redis
        stderr = stop_daemon(daemon)
    finally:
        stop.set()
        if workers is not None:
            await workers
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()

    assert await assert_healed(url) == {"done": len(seeded)}
    lines = [line for line in stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert record["ts"].endswith("+00:00"), record
    events = [r for r in records if {"run", "match", "job", "event"} <= set(r)]
    assert any(r["event"] == "PredictionsRequested" for r in events), lines[:20]
    by_event = [r for r in records if "event" in r]
    assert len(by_event) == sum(value(after, "retro_events_total", event=e) for e in _types(after))
    assert all(r["level"] == "INFO" for r in by_event)


async def _match_ids(url: str) -> list[str]:
    from sqlalchemy import select

    from retro.store.db import create_engine
    from retro.store.schema import backfill_runs

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [m for (m,) in await conn.execute(select(backfill_runs.c.match_id))]
    finally:
        await engine.dispose()


def _types(samples: Samples) -> set[str]:
    return {dict(labels)["event"] for name, labels in samples if name == "retro_events_total"}


async def test_console_log_lines_carry_key_value_fields(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'host.db'}"
    await seed_runs(url, "embedded", ["it.1"])
    log_path = tmp_path / "daemon.log"
    env = {"RETRO_DATABASE_URL": url, "RETRO_LOG_FORMAT": "console"}
    with open(log_path, "w") as log:
        daemon = start_daemon(tmp_path, env, stderr=log)
    try:
        await wait_for(lambda: "Requested job_id=" in log_path.read_text(), "a hand-off line")
        daemon.send_signal(signal.SIGTERM)  # no workers: the first hand-off is enough
        assert await asyncio.to_thread(daemon.wait, 30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    stderr = log_path.read_text()
    line = next(line for line in stderr.splitlines() if "Requested job_id=" in line)
    human, _, _ = line.partition(" run=")
    assert " INFO retro " in human and "Requested job_id=" in human, line  # human part first
    words = line.split(" INFO retro ", 1)[1].split()
    fields = dict(word.split("=", 1) for word in words if "=" in word)
    assert fields["run"] and fields["match"], line
    assert fields["event"] in (
        "AnalysisRequested",
        "PredictionsRequested",
        "SettlementRequested",
    ), line
    assert fields["job"] == fields["job_id"], line
    assert fields["match"] in fields["job"], line
    assert not any(s.startswith("{") for s in stderr.splitlines()), "console, not json"
    assert "daemon stopped" in stderr


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["status", "--log-format", "xml"], {}, ["--log-format", "xml"]),
        (["run"], {"RETRO_LOG_FORMAT": "xml"}, ["RETRO_LOG_FORMAT", "xml"]),
        (["run", "--http-port", "70000"], {}, ["--http-port", "70000"]),
        (["run"], {"RETRO_HTTP_PORT": "70000"}, ["RETRO_HTTP_PORT", "70000"]),
        (["run", "--metrics-port", "70000"], {}, ["--metrics-port", "70000"]),
        (["run"], {"RETRO_METRICS_PORT": "70000"}, ["RETRO_METRICS_PORT", "70000"]),
    ],
    ids=["status-xml", "env-xml", "port-high", "env-port", "old-port-high", "old-env-port"],
)
def test_bad_telemetry_options_are_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], words: list[str]
) -> None:
    one_error_line(run_retro(*args, cwd=tmp_path, env=env), *words)
    assert files(tmp_path) == {}


def test_http_port_in_use_is_one_line(tmp_path: Path) -> None:
    url = make_host_db(tmp_path / "host.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_retro(
            "run",
            "--until-idle",
            "--http-port",
            str(port),
            cwd=tmp_path,
            env={"RETRO_DATABASE_URL": url},
        )
    line = one_error_line(result, "metrics", f"127.0.0.1:{port}")
    assert "in use" in line.lower(), line
    assert not any(name.endswith(".lock") for name in files(tmp_path)), "nothing written"


def test_metrics_host_is_where_the_server_binds(tmp_path: Path) -> None:
    """``--metrics-host`` (the deprecated name of ``--http-host``) names the interface;
    one that does not resolve is one line, exit 2; a served one logs its deprecation."""
    url = make_host_db(tmp_path / "host.db")
    result = run_retro(
        "run",
        "--until-idle",
        "--metrics-port",
        "9",
        "--metrics-host",
        "no-such-host.invalid",
        cwd=tmp_path,
        env={"RETRO_DATABASE_URL": url},
    )
    one_error_line(result, "metrics", "no-such-host.invalid")
    assert not any(name.endswith(".lock") for name in files(tmp_path)), "nothing written"
    with socket.socket() as probe:  # a free port on this machine's loopback address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    served = run_retro(
        "run",
        "--until-idle",
        "--metrics-host",
        "localhost",
        "--metrics-port",
        str(port),
        cwd=tmp_path,
        env={"RETRO_DATABASE_URL": url},
    )
    assert served.code == 0, served
    assert f"localhost:{port}" in served.stderr, served.stderr
    assert "metrics_port is deprecated: use http_port" in served.stderr, served.stderr
