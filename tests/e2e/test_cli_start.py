"""``retro start`` and ``retro status`` as an operator runs them after an incident, on
both backends: the dry run lists the gaps and writes nothing, the real run seeds one
run per gap match, a second run seeds nothing and says why, status counts them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import select, update

import retro.store.migrate
from retro.store.schema import backfill_events, backfill_runs, matches
from tests.conftest import Backend
from tests.e2e.clirunner import Result, invoke_retro, run_retro
from tests.e2e.hostdata import (
    EXPECTED,
    HostData,
    engine_for,
    row_counts,
    seed_host,
    upgrade_retro,
)

pytestmark = pytest.mark.e2e

HOST_TABLES = ("models", "matches", "match_analysis", "predictions")
STATES = ("pending", "analyzing", "predicting", "settling", "done", "failed", "cancelled")
QUEUES = ("analysis-queue", "predictions-queue", "settlement-queue")


def _ok(result: Result) -> Result:
    assert result.code == 0, result
    assert "Traceback" not in result.output, result
    return result


def _runs(url: str) -> list[tuple[str, str]]:
    """(match id, state) of every stored run, by match id."""
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(backfill_runs.c.match_id, backfill_runs.c.state).order_by(
                    backfill_runs.c.match_id
                )
            )
            return [(r.match_id, r.state) for r in rows]
    finally:
        engine.dispose()


def _event_types(url: str) -> list[str]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(select(backfill_events.c.type)))
    finally:
        engine.dispose()


def _head_revision() -> str:
    location = Path(retro.store.migrate.__file__).parent / "migrations"
    head = ScriptDirectory(str(location)).get_current_head()
    assert head is not None
    return head


def _state_count(stdout: str, state: str) -> int:
    """The count on the ``state`` row of status's Runs table (box characters ignored)."""
    found = re.search(rf"^\W*{state}\W+(\d+)\W*$", stdout, re.MULTILINE)
    assert found, f"no {state!r} row in\n{stdout}"
    return int(found.group(1))


def _assert_lists_gaps(result: Result, expect: HostData) -> None:
    out = result.stdout
    assert f"{len(expect.gaps)} gap matches (" in out, result
    for kind, n in expect.by_kind().items():
        assert f"{kind} {n}" in out, f"{kind} {n} not in\n{out}"
    for match_id, kinds in expect.gaps.items():
        row = next((line for line in out.splitlines() if match_id in line), None)
        assert row is not None, f"gap match {match_id} not listed in\n{out}"
        for kind in kinds:
            assert kind in row, f"{match_id} row lacks {kind}: {row!r}"
    for match_id in (*expect.complete, *expect.ignored):
        assert match_id not in out, f"{match_id} listed as a gap\n{out}"
    assert f"{EXPECTED} predictions expected per match" in out, result


def test_start_dry_run_then_seed_then_nothing_then_status(tmp_path: Path, backend: Backend) -> None:
    url = backend.database_url
    expect = seed_host(url)
    env = backend.env()
    if backend.name == "postgres-server":
        # db upgrade never opens Redis: it needs no RETRO_REDIS_URL beside PostgreSQL
        no_redis = {k: v for k, v in env.items() if k != "RETRO_REDIS_URL"}
        upgraded = _ok(run_retro("db", "upgrade", cwd=tmp_path, env=no_redis))
        assert f"revision {_head_revision()}" in upgraded.stdout, upgraded
    host_before = {t: n for t, n in row_counts(url).items() if t in HOST_TABLES}

    dry = _ok(run_retro("start", "--days", "14", "--dry-run", cwd=tmp_path, env=env))
    _assert_lists_gaps(dry, expect)
    assert f"would seed {len(expect.gaps)} runs" in dry.stdout, dry
    assert "nothing written" in dry.stdout, dry
    assert dry.stderr.strip() == "", dry
    assert _runs(url) == []
    assert _event_types(url) == []

    seeded = _ok(run_retro("start", "--days", "14", cwd=tmp_path, env=env))
    _assert_lists_gaps(seeded, expect)
    assert f"Seeded {len(expect.gaps)} runs" in seeded.stdout, seeded
    assert _runs(url) == [(match_id, "pending") for match_id in sorted(expect.gaps)]
    assert _event_types(url) == ["RunSeeded"] * len(expect.gaps)

    again = _ok(run_retro("start", "--days", "14", cwd=tmp_path, env=env))
    assert "No runs seeded" in again.stdout, again
    assert f"{len(expect.gaps)} gap matches already have a live run" in again.stdout, again
    assert f"{len(expect.complete)} match in the window is complete" in again.stdout
    assert len(_runs(url)) == len(expect.gaps)
    assert len(_event_types(url)) == len(expect.gaps)

    status = _ok(run_retro("status", cwd=tmp_path, env=env))
    for state in STATES:
        want = len(expect.gaps) if state == "pending" else 0
        assert _state_count(status.stdout, state) == want, status
    workers = re.search(r"^Workers: (.*)$", status.stdout, re.MULTILINE)
    assert workers, status
    assert workers.group(1) == ", ".join(f"{queue} 0" for queue in QUEUES), status

    host_after = {t: n for t, n in row_counts(url).items() if t in HOST_TABLES}
    assert host_after == host_before, "retro must never write the host's tables"


