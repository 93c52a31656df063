"""Ids and text BullMQ or a log cannot carry: the job-id encoding (round trip, ordinary
ids unchanged, Node bullmq's rules), the daemon's recognition of encoded ids, the
machine's refusal of a job id BullMQ cannot carry, and escaping in both log formats."""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retro import jobids
from retro.app import App
from retro.config import load_settings
from retro.events import Phase, RunFailed, RunSeeded
from retro.logs import setup_logging
from retro.machine import Facts, Policy, decide, project
from retro.report import dumps
from retro.scheduler import Daemon
from retro.text import escape, json_safe

TEMPLATES = tuple(Policy().job_ids.values())
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates too
"""Any string, lone surrogates included (hypothesis leaves them out by default)."""
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character ``str.splitlines`` breaks a line at."""


# --- the encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "match_id", ["m-1", "12345", "n-all", "Ünïcödé", "a/b.c_d~e+f", "uuid-4f1c0e6e", "日本"]
)
def test_ordinary_ids_keep_their_job_ids(match_id: str) -> None:
    assert jobids.encode(match_id) == match_id
    assert Policy().job_id(Phase.ANALYSIS, match_id) == f"analyze-retro-{match_id}"


@pytest.mark.parametrize(
    ("match_id", "encoded"),
    [
        ("epl:2024:123", "epl%3A2024%3A123"),
        ("x:logs", "x%3Alogs"),
        ("50%", "50%25"),
        ("50%3A", "50%253A"),
        ("a b", "a%20b"),
        ("a\nb", "a%0Ab"),
        ("a\x1b[2J", "a%1B[2J"),
        ("a\u2028b", "a%E2%80%A8b"),
        ("zero\u200bwidth", "zero%E2%80%8Bwidth"),
        ("nb\u00a0sp", "nb%C2%A0sp"),
        ("\ud800", "%ED%A0%80"),
    ],
)
def test_ids_bullmq_cannot_carry_are_percent_encoded(match_id: str, encoded: str) -> None:
    assert jobids.encode(match_id) == encoded
    assert jobids.decode(encoded) == match_id


def _node_refuses(job_id: str) -> bool:
    """Node bullmq 5.81 ``Job.validateOptions`` and ``Queue.add`` on a custom ``jobId``,
    transcribed: an integer, a ``:`` unless exactly two, ``0`` or a ``0:`` prefix."""
    try:
        integer = str(int(job_id, 10)) == job_id
    except ValueError:
        integer = False
    colon = ":" in job_id and len(job_id.split(":")) != 3
    return integer or colon or job_id == "0" or job_id.startswith("0:")


def _control(code: int) -> bool:
    """C0, DEL, C1 or a surrogate, by code point."""
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF


@given(ANY_TEXT)
def test_every_match_id_makes_a_job_id_bullmq_carries_and_decodes_back(match_id: str) -> None:
    encoded = jobids.encode(match_id)
    assert jobids.decode(encoded) == match_id
    # Independent of the encoder: '%' only starts an escape of upper-case hex; no ':',
    # no whitespace or control character; only what needed it changed.
    assert re.fullmatch(r"(?:[^%]|%[0-9A-F]{2})*", encoded), encoded
    assert ":" not in encoded
    assert not any(c.isspace() or c in LINE_BREAKS or _control(ord(c)) for c in encoded), encoded
    if not any(c in "%:" or not c.isprintable() or c.isspace() for c in match_id):
        assert encoded == match_id
    for template in TEMPLATES:
        job_id = jobids.job_id(template, match_id)
        assert not _node_refuses(job_id), job_id
        assert jobids.refusal(job_id) is None, job_id
        if match_id:  # an empty id is not told from a template's own text ("custom--a")
            assert jobids.pattern(TEMPLATES).fullmatch(job_id), job_id


@given(ANY_TEXT, ANY_TEXT)
def test_no_job_id_is_another_jobs_key(a: str, b: str) -> None:
    """``{jobId}:logs`` and the other per-job keys never equal a job id's key."""
    for suffix in ("logs", "lock", "dependencies", "processed", "failed", "unsuccessful"):
        assert jobids.job_id(TEMPLATES[0], a) != f"{jobids.job_id(TEMPLATES[0], b)}:{suffix}"


@pytest.mark.parametrize(
    ("job_id", "rule"),
    [
        ("a:b", "':'"),
        ("17", "integer"),
        ("-3", "integer"),
        ("0", "integer"),
        ("wait", "BullMQ's own key names"),
        ("meta", "BullMQ's own key names"),
        ("metrics", "BullMQ's own key names"),  # Node keeps metrics:completed under it
    ],
)
def test_a_job_id_bullmq_cannot_carry_is_refused(job_id: str, rule: str) -> None:
    refusal = jobids.refusal(job_id)
    assert refusal is not None and rule in refusal


def test_its_run_fails_at_once_naming_the_id_and_the_rule() -> None:
    policy = Policy(job_ids={**Policy().job_ids, Phase.ANALYSIS: "wai{matchId}"})
    run = project(
        [RunSeeded(at=NOW, run_id="r", match_id="t", gaps=("analysis",), found=0, expected=3)]
    )
    facts = Facts(match_found=True, match_status="finished", home_score=1, away_score=0)
    event = decide(run, facts, now=NOW, policy=policy)
    assert isinstance(event, RunFailed), event
    assert event.reason == (
        "match id 't' gives job id 'wait': 'wait' is one of BullMQ's own key names of a queue"
    )
    ordinary = decide(run, facts, now=NOW, policy=Policy())
    assert not isinstance(ordinary, RunFailed), ordinary


