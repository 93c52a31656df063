"""Append errors by name: a database refusal on the run log becomes a domain error.

This is the one place where an ``IntegrityError`` from an append is translated
(STYLE 13: a constraint maps to a domain error only by its name):

- ``uq_backfill_events_run_seq`` (``UNIQUE (run_id, seq)``): a rival daemon
  appended first, :class:`ConcurrencyError` (a lost race; deciding again is right);
- ``uq_backfill_runs_live_match`` (one live run per match): :class:`LiveRunExists`;
- anything else (a constraint or trigger the host or a DBA added, a constraint
  this version does not know): :class:`AppendRejected`, never a race.

PostgreSQL names the violated constraint (``diag.constraint_name``). SQLite does
not: its message names the table and columns of a UNIQUE constraint or index
(``UNIQUE constraint failed: backfill_events.run_id, backfill_events.seq``), so
the name is found by matching those columns against the schema's own
constraints, which are checked at import to have distinct column sets.
"""

from __future__ import annotations

from sqlalchemy import Index, Table, UniqueConstraint
from sqlalchemy.exc import IntegrityError

from retro.store.schema import backfill_events, backfill_runs

RUN_SEQ = "uq_backfill_events_run_seq"
"""``UNIQUE (run_id, seq)`` on the event log: the optimistic-concurrency key."""

LIVE_MATCH = "uq_backfill_runs_live_match"
"""Partial unique index: at most one unfinished run per match."""


class ConcurrencyError(RuntimeError):
    """Another writer appended to this run first (UNIQUE(run_id, seq) or version moved)."""


class LiveRunExists(RuntimeError):
    """The match already has a live (unfinished) run; nothing was written."""


class AppendRejected(RuntimeError):
    """The database refused an append for a reason that is not a race.

    Attributes:
        run_id: the run whose events were refused.
        constraint: the violated constraint's name, or ``None`` when the database
            did not name one (an SQLite trigger's ``RAISE``, a CHECK).
        cause: the database's message, on one line.
    """

    def __init__(self, run_id: str, constraint: str | None, cause: str) -> None:
        self.run_id = run_id
        self.constraint = constraint
        self.cause = cause
        named = f" ({constraint})" if constraint else ""
        super().__init__(f"run {run_id}: the database refused the append{named}: {cause}")


class BackfillPaused(AppendRejected):
    """The events would start a job (a ``…Requested`` or ``JobReenqueued``) for a
    run whose backfill is paused (``retro pause --backfill``): nothing was written.
    Not an error of the run: it goes on once the backfill is resumed.

    Attributes:
        backfill_id: the paused backfill.
    """

    def __init__(self, run_id: str, backfill_id: str) -> None:
        self.backfill_id = backfill_id
        super().__init__(run_id, None, f"backfill {backfill_id} is paused")


def _sqlite_signature(table: Table, columns: list[str]) -> str:
    return ", ".join(f"{table.name}.{column}" for column in columns)


def _unique_signatures() -> dict[str, str]:
    """SQLite's ``UNIQUE constraint failed: …`` text for each named unique key of
    retro's tables, mapped to the key's name."""
    found: dict[str, str] = {}
    for table in (backfill_events, backfill_runs):
        keys: list[tuple[str, list[str]]] = [
            (str(c.name), [col.name for col in c.columns])
            for c in table.constraints
            if isinstance(c, UniqueConstraint) and c.name
        ]
        keys += [
            (str(i.name), [col.name for col in i.columns])
            for i in table.indexes
            if isinstance(i, Index) and i.unique and i.name
        ]
        keys.append((f"{table.name}_pkey", [col.name for col in table.primary_key.columns]))
        for name, columns in keys:
            signature = _sqlite_signature(table, columns)
            assert signature not in found, f"{name} and {found[signature]} share columns"
            found[signature] = name
    return found


SQLITE_UNIQUE = _unique_signatures()
"""``"backfill_events.run_id, backfill_events.seq"`` → ``uq_backfill_events_run_seq``, …"""


def constraint_name(exc: IntegrityError) -> str | None:
    """The name of the constraint ``exc`` violated, or ``None`` if the database
    named none (a trigger's ``RAISE`` on SQLite, a CHECK on SQLite)."""
    diag = getattr(exc.orig, "diag", None)
    if diag is not None:  # psycopg: PostgreSQL names it
        name = getattr(diag, "constraint_name", None)
        return str(name) if name else None
    message = str(exc.orig)
    prefix = "UNIQUE constraint failed: "
    if message.startswith(prefix):
        return SQLITE_UNIQUE.get(message[len(prefix) :].strip())
    return None


def translate(exc: IntegrityError, run_id: str) -> Exception:
    """The domain error for ``exc``, raised while appending to ``run_id``."""
    name = constraint_name(exc)
    if name == RUN_SEQ:
        return ConcurrencyError(f"run {run_id}: lost an append race")
    if name == LIVE_MATCH:
        return LiveRunExists(f"run {run_id}: its match already has a live run")
    cause = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
    return AppendRejected(run_id, name, cause)
