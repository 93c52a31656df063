"""A shorter run of the chaos harness (``bench/chaos.py``): the daemon SIGKILLed at
random moments, the workers SIGKILLed mid-job, a private Redis wiped, every
connection to the database terminated, 10 % of jobs failing on purpose. Nothing
is lost, nothing runs twice, no projection drifts, and every attempt a run was
charged is explained by an injected failure or a killed worker (DESIGN §4.5)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos import ChaosConfig, chaos, private_redis, render
from tests.conftest import REQUIRE_ENV

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own, so FLUSHALL wipes nobody else's keys."""
    if shutil.which("redis-server") is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"redis-server is not on PATH but {REQUIRE_ENV}=1")
        pytest.skip("redis-server is not on PATH")
    with private_redis(tmp_path / "redis") as url:
        yield url


async def test_chaos_short(postgres_url: str, private_redis_url: str, tmp_path: Path) -> None:
    config = ChaosConfig(
        database_url=postgres_url,
        redis_url=private_redis_url,
        workdir=tmp_path,
        kills=12,
        worker_kills=1,
        redis_wipe=True,
        pg_outage="terminate",
        outage_days=14,
        competitions=("en.1", "de.1"),
        lock_duration=5,  # a killed worker's job comes back within 5-10 s, not 30-60 s
        final_timeout=60,
    )
    lines: list[str] = []
    report = await chaos(config, say=lines.append)
    render(report, say=lines.append)
    summary = "\n".join(lines)

    assert report.runs == report.gaps > 10, summary
    assert report.kills >= 10, summary
    assert report.kills_in_flight >= report.kills - 2, summary
    assert report.worker_kills_mid_job >= 1, summary
    assert report.redis_wipes == 1 and report.pg_terminations == 1, summary
    assert report.lost == [], summary
    assert report.duplicated == [], summary
    assert report.drift == [], summary
    assert report.unexplained == [], summary
    assert sum(report.by_state.values()) == report.runs, summary
    assert report.last_line().endswith("lost: 0  duplicated: 0  drift: 0"), summary
