"""Golden event streams under ``tests/histories/`` replayed through the machine.

Each file is ``{"description", "expect", "checkpoints"?, "events"}`` where
``events`` are stored rows ``{"type", "data", "at"}`` (``at`` ISO-8601, UTC).
``expect`` is the projection after the whole stream; each checkpoint is the
projection after its first ``after`` events. ``illegal_*.json`` streams must
be refused with ``IllegalTransition``.

Most streams were written before backfills (migration 0005): their ``RunSeeded``
has no ``backfill_id``. They are kept as stored, the golden histories of the
upcast: they replay into the legacy backfill.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from retro.events import Event, UnknownEvent, from_record, to_record
from retro.machine import IllegalTransition, Run, project

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
ALL = sorted(HISTORIES.glob("*.json"))
ILLEGAL = [p for p in ALL if p.name.startswith("illegal_")]
GOLDEN = [p for p in ALL if p not in ILLEGAL]


def read(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def parse_at(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    assert at.utcoffset() == timedelta(0), f"{text} is not aware UTC"
    return at


def events_of(doc: dict[str, Any]) -> list[Event]:
    return [from_record(r["type"], r["data"], parse_at(r["at"])) for r in doc["events"]]


def plain(value: Any) -> Any:
    """A projection field as it is written in the JSON files."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def assert_projection(run: Run, expect: dict[str, Any], where: str) -> None:
    for key, want in expect.items():
        if key == "after":
            continue
        assert plain(getattr(run, key)) == want, f"{where}: {key}"


def test_the_histories_are_there() -> None:
    assert len(GOLDEN) >= 3
    assert ILLEGAL


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_history_replays_to_its_expected_projection(path: Path) -> None:
    doc = read(path)
    events = events_of(doc)
    run = project(events)
    assert run.version == len(events)
    assert_projection(run, doc["expect"], f"{path.name} final")
    for checkpoint in doc.get("checkpoints", []):
        after = checkpoint["after"]
        assert_projection(project(events[:after]), checkpoint, f"{path.name} after {after}")


def upcast(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as this version writes it: a ``RunSeeded`` stored before migration
    0005 gains ``backfill_id: "legacy"``; every other row is unchanged."""
    if row["type"] != "RunSeeded" or "backfill_id" in row["data"]:
        return row
    return {**row, "data": {**row["data"], "backfill_id": "legacy"}}


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_stored_rows_are_exactly_what_to_record_writes(path: Path) -> None:
    doc = read(path)
    previous: datetime | None = None
    for row, event in zip(doc["events"], events_of(doc), strict=True):
        type_, data, at = to_record(event)
        written = {"type": type_, "data": json.loads(json.dumps(data)), "at": at.isoformat()}
        assert written == upcast(row)
        assert previous is None or at >= previous
        previous = at


@pytest.mark.parametrize("path", ILLEGAL, ids=[p.stem for p in ILLEGAL])
def test_illegal_history_is_refused(path: Path) -> None:
    doc = read(path)
    assert doc["expect"] == {"raises": "IllegalTransition"}
    with pytest.raises(IllegalTransition):
        project(events_of(doc))


def test_a_run_seeded_before_backfills_replays_into_the_legacy_backfill() -> None:
    doc = read(HISTORIES / "clean_heal.json")
    assert "backfill_id" not in doc["events"][0]["data"]  # stored before migration 0005
    assert project(events_of(doc)).backfill_id == "legacy"
    named = read(HISTORIES / "clean_heal_in_backfill.json")
    assert project(events_of(named)).backfill_id == "0a1b2c3d4e5f"


def test_unknown_event_type_is_refused() -> None:
    doc = read(HISTORIES / "clean_heal.json")
    doc["events"][2]["type"] = "AnalysisVanished"
    with pytest.raises(UnknownEvent, match="AnalysisVanished"):
        events_of(doc)


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("AnalysisRequested", {"job_id": "analyze-retro-1001"}),
        ("RetryScheduled", {"phase": "analysis", "not_before": "next tuesday"}),
    ],
)
def test_unusable_event_data_is_refused(type_: str, data: dict[str, Any]) -> None:
    with pytest.raises(UnknownEvent, match=type_):
        from_record(type_, data, parse_at("2025-03-01T10:00:00+00:00"))


@pytest.mark.parametrize("path", ILLEGAL, ids=[p.stem for p in ILLEGAL])
def test_illegal_history_breaks_one_rule_at_its_last_event(path: Path) -> None:
    """Each illegal stream is legal up to its last event, so it tests the one rule
    its last event breaks, not an earlier accident."""
    events = events_of(read(path))
    assert project(events[:-1]).version == len(events) - 1
