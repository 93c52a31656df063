"""Finding runs (issue 11, point 3) through the CLI, on both backends: ``retro runs``
and its filters (text and ``--json``), what ``cancel``, ``retry`` and ``history``
make of a run id, a run-id prefix or a match id, and ids never cut at 80 columns.

The runs are written through the store as ``retro start`` writes them (a backfill,
then ``RunSeeded`` events; ``RunFailed`` and ``RunCancelled`` as the daemon and
``cancel`` append them), with ids, match ids and times chosen so prefixes collide
where the test needs them to.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from retro.app import App
from retro.backfill import Backfill
from retro.cli import render
from retro.config import Settings
from retro.events import RunCancelled, RunFailed, RunSeeded
from retro.lookup import DEFAULT_LIMIT
from retro.scheduler import Daemon
from retro.store import backfills, runs
from retro.store.schema import matches
from tests.conftest import Backend
from tests.e2e.clirunner import invoke_retro, json_document, ok, one_error_line
from tests.e2e.hostdata import engine_for, seed_host, upgrade_retro

pytestmark = pytest.mark.e2e

LONG = "m-2025-premier-league-0000001"  # 29 characters
"""A long match id, as hosts that build ids from competition and season write them."""
REASON = "analysis failed 3 times; last: upstream provider answered 503 Service Unavailable"

B1, B2, B3 = "bf0000000001", "bf0000000002", "bf0000000003"
BACKFILLS = [(B1, "INC-1", 200), (B2, "scan", 130), (B3, "scan", 70)]
"""(id, label, minutes ago): two backfills share the label ``scan``."""
RUNS = [
    ("aaaaaa000001", "g-no-analysis", B1, 180, "failed"),
    ("aaaaaa000002", LONG, B1, 179, "cancelled"),
    ("abcdef000001", "x-4", B1, 178, "failed"),
    ("cccccc000001", "bbbbbb", B2, 120, None),  # its match id is a prefix of the next run
    ("bbbbbb000001", "x-1", B2, 119, None),
    ("dddddd000001", "x-2", B3, 60, None),
    ("eeeeee000001", "dddddd000001", B3, 59, None),  # its match id is the last run's id
    ("abcdef000002", "x-4", B3, 58, "failed"),
    ("ffffff000001", "x-3", B3, 10, None),
]
"""(run id, match id, backfill, minutes ago, how it ended): newest last."""
NEWEST_FIRST = [r[0] for r in reversed(RUNS)]


def settings_for(backend: Backend) -> Settings:
    return Settings(
        database_url=backend.database_url, redis_url=backend.redis_url, queue_prefix=backend.prefix
    )


async def seed_store(backend: Backend, now: datetime) -> None:
    """:data:`BACKFILLS` and :data:`RUNS`, each run in its own transaction."""
    async with App(settings_for(backend), redis=False) as app:
        for backfill_id, label, ago in BACKFILLS:
            created = now - timedelta(minutes=ago)
            async with app.engine.begin() as conn:
                await backfills.create(
                    conn,
                    Backfill(
                        id=backfill_id,
                        label=label,
                        window_from=created - timedelta(days=14),
                        window_to=created,
                        created_at=created,
                        created_by="e2e",
                    ),
                )
        for run_id, match_id, backfill_id, ago, end in RUNS:
            at = now - timedelta(minutes=ago)
            seeded = RunSeeded(
                at=at,
                run_id=run_id,
                match_id=match_id,
                gaps=("missing_analysis",),
                found=0,
                expected=3,
                backfill_id=backfill_id,
            )
            async with app.engine.begin() as conn:
                run = await runs.append(conn, None, [seeded])
                if end == "failed":
                    await runs.append(conn, run, [RunFailed(at=at, reason=REASON)])
                elif end == "cancelled":
                    await runs.append(conn, run, [RunCancelled(at=at, reason="by e2e")])


async def event_log(backend: Backend) -> dict[str, list[str]]:
    """Every run's event types, in order."""
    async with App(settings_for(backend), redis=False) as app, app.engine.connect() as conn:
        return {
            run_id: [e.type for e in await runs.event_rows(conn, run_id)]
            for run_id in await runs.all_ids(conn)
        }


