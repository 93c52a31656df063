"""What ``retro runs --since`` and ``--state`` accept (pure parsing, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retro.errors import EXIT_USAGE, UsageError
from retro.lookup import parse_since, parse_states
from retro.machine import State

NOW = datetime(2025, 5, 26, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("30s", timedelta(seconds=30)),
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        (" 7d ", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("0m", timedelta(0)),
    ],
)
def test_a_duration_counts_back_from_now(text: str, back: timedelta) -> None:
    assert parse_since(text, now=NOW) == NOW - back


@pytest.mark.parametrize(
    ("text", "instant"),
    [
        ("2025-05-20", datetime(2025, 5, 20, tzinfo=UTC)),  # a date: its midnight, UTC
        ("2025-05-20T08:30", datetime(2025, 5, 20, 8, 30, tzinfo=UTC)),  # naive: UTC
        ("2025-05-20 08:30:15", datetime(2025, 5, 20, 8, 30, 15, tzinfo=UTC)),
        ("2025-05-20T08:30Z", datetime(2025, 5, 20, 8, 30, tzinfo=UTC)),
        ("2025-05-20T10:30:00+02:00", datetime(2025, 5, 20, 8, 30, tzinfo=UTC)),
        ("2025-05-20T03:30:00.250-05:00", datetime(2025, 5, 20, 8, 30, 0, 250_000, tzinfo=UTC)),
    ],
)
def test_an_iso_instant_or_date_is_utc(text: str, instant: datetime) -> None:
    parsed = parse_since(text, now=NOW)
    assert parsed == instant
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    ["", "yesterday", "2h30m", "-2h", "2 h", "2H", "1.5h", "2y", "h", "2025-13-01", "99999999w"],
)
def test_anything_else_is_a_usage_error_naming_it(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_since(text, now=NOW)
    assert caught.value.exit_code == EXIT_USAGE
    message = str(caught.value)
    assert repr(text) in message and "\n" not in message


def test_states_take_commas_repeats_and_live_in_the_order_of_a_run() -> None:
    assert parse_states([]) is None
    assert parse_states(["failed"]) == (State.FAILED,)
    assert parse_states(["failed,pending", "done"]) == (State.PENDING, State.DONE, State.FAILED)
    assert parse_states(["live"]) == (
        State.PENDING,
        State.ANALYZING,
        State.PREDICTING,
        State.SETTLING,
    )
    assert parse_states(["LIVE, cancelled", "pending"]) == (
        State.PENDING,
        State.ANALYZING,
        State.PREDICTING,
        State.SETTLING,
        State.CANCELLED,
    )


@pytest.mark.parametrize("value", ["bogus", "failed,", "failed,,done", "running"])
def test_an_unknown_state_is_a_usage_error_listing_the_states(value: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_states([value])
    message = str(caught.value)
    assert "is no run state" in message
    assert all(str(state) in message for state in State) and "live" in message