def test_start_reports_bad_rows_and_seeds_the_rest(tmp_path: Path, backend: Backend) -> None:
    url = backend.database_url
    expect = seed_host(url, bad_rows=True)
    upgrade_retro(url)
    result = _ok(run_retro("start", "--days", "14", cwd=tmp_path, env=backend.env()))
    # stderr also carries the log (one INFO line per seeded run).
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == len(expect.skipped), result
    for match_id, word in expect.skipped.items():
        line = next((s for s in skipped if f"match {match_id}:" in s), None)
        assert line is not None, f"{match_id} not reported as skipped\n{result}"
        assert line.startswith("retro: skipped"), line
        assert word in line, line
        assert match_id not in result.stdout.replace(line, ""), "a skipped row was listed"
    assert f"Seeded {len(expect.gaps)} runs" in result.stdout, result
    assert [m for m, _ in _runs(url)] == sorted(expect.gaps)


# --- matches that cannot heal: no external_id (issue 10, point 5) ---------------------

NO_ID = {"g-no-analysis": None, "g-null-fav": "  "}
"""Gap matches missing analysis, external_id NULL or blank: they cannot heal."""
NO_ID_WITH_ANALYSIS = "g-partial"  # external_id NULL, but only predictions are missing


def _clear_external_ids(url: str) -> None:
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            for match_id, value in {**NO_ID, NO_ID_WITH_ANALYSIS: None}.items():
                conn.execute(
                    update(matches).where(matches.c.id == match_id).values(external_id=value)
                )
    finally:
        engine.dispose()


def test_start_dry_run_lists_matches_that_cannot_heal_for_no_external_id(
    tmp_path: Path, backend: Backend
) -> None:
    url, env = backend.database_url, backend.env()
    expect = seed_host(url)
    upgrade_retro(url)
    _clear_external_ids(url)

    dry = _ok(invoke_retro("start", "--days", "14", "--dry-run", cwd=tmp_path, env=env))
    _assert_lists_gaps(dry, expect)
    doomed = [
        line for line in dry.stdout.splitlines() if line.endswith("cannot heal: no external_id")
    ]
    assert doomed == [f"  {match_id}: cannot heal: no external_id" for match_id in NO_ID], dry
    assert "2 gap matches cannot heal: no external_id" in dry.stdout, dry
    assert "would fail at their first tick" in dry.stdout, dry
    assert "require_external_id = false" in dry.stdout, dry
    assert f"would seed {len(expect.gaps)} runs" in dry.stdout, dry

    doc = json.loads(
        _ok(
            invoke_retro("start", "--days", "14", "--dry-run", "--json", cwd=tmp_path, env=env)
        ).stdout
    )
    assert {g["match_id"]: g["cannot_heal"] for g in doc["gaps"]} == {
        m: "no external_id" if m in NO_ID else None for m in expect.gaps
    }
    assert _runs(url) == [], "a dry run writes nothing"

    off = {**env, "RETRO_REQUIRE_EXTERNAL_ID": "false"}
    plain = _ok(invoke_retro("start", "--days", "14", "--dry-run", cwd=tmp_path, env=off))
    assert "cannot heal" not in plain.stdout, plain
    doc = json.loads(
        _ok(
            invoke_retro("start", "--days", "14", "--dry-run", "--json", cwd=tmp_path, env=off)
        ).stdout
    )
    assert [g["cannot_heal"] for g in doc["gaps"]] == [None] * len(expect.gaps)

    # A real start seeds them all the same: their runs fail at the first tick, on record.
    seeded = _ok(invoke_retro("start", "--days", "14", cwd=tmp_path, env=env))
    assert "2 gap matches cannot heal: no external_id" in seeded.stdout, seeded
    assert "their runs fail at their first tick" in seeded.stdout, seeded
    assert f"Seeded {len(expect.gaps)} runs" in seeded.stdout, seeded

    config = json.loads(_ok(invoke_retro("config", "--json", cwd=tmp_path, env=off)).stdout)
    assert config["settings"]["require_external_id"] is False
    assert config["sources"]["require_external_id"] == "env"
