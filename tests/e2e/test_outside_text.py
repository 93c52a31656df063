"""Text from outside retro never forges a line: a match id holding a newline, a team
named with Rich markup and ANSI, and a worker's failure reason holding a newline and
U+2028 go through the real path (``retro start``, the daemon ``retro run`` with a real
BullMQ worker failing the job, ``retro status``, ``retro history``) and come out
escaped in console and JSON logs and in the text output, on both backends."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retro.queue import consume
from retro.store import migrate
from retro.store.db import create_engine
from retro.store.schema import host_metadata, matches, models
from tests.conftest import Backend
from tests.e2e.clirunner import Result, invoke_retro, run_retro
from tests.e2e.hostdata import _z, engine_for

pytestmark = pytest.mark.e2e

FORGED = "2031-01-01 00:00:00,000 INFO retro forged"
"""A console log line's head; it must never start a line of output."""
MATCH_ID = f"m\n{FORGED}\u2028y"
HOME = "[red]Home\x1b[2J"
REASON = f"no\n{FORGED}\u2028x"
CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ ")


async def seed(database_url: str) -> None:
    """Three models and one finished match with no analysis, id ``MATCH_ID``."""
    engine = engine_for(database_url)
    try:
        host_metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                models.insert(),
                [{"id": m, "provider": "t", "model_name": m, "display_name": m} for m in "abc"],
            )
            conn.execute(
                matches.insert(),
                [
                    {
                        "id": MATCH_ID,
                        "external_id": "ext-outside",  # NULL: no job (require_external_id)
                        "competition_id": "x.1",
                        "home_team": HOME,
                        "away_team": "Away",
                        "kickoff_time": _z(datetime.now(UTC) - timedelta(days=1)),
                        "home_score": 1,
                        "away_score": 0,
                        "status": "finished",
                    }
                ],
            )
    finally:
        engine.dispose()
    retro_engine = create_engine(database_url)
    try:
        await migrate.upgrade(retro_engine)
    finally:
        await retro_engine.dispose()


async def fail_job(job: Any, token: str) -> None:
    """A worker that refuses every job with :data:`REASON`."""
    raise RuntimeError(REASON)


def assert_no_forged_line(text: str) -> None:
    """No line of ``text`` (or of a table cell in it) starts with the forged head, and
    no other line break (CR, U+2028, NEL) or escape sequence hides in it."""
    assert not any(c in text for c in "\r\x1b\x85\u2028\u2029"), text
    assert not any(line.lstrip("│┃ ").startswith(FORGED[:10]) for line in text.split("\n")), text


def strings(document: object) -> Iterator[str]:
    """Every string value in a parsed JSON document."""
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from strings(value)
    elif isinstance(document, list):
        for value in document:
            yield from strings(value)


@pytest.mark.parametrize("log_format", ["console", "json"])
async def test_outside_text_is_escaped_in_logs_status_and_history(
    backend: Backend, tmp_path: Path, log_format: str
) -> None:
    await seed(backend.database_url)
    env = {**backend.env(), "RETRO_MAX_ATTEMPTS": "1", "RETRO_TICK_INTERVAL": "0.2"}

    started = await asyncio.to_thread(invoke_retro, "start", "--days", "3", cwd=tmp_path, env=env)
    assert started.code == 0, started
    assert_no_forged_line(started.output)
    assert "m\\n2031-01-01" in started.stdout, started  # the match id, escaped
    assert "[red]Home\\x1b[2J" in started.stdout, started  # markup shown, not applied

    stop = asyncio.Event()
    worker = asyncio.create_task(
        consume(
            backend.redis_url,
            prefix=backend.prefix,
            handlers={"analysis-queue": fail_job},
            concurrency=1,
            stop=stop,
            name="outside-text",
        )
    )
    try:
        ran: Result = await asyncio.to_thread(
            run_retro,
            "run",
            "--until-idle",
            "--no-scan",
            "--log-format",
            log_format,
            cwd=tmp_path,
            env=env,
        )
    finally:
        stop.set()
        await worker
    assert ran.code == 0, ran
    logs = ran.stderr
    assert_no_forged_line(logs)
    lines = logs.splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        about = [r for r in records if r.get("match") == MATCH_ID]  # the encoder's escape
        failed = [r for r in about if r.get("event") == "JobFailed"]
        assert len(failed) == 1, records
        # clipped (escaped), then quoted as a logfmt value inside the message
        assert 'reason="no\\\\n2031-01-01' in failed[0]["msg"], failed
        assert "\\u2028x" in failed[0]["msg"], failed
        assert '"match": "m\\n2031-01-01 00:00:00,000 INFO retro forged\\u2028y"' in logs
    else:
        assert all(CONSOLE_LINE.match(line) for line in lines), logs
        failed_lines = [line for line in lines if "event=JobFailed" in line]
        assert len(failed_lines) == 1, logs
        forged = 'reason="no\\\\n2031-01-01 00:00:00,000 INFO retro forged\\\\u2028x"'
        assert forged in failed_lines[0], failed_lines
        assert 'match="m\\n2031-01-01 00:00:00,000 INFO retro forged\\u2028y"' in failed_lines[0]

    status = await asyncio.to_thread(invoke_retro, "status", cwd=tmp_path, env=env)
    assert status.code == 0, status
    assert_no_forged_line(status.stdout)
    assert "m\\n2031-01-01" in status.stdout, status
    assert "no\\n2031-01-01" in status.stdout, status

    history = await asyncio.to_thread(invoke_retro, "history", MATCH_ID, cwd=tmp_path, env=env)
    assert history.code == 0, history
    assert_no_forged_line(history.stdout)
    assert "Match m\\n2031-01-01 00:00:00,000 INFO retro forged\\u2028y: 1 run" in history.stdout
    job_id = "analyze-retro-m%0A2031-01-01%2000%3A00%3A00,000%20INFO%20retro%20forged%E2%80%A8y"
    assert f"job_id={job_id}" in history.stdout, history  # the encoded job id
    assert "no\\n2031-01-01" in history.stdout, history

    as_json = await asyncio.to_thread(
        invoke_retro, "history", MATCH_ID, "--json", cwd=tmp_path, env=env
    )
    assert as_json.code == 0, as_json
    assert json.dumps(MATCH_ID) in as_json.stdout  # escaped by the encoder, one line
    assert MATCH_ID in set(strings(json.loads(as_json.stdout)))  # and read back whole