@pytest.mark.parametrize(
    ("job_id", "wakes"),
    [
        ("analyze-retro-epl%3A2024%3A123", True),
        ("settle-retro-x%3Alogs", True),
        ("predict-retro-a%0Ab", True),
        ("analyze-retro-x:logs", False),  # a raw ':' is never one of retro's ids
        ("analyze-retro-50%", False),  # nor a '%' that starts no escape
    ],
)
async def test_the_daemon_wakes_for_encoded_job_ids(job_id: str, wakes: bool) -> None:
    settings = load_settings(database_url="sqlite+aiosqlite:///never-opened.db")
    daemon = Daemon(App(settings, redis=False))
    daemon._on_job_finished(job_id)
    assert daemon._wake.is_set() is wakes


# --- escaping ----------------------------------------------------------------------------


@given(ANY_TEXT)
def test_escape_leaves_no_line_break_and_keeps_printable_text(text: str) -> None:
    shown = escape(text)
    assert len(shown.splitlines()) <= 1 and shown.isprintable(), shown
    if text.isprintable():
        assert shown == text
    # Python's own reading of the escapes gives the text back when it held no backslash.
    if "\\" not in text and "'" not in text:
        assert ast.literal_eval(f"'{shown}'") == text


@given(ANY_TEXT)
def test_json_safe_keeps_the_document_and_leaves_no_raw_line_break(text: str) -> None:
    document = {"k": text, "n": [1, text]}
    encoded = json_safe(json.dumps(document, ensure_ascii=False, indent=2))
    assert json.loads(encoded) == document
    assert not any(c in encoded for c in LINE_BREAKS.replace("\n", ""))
    assert encoded.count("\n") == json.dumps(document, indent=2).count("\n")
    assert dumps(document) == encoded


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What the log wrote to stderr; the root logger is restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield lambda: capsys.readouterr().err
    root.handlers[:] = handlers
    root.setLevel(level)


EVIL = "x\n2031-01-01 00:00:00,000 INFO retro forged\r\x1b[31m\u2028\x85y"


def emit_evil() -> None:
    log = logging.getLogger("retro")
    log.warning("match %s failed: %s", EVIL, EVIL, extra={"match": EVIL, "team": "[red]x"})
    try:
        raise RuntimeError(EVIL)
    except RuntimeError:
        log.exception("boom %s", EVIL)


def test_console_logs_escape_outside_text(stderr: Callable[[], str]) -> None:
    setup_logging(False, "console")
    emit_evil()
    text = stderr()
    assert not any(c in text for c in LINE_BREAKS.replace("\n", "") + "\x1b"), text
    heads = [line for line in text.split("\n") if line and not line.startswith("    ")]
    assert len(heads) == 2, text  # one line per record; the traceback indented
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) for line in heads), text
    escaped = "x\\n2031-01-01 00:00:00,000 INFO retro forged\\r\\x1b[31m\\u2028\\x85y"
    assert f"failed: {escaped} match=" in heads[0], heads
    assert 'match="x\\n2031-01-01 00:00:00,000 INFO retro forged\\r\\u001b[31m' in heads[0]
    assert heads[0].endswith(" team=[red]x"), heads
    lines = text.split("\n")  # the exception's own line break stays inside the traceback
    assert "    RuntimeError: x" in lines, text
    assert "    2031-01-01 00:00:00,000 INFO retro forged\\r\\x1b[31m\\u2028\\x85y" in lines


def test_json_logs_escape_outside_text_by_the_encoder(stderr: Callable[[], str]) -> None:
    setup_logging(False, "json")
    emit_evil()
    text = stderr()
    assert not any(c in text for c in LINE_BREAKS.replace("\n", "") + "\x1b"), text
    records = [json.loads(line) for line in text.split("\n") if line]
    assert len(records) == 2, text
    assert records[0]["msg"] == f"match {EVIL} failed: {EVIL}"
    assert records[0]["match"] == EVIL and records[0]["team"] == "[red]x"
    assert records[1]["msg"] == f"boom {EVIL}" and EVIL in records[1]["exc_info"]


def test_event_data_in_a_log_message_cannot_pass_for_fields() -> None:
    """A worker's failure reason that looks like ``key=value`` pairs stays one quoted
    value: a logfmt reader sees ``reason`` alone, never a forged ``run``/``event``."""
    from retro.events import JobFailed
    from retro.logs import logfmt_value
    from retro.tick import _describe

    spoof = 'boom run=000000000000 event=RunCompleted match="p-0"'
    text = _describe(
        JobFailed(at=datetime(2025, 5, 20, tzinfo=UTC), phase="analysis", reason=spoof)
    )
    assert f"reason={json.dumps(spoof)}" in text
    assert " run=000000000000" not in text.replace(json.dumps(spoof), "")
    assert logfmt_value("plain-id_1") == "plain-id_1"
    assert logfmt_value("a b") == '"a b"'
    assert logfmt_value("k=v") == '"k=v"'


def test_history_says_when_the_recording_clock_went_back() -> None:
    from retro.cli.render import _since

    at = datetime(2025, 5, 20, 12, tzinfo=UTC)
    assert _since(at, at.replace(second=2)) == "+2.000 s"
    assert _since(at, at.replace(hour=11)) == "-3600.000 s (clock went back)"
