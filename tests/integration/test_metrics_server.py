"""The HTTP server's ``/metrics`` and ``/healthz`` on both backends, in process:
``/metrics`` counts runs by state in the database (a synchronous engine made from the
async URL) and ``/healthz`` checks the last tick, the database and Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families

from retro.app import App
from retro.board.app import Site
from retro.board.server import HttpServer
from retro.config import Settings
from tests.conftest import Backend
from tests.healing import seed_runs


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_server_counts_runs_and_checks_health(backend: Backend) -> None:
    seeded = await seed_runs(
        backend.database_url, backend.redis_url, ["it.1"], prefix=backend.prefix
    )
    settings = Settings(
        database_url=backend.database_url, redis_url=backend.redis_url, queue_prefix=backend.prefix
    )
    server = HttpServer("127.0.0.1", 0)  # port 0: any free port (the CLI treats 0 as off)
    try:
        async with App(settings) as app:
            server.start(Site(settings, app.probes()))
            base = f"http://127.0.0.1:{server.port}"
            status, body = await asyncio.to_thread(get, f"{base}/healthz")
            assert status == 503, body  # no tick yet
            report = json.loads(body)
            assert report["failed"] == ["tick"], report
            assert report["checks"]["database"]["ok"] and report["checks"]["redis"]["ok"]

            await app.tick(now=datetime.now(UTC))  # no workers: hands off one run
            status, body = await asyncio.to_thread(get, f"{base}/healthz")
            assert status == 200, body
            assert json.loads(body)["status"] == "ok"

            status, text = await asyncio.to_thread(get, f"{base}/metrics")
            assert status == 200
            runs = {
                s.labels["state"]: s.value
                for family in text_string_to_metric_families(text)
                if family.name == "retro_runs"
                for s in family.samples
            }
            assert sum(runs.values()) == len(seeded)
            assert runs["done"] == 0 and runs["pending"] == len(seeded) - 1, runs
            handoffs = sum(  # the first run's first job: any stage, by the match's gaps
                app.metrics.registry.get_sample_value("retro_handoffs_total", {"stage": stage})
                or 0.0
                for stage in ("analysis", "predictions", "settlement")
            )
            assert handoffs == 1
            assert (await asyncio.to_thread(get, f"{base}/nope"))[0] == 404

            # the server has a loop of its own: it answers while the daemon's is blocked
            answered: list[float] = []

            def ask() -> None:
                get(f"{base}/healthz")
                answered.append(time.monotonic())

            asker = threading.Thread(target=ask)
            blocked_at = time.monotonic()
            asker.start()
            time.sleep(1.5)  # the daemon's event loop, stuck (as in a blocking call)
            unblocked_at = time.monotonic()
            asker.join(5)
            assert answered and answered[0] < unblocked_at, (blocked_at, answered, unblocked_at)
    finally:
        server.close()