@pytest.fixture
def stored(backend: Backend) -> tuple[Backend, datetime]:
    """The host tables, retro's tables, and :data:`RUNS` stored ``now`` (aware UTC)."""
    seed_host(backend.database_url)
    upgrade_retro(backend.database_url)
    now = datetime.now(UTC).replace(microsecond=0)
    asyncio.run(seed_store(backend, now))
    return backend, now


@pytest.fixture
def columns_80(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdout is an 80-column console."""
    monkeypatch.setattr(render.out, "width", 80)


def whole_on_a_line(ids: list[str], text: str) -> None:
    """Each id appears whole within one line of ``text``."""
    lines = text.splitlines()
    for ident in ids:
        assert any(ident in line for line in lines), f"{ident!r} is cut in\n{text}"


# --- retro runs -------------------------------------------------------------------


def test_runs_lists_newest_first_with_filters(
    tmp_path: Path, stored: tuple[Backend, datetime], columns_80: None
) -> None:
    backend, now = stored
    env = backend.env()

    def ids(*args: str) -> list[str]:
        doc = json_document(
            invoke_retro("runs", "--json", *args, cwd=tmp_path, env=env), "retro.runs/1"
        )
        assert doc["total"] == len(doc["runs"]) + doc["more"]
        return [item["run_id"] for item in doc["runs"]]

    everything = json_document(
        invoke_retro("runs", "--json", cwd=tmp_path, env=env), "retro.runs/1"
    )
    assert [item["run_id"] for item in everything["runs"]] == NEWEST_FIRST
    assert everything["total"] == len(RUNS) and everything["more"] == 0
    assert everything["filters"] == {
        "states": None,
        "backfill": None,
        "match_id": None,
        "since": None,
        "limit": DEFAULT_LIMIT,
    }
    by_id = {item["run_id"]: item for item in everything["runs"]}
    first = by_id["aaaaaa000001"]
    assert first["match_id"] == "g-no-analysis" and first["home_team"] == "g-no-analysis Home"
    assert first["state"] == "failed" and first["last_error"] == REASON
    assert first["backfill_id"] == B1 and first["backfill_label"] == "INC-1"
    assert first["created_at"] == (now - timedelta(minutes=180)).isoformat().replace("+00:00", "Z")
    assert first["finished_at"] == first["created_at"]
    pending = by_id["ffffff000001"]
    assert pending["home_team"] is None and pending["away_team"] is None  # no host row
    assert (pending["state"], pending["step"], pending["phase"]) == ("pending", "enter", None)
    assert pending["backfill_label"] == "scan" and pending["finished_at"] is None

    assert ids("--state", "failed") == ["abcdef000002", "abcdef000001", "aaaaaa000001"]
    live = ["ffffff000001", "eeeeee000001", "dddddd000001", "bbbbbb000001", "cccccc000001"]
    assert ids("--state", "live") == live
    assert ids("--state", "pending") == live
    assert ids("--state", "cancelled,failed") == ids("--state", "failed", "--state", "cancelled")
    assert ids("--state", "cancelled") == ["aaaaaa000002"]
    assert ids("--backfill", "INC-1") == ["abcdef000001", "aaaaaa000002", "aaaaaa000001"]
    assert ids("--backfill", B3) == ["ffffff000001", "abcdef000002", "eeeeee000001", "dddddd000001"]
    assert ids("--backfill", "INC-1", "--state", "failed") == ["abcdef000001", "aaaaaa000001"]
    assert ids("--match", "x-4") == ["abcdef000002", "abcdef000001"]
    assert ids("--match", "x-") == []  # exact, not a prefix
    assert ids("--since", "90m") == NEWEST_FIRST[:4]
    in_berlin = (now - timedelta(minutes=150)).astimezone(timezone(timedelta(hours=2)))
    assert ids("--since", in_berlin.isoformat()) == NEWEST_FIRST[:6]  # converted to UTC
    naive = (now - timedelta(minutes=150)).replace(tzinfo=None)
    assert ids("--since", naive.isoformat()) == NEWEST_FIRST[:6]  # naive is UTC
    tomorrow = (now + timedelta(days=1)).date().isoformat()
    assert ids("--since", tomorrow) == []
    assert ids("--since", "1d", "--match", "x-3") == ["ffffff000001"]

    labelled = json_document(
        invoke_retro("runs", "--json", "--backfill", "INC-1", cwd=tmp_path, env=env), "retro.runs/1"
    )
    assert labelled["filters"]["backfill"] == {"id": B1, "label": "INC-1"}

    limited = json_document(
        invoke_retro("runs", "--json", "--limit", "2", cwd=tmp_path, env=env), "retro.runs/1"
    )
    assert [i["run_id"] for i in limited["runs"]] == NEWEST_FIRST[:2]
    assert (limited["total"], limited["more"], limited["filters"]["limit"]) == (9, 7, 2)

    # text, at 80 columns: every id whole on its line, the rest wrapped
    text = ok(invoke_retro("runs", cwd=tmp_path, env=env)).stdout
    assert "Runs, newest first: 9 of 9" in text, text
    whole_on_a_line([*NEWEST_FIRST, LONG, "dddddd000001", "g-no-analysis"], text)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert text.index("ffffff000001") < text.index("aaaaaa000001"), text
    short = ok(invoke_retro("runs", "--limit", "2", cwd=tmp_path, env=env)).stdout
    assert "… 7 more runs; use --limit" in short, short
    assert "aaaaaa000001" not in short
    none = ok(invoke_retro("runs", "--match", "nobody", cwd=tmp_path, env=env))
    assert none.stdout.strip() == "No runs match.", none

    # bad values: one line, exit 2
    def bad(*args: str, words: tuple[str, ...]) -> None:
        one_error_line(invoke_retro("runs", *args, cwd=tmp_path, env=env), *words)

    bad("--since", "yesterday", words=("--since", "'yesterday'", "ISO-8601", "7d"))
    bad("--since", "2025-02-30", words=("--since", "2025-02-30"))
    bad("--state", "bogus", words=("--state", "'bogus'", "live"))
    bad("--limit", "0", words=("--limit",))
    one_error_line(
        invoke_retro("runs", "--backfill", "scan", cwd=tmp_path, env=env),
        "scan",
        B2,
        B3,
        "names 2 backfills",
        "give the id",
    )
    one_error_line(invoke_retro("runs", "--backfill", "INC-9", cwd=tmp_path, env=env), "INC-9")
    one_error_line(
        invoke_retro("runs", cwd=tmp_path, env={**env, "RETRO_RUNS_STATE": "failed"}),
        "RETRO_RUNS_STATE",
        "runs --state",
    )


# --- cancel, retry, history: run ids, prefixes, match ids ---------------------------------


def test_ids_prefixes_and_match_ids_resolve_or_are_refused(
    tmp_path: Path, stored: tuple[Backend, datetime]
) -> None:
    backend, _ = stored
    env = backend.env()

    def refused(*args: str, words: tuple[str, ...]) -> str:
        before = asyncio.run(event_log(backend))
        line = one_error_line(invoke_retro(*args, cwd=tmp_path, env=env), *words)
        assert asyncio.run(event_log(backend)) == before, f"{args} wrote"
        return line

    # several runs start with a prefix: exit 2 listing each (id, match, state, created)
    for command in ("cancel", "retry", "history"):
        line = refused(command, "aaaaaa", words=("aaaaaa", "ambiguous", "2 runs"))
        assert "aaaaaa000001 (match g-no-analysis, failed, created " in line, line
        assert f"aaaaaa000002 (match {LONG}, cancelled, created " in line, line
    # too short, unless it is an exact id or a match id
    for command in ("cancel", "retry", "history"):
        refused(command, "fffff", words=("'fffff'", "too short", "6 characters"))
    refused("cancel", "zz", words=("no run or match 'zz'", "at least 6 characters"))
    # both a match id and a run-id prefix; both a run id and a match id
    line = refused("cancel", "bbbbbb", words=("match id", "run-id prefix", "--of"))
    assert "cccccc000001 (match bbbbbb, pending" in line and "bbbbbb000001 (match x-1" in line
    line = refused("history", "dddddd000001", words=("both a run id", "match id", "--of"))
    assert "eeeeee000001 (match dddddd000001" in line, line
    # all or nothing: a good id beside a bad one writes nothing
    refused("cancel", "ffffff000001", "aaaaaa", words=("aaaaaa", "ambiguous"))
    refused("cancel", "ffffff000001", "aaaaaa000001", words=("aaaaaa000001", "already failed"))
    refused("retry", "abcdef000001", "ffffff000001", words=("ffffff000001", "pending, not failed"))
    refused("cancel", "unknown-run-id", words=("no run or match 'unknown-run-id'",))

    # a unique prefix of 6 or more
    hist = json_document(
        invoke_retro("history", "ffffff", "--json", cwd=tmp_path, env=env), "retro.history/1"
    )
    assert hist["resolved_as"] == "run" and [r["run_id"] for r in hist["runs"]] == ["ffffff000001"]
    assert hist["query"] == "ffffff"
    # --of settles what is ambiguous
    of_run = json_document(
        invoke_retro("history", "bbbbbb", "--of", "run", "--json", cwd=tmp_path, env=env),
        "retro.history/1",
    )
    assert [r["run_id"] for r in of_run["runs"]] == ["bbbbbb000001"]
    cancelled = json_document(
        invoke_retro("cancel", "bbbbbb", "--of", "match", "--json", cwd=tmp_path, env=env),
        "retro.cancel/1",
    )
    assert [c["run_id"] for c in cancelled["cancelled"]] == ["cccccc000001"]
    cancelled = json_document(
        invoke_retro("cancel", "dddddd000001", "--of", "run", "--json", cwd=tmp_path, env=env),
        "retro.cancel/1",
    )
    assert [c["run_id"] for c in cancelled["cancelled"]] == ["dddddd000001"]
    refused("cancel", "x-2", "--of", "run", words=("no run 'x-2'",))

    # a match id: history lists its runs, retry re-arms its latest failed run
    by_match = json_document(
        invoke_retro("history", "x-4", "--json", cwd=tmp_path, env=env), "retro.history/1"
    )
    assert by_match["resolved_as"] == "match"
    assert [r["run_id"] for r in by_match["runs"]] == ["abcdef000002", "abcdef000001"]
    rearmed = ok(invoke_retro("retry", "x-4", cwd=tmp_path, env=env))
    assert rearmed.stdout.strip() == "Re-armed 1 run: abcdef000002", rearmed
    log = asyncio.run(event_log(backend))
    assert log["abcdef000002"][-1] == "RunRearmed" and log["abcdef000001"][-1] == "RunFailed"
    # its older failed run cannot be re-armed while the match has a live run
    refused("retry", "x-4", words=("abcdef000001", "x-4", "live run"))
    # cancel by match id: its live run; then the match has none
    cancelled = json_document(
        invoke_retro("cancel", "x-4", "--json", cwd=tmp_path, env=env), "retro.cancel/1"
    )
    assert [c["run_id"] for c in cancelled["cancelled"]] == ["abcdef000002"]
    refused("cancel", "x-4", words=("match 'x-4' has no live run", "abcdef000002", "cancelled"))
    refused("retry", "x-3", words=("match 'x-3' has no failed run", "ffffff000001", "pending"))
    # a prefix and the full id of one run: cancelled once
    both = ok(invoke_retro("cancel", "ffffff", "ffffff000001", cwd=tmp_path, env=env)).stdout
    assert "Cancelled 1 run." in both and both.count("Cancelled run ffffff000001 ") == 1, both
    # a prefix for retry
    assert ok(invoke_retro("retry", "aaaaaa00000" + "1", cwd=tmp_path, env=env)).stdout.strip() == (
        "Re-armed 1 run: aaaaaa000001"
    )
    assert asyncio.run(event_log(backend))["aaaaaa000001"][-1] == "RunRearmed"


# --- ids are never cut at 80 columns ---------------------------------------------------------

LONG_IDS = ["m-2025-premier-league-heal-0001", "m-2025-premier-league-heal-0002"]
"""30-character match ids of healable gap matches (analysis missing, external id set)."""
DOOMED = "m-2025-premier-league-doomed-01"
"""A gap match without an external id: its run fails at its first tick."""


def add_long_matches(url: str) -> None:
    kickoff = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = [
        {
            "id": match_id,
            "external_id": None if match_id == DOOMED else f"ext-{match_id}",
            "competition_id": "e2e.1",
            "home_team": "Wolverhampton Wanderers FC",
            "away_team": "Brighton & Hove Albion FC",
            "kickoff_time": kickoff,
            "home_score": 1,
            "away_score": 0,
            "status": "finished",
        }
        for match_id in [*LONG_IDS, DOOMED]
    ]
    engine = engine_for(url)
    try:
        with engine.begin() as conn:
            conn.execute(matches.insert(), rows)
    finally:
        engine.dispose()


async def tick(backend: Backend) -> None:
    """One daemon tick: every run gets a slot, its job waits in BullMQ (no worker)."""
    settings = Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
        max_in_flight=50,
    )
    async with App(settings) as app:
        await Daemon(app).run_once()


def test_no_id_is_cut_at_80_columns(tmp_path: Path, backend: Backend, columns_80: None) -> None:
    env = backend.env()
    seed_host(backend.database_url)
    add_long_matches(backend.database_url)
    upgrade_retro(backend.database_url)

    dry = ok(invoke_retro("start", "--days", "14", "--dry-run", cwd=tmp_path, env=env)).stdout
    whole_on_a_line([*LONG_IDS, DOOMED, "g-no-analysis"], dry)
    started = json_document(
        invoke_retro("start", "--days", "14", "--label", "INC-80", "--json", cwd=tmp_path, env=env),
        "retro.start/1",
    )
    asyncio.run(tick(backend))
    status = json_document(
        invoke_retro("status", "--json", cwd=tmp_path, env=env), "retro.status/1"
    )
    in_flight = {item["match_id"]: item for item in status["in_flight"]}
    assert set(LONG_IDS) <= set(in_flight), status
    (failed,) = status["failed"]
    assert failed["match_id"] == DOOMED, status

    text = ok(invoke_retro("status", cwd=tmp_path, env=env)).stdout
    ids = [
        v
        for item in status["in_flight"]
        for v in (item["run_id"], item["match_id"], item["job_id"])
    ]
    whole_on_a_line([*ids, failed["run_id"], DOOMED], text)
    assert f"analyze-retro-{LONG_IDS[0]}" in ids

    listed = ok(invoke_retro("runs", cwd=tmp_path, env=env)).stdout
    whole_on_a_line([*started["seeded"], *LONG_IDS, DOOMED], listed)
    assert "INC-80" in listed

    history = ok(invoke_retro("history", LONG_IDS[0], cwd=tmp_path, env=env)).stdout
    whole_on_a_line(
        [f"job_id={in_flight[LONG_IDS[0]]['job_id']}", f"match_id={LONG_IDS[0]}"], history
    )

    victim = in_flight[LONG_IDS[0]]
    cancel = ok(invoke_retro("cancel", LONG_IDS[0], cwd=tmp_path, env=env)).stdout
    line = next(li for li in cancel.splitlines() if li.startswith("Cancelled run "))
    assert line.startswith(f"Cancelled run {victim['run_id']} (match {LONG_IDS[0]}, was "), cancel
    assert f"job {victim['job_id']} removed from its queue" in line, cancel
