"""The backfill commands as an operator runs them (issue 11), text and ``--json``, on
both backends: ``retro backfills``, ``status --backfill``, ``pause``/``resume``,
``retry``/``cancel --backfill``; a backfill named by id, id prefix or label; an
unknown or ambiguous name is exit 2 with the candidates; ids are never cut."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from retro import commands
from retro.app import App
from retro.backfill import SCAN_LABEL, ActionType, os_user
from retro.cli.backfill_render import backfills_table
from retro.config import Settings
from retro.events import RunFailed
from retro.progress import summaries
from retro.store import backfills, runs
from tests.conftest import Backend
from tests.e2e.clirunner import Result, invoke_retro, json_document, ok, one_error_line
from tests.e2e.hostdata import seed_host, upgrade_retro

pytestmark = pytest.mark.e2e

STATES = ("pending", "analyzing", "predicting", "settling", "done", "failed", "cancelled")


def settings_for(backend: Backend) -> Settings:
    return Settings(
        database_url=backend.database_url,
        redis_url=backend.redis_url,
        queue_prefix=backend.prefix,
    )


class Cli:
    """``retro ARGS`` in-process on one backend, from an empty folder."""

    def __init__(self, backend: Backend, cwd: Path) -> None:
        self.env, self.cwd = backend.env(), cwd

    def __call__(self, *args: str) -> Result:
        return invoke_retro(*args, cwd=self.cwd, env=self.env)


@pytest.fixture
def cli(backend: Backend, tmp_path: Path) -> Cli:
    seed_host(backend.database_url)
    upgrade_retro(backend.database_url)
    return Cli(backend, tmp_path)


def started(cli: Cli, *args: str) -> dict[str, Any]:
    document = json_document(cli("start", "--json", *args), "retro.start/1")
    assert document["backfill"] is not None, document
    return document


def test_backfills_lists_each_with_state_progress_and_eta(cli: Cli, backend: Backend) -> None:
    recent = started(cli, "--days", "3", "--label", "recent")
    older = started(cli, "--days", "14", "--label", "INC-123")
    assert recent["seeded"] and older["seeded"]
    refused = one_error_line(
        cli("start", "--days", "14", "--label", "INC-123", "--dry-run"), "INC-123", "already"
    )
    assert older["backfill"]["id"] in refused

    document = json_document(cli("backfills", "--json"), "retro.backfills/1")
    assert document["total"] == 2
    listed = document["backfills"]
    assert [b["label"] for b in listed] == ["INC-123", "recent"]  # newest first
    inc = listed[0]
    assert inc["id"] == older["backfill"]["id"]
    assert inc["created_by"] == os_user()
    assert inc["window"] == {"from": older["window"]["since"], "to": older["window"]["until"]}
    assert inc["options"] == {"days": 14, "reprocess": "missing"}
    assert inc["gap_counts"] == older["by_kind"]
    assert (inc["state"], inc["paused"], inc["cancelled_at"]) == ("running", False, None)
    seeded = len(older["seeded"])
    assert inc["runs"] == {
        "seeded": seeded,
        "finished": 0,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
        "live": seeded,
    }
    assert inc["counts"] == {s: (seeded if s == "pending" else 0) for s in STATES}
    progress = inc["progress"]
    assert (progress["percent_finished"], progress["finished"], progress["total_runs"]) == (
        0.0,
        0,
        seeded,
    )
    assert progress["handoffs_left"] == 3 * seeded and progress["eta_seconds"] is None

    text = ok(cli("backfills")).stdout
    for item in listed:
        assert any(line.split()[:1] == [item["id"]] for line in text.splitlines()), text
    assert "INC-123" in text and "recent" in text and "running" in text
    assert f"0/{seeded} 0%" in text

    # At 80 columns the ids stay whole on one line; the other columns wrap.
    async def narrow() -> str:
        async with App(settings_for(backend), redis=False) as app, app.engine.connect() as conn:
            found = await summaries(conn, now=datetime.now(UTC))
        console = Console(width=80, record=True)
        console.print(backfills_table(found, title="Backfills"))
        return console.export_text()

    lines = asyncio.run(narrow()).splitlines()
    assert max(len(line) for line in lines) <= 80
    for item in listed:
        assert any(item["id"] in line for line in lines), lines


def test_a_backfill_is_paused_resumed_retried_and_cancelled_as_a_unit(
    cli: Cli, backend: Backend
) -> None:
    other = started(cli, "--days", "3", "--label", "other")
    inc = started(cli, "--days", "14", "--label", "INC-123")
    bid, seeded = inc["backfill"]["id"], inc["seeded"]

    text = ok(cli("pause", "--backfill", bid[:6])).stdout  # a unique prefix
    assert f"Paused backfill {bid} (INC-123): {len(seeded)} live runs held." in text
    assert f"`retro resume --backfill {bid}`" in text
    again = json_document(
        cli("pause", "--backfill", "INC-123", "--json"), "retro.backfill_action/1"
    )
    assert (again["action"], again["changed"], again["by"]) == ("BackfillPaused", False, os_user())
    assert again["since"]["type"] == "BackfillPaused" and again["since"]["by"] == os_user()
    assert (again["backfill"]["state"], again["backfill"]["paused"]) == ("paused", True)
    assert "is already paused since" in ok(cli("pause", "--backfill", bid)).stdout

    one = json_document(cli("status", "--backfill", "INC-123", "--json"), "retro.status/1")
    assert one["backfill"]["id"] == bid and one["backfill"]["paused"] is True
    assert [b["id"] for b in one["backfills"]] == [bid]
    assert one["counts"]["pending"] == len(seeded)  # its runs alone
    assert one["progress"]["total_runs"] == len(seeded)
    text = ok(cli("status", "--backfill", bid)).stdout
    assert f"Backfill {bid} (INC-123): paused" in text
    assert "no new job starts" in text
    every = json_document(cli("status", "--json"), "retro.status/1")
    assert every["backfill"] is None
    assert {b["label"]: b["state"] for b in every["backfills"]} == {
        "INC-123": "paused",
        "other": "running",
    }
    assert every["counts"]["pending"] == len(seeded) + len(other["seeded"])
    assert "Backfills in progress" in ok(cli("status")).stdout

    resumed = json_document(
        cli("resume", "--backfill", "INC-123", "--json"), "retro.backfill_action/1"
    )
    assert (resumed["action"], resumed["changed"]) == ("BackfillResumed", True)
    assert resumed["backfill"]["state"] == "running"
    assert "is not paused; nothing changed." in ok(cli("resume", "--backfill", bid)).stdout

    assert "No failed run in backfill" in ok(cli("retry", "--backfill", bid)).stdout
    failed_run = sorted(seeded)[0]
    asyncio.run(fail(backend, failed_run))
    retried = json_document(cli("retry", "--backfill", bid, "--json"), "retro.backfill_action/1")
    assert (retried["action"], retried["changed"], retried["runs"]) == (
        "BackfillRetried",
        True,
        [failed_run],
    )
    assert retried["backfill"]["runs"]["failed"] == 0
    assert retried["backfill"]["counts"]["pending"] == len(seeded)

    cancelled = json_document(cli("cancel", "--backfill", "INC-123", "--json"), "retro.cancel/1")
    assert sorted(c["run_id"] for c in cancelled["cancelled"]) == sorted(seeded)
    assert cancelled["backfill"]["state"] == "cancelled"
    assert cancelled["backfill"]["progress"]["percent_finished"] == 100.0
    text = ok(cli("cancel", "--backfill", bid)).stdout  # again: nothing live is left
    assert "Cancelled 0 runs." in text and f"Backfill {bid} (INC-123) cancelled" in text
    one_error_line(cli("pause", "--backfill", bid), bid, "cancelled")
    one_error_line(cli("retry", "--backfill", bid), bid, "cancelled")
    listed = json_document(cli("backfills", "--json"), "retro.backfills/1")["backfills"]
    assert {b["label"]: b["state"] for b in listed} == {"INC-123": "cancelled", "other": "running"}

    done = asyncio.run(actions(backend, bid))
    assert [(a.type, a.by) for a in done] == [
        (ActionType.CREATED, os_user()),
        (ActionType.PAUSED, os_user()),
        (ActionType.RESUMED, os_user()),
        (ActionType.RETRIED, os_user()),
        (ActionType.CANCELLED, os_user()),
    ]
    assert done[3].data == {"runs": [failed_run]}
    assert done[4].data == {"reason": "cancelled by operator", "live_runs": len(seeded)}


def test_an_unknown_or_ambiguous_backfill_is_exit_2_naming_the_candidates(
    cli: Cli, backend: Backend
) -> None:
    ids = asyncio.run(two_scans(backend))
    line = one_error_line(cli("status", "--backfill", SCAN_LABEL), "2 backfills", "give the id")
    assert all(backfill_id in line for backfill_id in ids), line
    line = one_error_line(cli("pause", "--backfill", "abcdef"), "2 backfills")  # a shared prefix
    assert all(backfill_id in line for backfill_id in ids), line
    one_error_line(cli("resume", "--backfill", "abcde"), "no backfill")  # under 6: no prefix
    one_error_line(cli("cancel", "--backfill", "nope"), "no backfill 'nope'")
    one_error_line(cli("retry", "--backfill", "nope", "--failed"), "exactly one")
    one_error_line(cli("retry", "--json", "run-1"), "--json goes with --backfill")
    one_error_line(cli("status", "--backfill", ids[0], "--watch"), "--backfill")
    assert ok(cli("status", "--backfill", ids[0])).stdout.startswith(f"Backfill {ids[0]} (scan)")


async def fail(backend: Backend, run_id: str) -> None:
    async with App(settings_for(backend), redis=False) as app, app.engine.begin() as conn:
        run = await runs.get(conn, run_id)
        assert run is not None
        await runs.append(conn, run, [RunFailed(at=datetime.now(UTC), reason="boom")])


async def actions(backend: Backend, backfill_id: str) -> list[Any]:
    async with App(settings_for(backend), redis=False) as app, app.engine.connect() as conn:
        return await backfills.actions(conn, backfill_id)


async def two_scans(backend: Backend) -> list[str]:
    """Two backfills labelled ``scan`` (as the periodic scan makes them), with ids
    (and run ids) that share the prefix ``abcdef``."""
    counter = itertools.count(1)
    app = App(settings_for(backend), redis=False, new_id=lambda: f"abcdef{next(counter):06d}")
    async with app:
        now = datetime.now(UTC)
        first = await commands.start(app, days=3, now=now, label=SCAN_LABEL)
        second = await commands.start(app, days=14, now=now, label=SCAN_LABEL)
    assert first.backfill is not None and second.backfill is not None
    return [first.backfill.id, second.backfill.id]


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_a_label_holding_rich_markup_is_shown_as_typed_by_start(cli: Cli) -> None:
    """``retro start --label`` echoes the label as typed: Rich markup in it is text,
    never styling, and a stray closing tag does not crash the command after it
    seeded (it did: a ``MarkupError`` traceback, exit 1)."""
    label = "[/bold] [red]INC-9[/red]"
    result = ok(cli("start", "--days", "14", "--label", label))
    assert f"({label})" in result.stdout, result
    assert f"({label})" in ok(cli("status", "--backfill", label)).stdout


DOCS_JSON = Path(__file__).parents[2] / "docs" / "json.md"


def documented_keys(schema: str) -> set[str]:
    """The keys the first table of docs/json.md's section on ``schema`` (or the section
    titled ``schema``) names (a row may name several: `` `run_id`, `match_id` ``)."""
    text = DOCS_JSON.read_text()
    heading = next(
        line
        for line in text.splitlines()
        if line.startswith("#") and (f"`{schema}`" in line or line.endswith(f" {schema}"))
    )
    section = text.split(heading, 1)[1]
    keys: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
        elif keys and not line.startswith("|"):
            break  # the end of the first table
    return keys


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_every_new_json_document_has_the_keys_docs_json_md_names(cli: Cli) -> None:
    """The top-level keys of each ``--json`` document issue 11 added or grew are
    those its section of docs/json.md lists, no more, no fewer."""
    start = json_document(
        cli("start", "--days", "14", "--label", "DOC-1", "--json"), "retro.start/1"
    )
    seeded = start["seeded"]
    documents = [
        start,
        json_document(cli("backfills", "--json"), "retro.backfills/1"),
        json_document(cli("pause", "--backfill", "DOC-1", "--json"), "retro.backfill_action/1"),
        json_document(cli("runs", "--json"), "retro.runs/1"),
        json_document(cli("status", "--backfill", "DOC-1", "--json"), "retro.status/1"),
        json_document(cli("history", seeded[0], "--json"), "retro.history/1"),
        json_document(cli("cancel", "--backfill", "DOC-1", "--json"), "retro.cancel/1"),
    ]
    for document in documents:
        assert set(document) == documented_keys(document["schema"]), document["schema"]
    (backfill,) = documents[1]["backfills"]
    assert set(backfill) == documented_keys("A backfill object")


@pytest.mark.parametrize("backend", ["sqlite-embedded"], indirect=True)
def test_runs_names_a_backfill_as_every_other_backfill_option_does(cli: Cli) -> None:
    """``retro runs --backfill`` takes what ``status --backfill`` takes: an id
    prefix of 6 or more characters too (it refused one: exit 2)."""
    seeded = started(cli, "--days", "14", "--label", "INC-5")
    prefix = seeded["backfill"]["id"][:8]
    listed = json_document(cli("runs", "--backfill", prefix, "--json"), "retro.runs/1")
    assert listed["filters"]["backfill"] == seeded["backfill"]
    assert sorted(r["run_id"] for r in listed["runs"]) == sorted(seeded["seeded"])
    one_error_line(cli("runs", "--backfill", prefix[:5]), "no backfill")  # too short
