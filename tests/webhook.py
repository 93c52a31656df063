"""A real webhook receiver for the notification tests, and a tiny host to heal.

:class:`Receiver` is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 (an ephemeral
port), in a thread: it answers its first ``fail_first`` POSTs with HTTP 500 and
accepts the others (HTTP 200), keeping every call. It dedups by idempotency key
as a real receiver would: :meth:`Receiver.accepted` maps each key it accepted to
the body of its first acceptance, and :meth:`Receiver.acceptances` counts how
often each key was accepted (at least once delivery allows more than one).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from retro.pipeline import host
from retro.pipeline.host_rows import MatchRow, iso_utc
from retro.store.db import create_engine
from tests import slowjobs

TOKEN = "T0KEN-s3cret-path"
"""The secret part of the receiver's URL (its path), as a Slack webhook's."""


@dataclass(frozen=True)
class Call:
    """One POST the receiver got: its status answered, the ``Idempotency-Key``
    header, the content type and the body (parsed JSON)."""

    status: int
    key: str | None
    content_type: str | None
    body: dict[str, Any]


class Receiver:
    """A webhook receiver on ``url`` (``http://127.0.0.1:<port>/hooks/<TOKEN>``).

    Use as a context manager; the server stops on exit.
    """

    def __init__(self, *, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    failing = len(receiver.calls) < receiver.fail_first
                    status = 500 if failing else 200
                    receiver.calls.append(
                        Call(
                            status,
                            self.headers.get("Idempotency-Key"),
                            self.headers.get("Content-Type"),
                            body,
                        )
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{TOKEN}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def snapshot(self) -> list[Call]:
        """The calls so far."""
        with self._lock:
            return list(self.calls)

    def acceptances(self) -> Counter[str]:
        """How many times each key was accepted (HTTP 200)."""
        return Counter(c.key for c in self.snapshot() if c.status == 200 and c.key)

    def accepted(self) -> dict[str, dict[str, Any]]:
        """Each key accepted, deduplicated: the body of its first acceptance."""
        bodies: dict[str, dict[str, Any]] = {}
        for call in self.snapshot():
            if call.status == 200 and call.key and call.key not in bodies:
                bodies[call.key] = call.body
        return bodies


GOOD = ("N1", "N2")
"""Matches that heal (an external id; the reference workers do the rest)."""
DOOMED = "N3"
"""A match that cannot heal: no analysis and no external id (its run fails at once)."""


async def make_host(
    database_url: str, *, good: tuple[str, ...] = GOOD, doomed: bool = True
) -> None:
    """Finished matches of yesterday (``good`` ones and, with ``doomed``, :data:`DOOMED`
    with a team name that tries to forge a line and a Slack mention), two models,
    retro's tables (:func:`tests.slowjobs.make_host`, plus the doomed match)."""
    await slowjobs.make_host(database_url, good)
    if not doomed:
        return
    engine = create_engine(database_url)
    try:
        kickoff = iso_utc(datetime.now(UTC) - timedelta(days=1))
        evil = "Evil\nretro: forged <!channel>"
        await host.insert_matches(
            engine, [MatchRow(DOOMED, None, "xx.1", evil, "Away", kickoff, 1, 0, "finished")]
        )
    finally:
        await engine.dispose()
