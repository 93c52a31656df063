"""Notifications, the pure parts: the ``notify_url`` setting (checked, masked), the
bodies and their one-line ``text``, the back-off formula and the masking of httpx's
log lines."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retro.config import ConfigError, load_settings, mask_webhook, public_values, redact
from retro.demo.scenario import demo_settings
from retro.notification import (
    FAILED_RUNS_SHOWN,
    FailedRun,
    backfill_finished,
    duration_text,
    run_failed,
)
from retro.notify import BACKOFF_CAP, MaskUrlPaths, backoff

TOKEN = "XXXXs3cretXXXX"
HOOK = f"https://hooks.slack.com/services/T000/B000/{TOKEN}"
AT = datetime(2025, 5, 26, 12, 12, 3, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (f"ftp://hooks.example/{TOKEN}", "'ftp'"),
        (f"hooks.slack.com/services/{TOKEN}", "(none)"),
        (f"https:///{TOKEN}", "no host"),
        (f"https://hooks.example:99999/{TOKEN}", "'99999'"),
        (f" https://hooks.example/{TOKEN}", "blanks"),
        (f"https://hooks.example/{TOKEN}\nX-Evil: 1", "control"),
    ],
)
def test_a_bad_notify_url_is_one_line_without_the_url(value: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(notify_url=value)
    message = str(raised.value)
    assert "RETRO_NOTIFY_URL" in message and named in message
    assert TOKEN not in message and "\n" not in message


def test_notify_url_shows_only_scheme_host_and_port() -> None:
    assert load_settings(notify_url=HOOK).notify_url == HOOK
    assert public_values(load_settings(notify_url=HOOK))["notify_url"] == (
        "https://hooks.slack.com/***"
    )
    assert public_values(load_settings())["notify_url"] is None
    assert mask_webhook(f"http://u:{TOKEN}@10.0.0.1:8080/?t={TOKEN}") == (
        "http://***@10.0.0.1:8080/***"
    )
    assert mask_webhook("http://[::1]:9000") == "http://[::1]:9000"
    assert redact(f"error for url '{HOOK}'", HOOK) == "error for url 'https://hooks.slack.com/***'"
    assert TOKEN not in redact(f"GET /services/T000/B000/{TOKEN} failed", HOOK)


def test_run_failed_text_is_one_line_that_forges_nothing() -> None:
    note = run_failed(
        run_id="7f78947afca6",
        seq=4,
        match_id="m\n1",
        reason="boom\r\nretro: all good postgresql://u:pw@db/x",
        at=AT,
        phase="analysis",
        attempt=3,
        home_team="<!channel> & co",
        away_team=None,
        backfill_id="a1b2c3d4e5f6",
        backfill_label="INC-1",
    )
    assert note.key == "run-failed:7f78947afca6:4" and note.kind == "run.failed"
    body = note.payload
    assert body["idempotency_key"] == note.key and body["schema"] == "retro.notification/1"
    assert body["at"] == "2025-05-26T12:12:03Z"
    text = body["text"]
    assert text == (
        "retro: run 7f78947afca6 (match m\\n1, &lt;!channel&gt; &amp; co - ?) of backfill INC-1 "
        "failed in analysis: boom\\r\\nretro: all good postgresql://u:***@db/x"
    )
    assert body["run"]["home_team"] == "<!channel> & co"  # structured: as stored
    assert body["run"]["reason"] == "boom\r\nretro: all good postgresql://u:***@db/x"
    assert body["run"]["attempt"] == 3 and body["run"]["phase"] == "analysis"


def test_backfill_finished_lists_failures_bounded() -> None:
    failed = [FailedRun(f"r{i}", f"m{i}", f"reason {i}") for i in range(FAILED_RUNS_SHOWN)]
    note = backfill_finished(
        backfill_id="a1b2c3d4e5f6",
        label="INC-123",
        n=2,
        created_at=AT - timedelta(minutes=12),
        at=AT,
        cancelled=False,
        counts={"done": 98, "failed": FAILED_RUNS_SHOWN + 7, "cancelled": 0},
        failed=failed,
    )
    body = note.payload
    assert note.key == "backfill-finished:a1b2c3d4e5f6:2"
    assert body["text"].startswith(
        f"retro: backfill INC-123 (a1b2c3d4e5f6) finished in 12 min: 98 done, "
        f"{FAILED_RUNS_SHOWN + 7} failed, 0 cancelled; first failure: run r0 (match m0): reason 0"
    )
    assert body["counts"]["runs"] == 98 + FAILED_RUNS_SHOWN + 7
    assert len(body["failed_runs"]) == FAILED_RUNS_SHOWN and body["more_failed_runs"] == 7
    assert body["duration_seconds"] == 720.0
    assert body["backfill"]["state"] == "finished"
    cancelled = backfill_finished(
        backfill_id="b",
        label="x",
        n=0,
        created_at=AT,
        at=AT,
        cancelled=True,
        counts={"cancelled": 3},
        failed=[],
    )
    assert "was cancelled after 0 s: 0 done, 0 failed, 3 cancelled" in cancelled.payload["text"]
    assert cancelled.payload["backfill"]["state"] == "cancelled"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (59.4, "59 s"),
        (720, "12 min"),
        (3600, "1 h"),
        (11100, "3 h 5 min"),
        (86400 * 2 + 3 * 3600, "2 d 3 h"),
    ],
)
def test_durations_read_as_people_say_them(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_backoff_doubles_from_one_second_up_to_five_minutes() -> None:
    assert [backoff(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backoff(9) == 256 and backoff(10) == backoff(10_000) == BACKOFF_CAP == 300


def test_httpx_request_lines_lose_the_urls_path() -> None:
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: POST %s "%s"',
        (HOOK, "HTTP/1.1 200 OK"),
        None,
    )
    assert MaskUrlPaths().filter(record)
    assert record.getMessage() == (
        'HTTP Request: POST https://hooks.slack.com/*** "HTTP/1.1 200 OK"'
    )


def test_the_demo_never_posts_to_the_operators_webhook(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RETRO_NOTIFY_URL", HOOK)
    assert load_settings().notify_url == HOOK
    assert demo_settings(tmp_path).notify_url is None
