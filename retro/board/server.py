"""retro's HTTP server: the board, ``/metrics`` and ``/healthz`` (:mod:`retro.board.app`)
on uvicorn, for ``retro run --http-port``, ``retro board`` and ``retro demo --board``.

**Why a thread of its own.** uvicorn runs in a daemon thread with its own event loop,
and the board reads through connections opened in that loop (its own async engine
and Redis clients, a synchronous engine for ``/healthz``). The daemon's loop never
awaits the server and the server never awaits the daemon's loop: a slow page, a
scrape counting runs or a health check on a stuck database cannot delay a tick, and
a busy tick cannot stall ``/healthz`` (which must say so when the tick is stuck).
Running uvicorn as a task in the daemon's loop would share that loop with every
request and every page's queries; a thread costs one loop and one small pool. The
only state shared with the daemon is :class:`retro.metrics.Metrics` (thread-safe
prometheus-client objects and attributes read whole).

**Every wait is bounded.** The socket is bound at construction (a taken port fails
before anything else, :class:`~retro.config.ConfigError`); :meth:`HttpServer.start`
waits at most :data:`STARTUP_SECONDS` for the app's start-up (its connections) and
raises the start-up's own error, or a timeout; :meth:`HttpServer.close` asks uvicorn
to stop, gives open requests :data:`GRACE_SECONDS`, then forces it and waits at
most :data:`STOP_SECONDS` for the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from datetime import datetime

import uvicorn

from retro.board.app import Site, create_app, open_board
from retro.config import ConfigError, error_line
from retro.errors import RetroError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
"""Port of ``retro board`` and ``retro demo --board`` when none is given (and
``http_port`` is 0)."""
STARTUP_SECONDS = 20.0
"""Seconds :meth:`HttpServer.start` waits for the app's start-up (database checks,
connections) before giving up."""
GRACE_SECONDS = 2.0
"""Seconds open requests get to finish once the server is asked to stop."""
STOP_SECONDS = 5.0
"""Seconds :meth:`HttpServer.close` waits for the server's thread after forcing it."""


class ServerError(RetroError):
    """The HTTP server did not start (exit 1); the message says why."""


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, setting ``ready`` once it listens. Signals stay with the
    process's owner: uvicorn installs handlers only from the main thread."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


class HttpServer:
    """The board, ``/metrics`` and ``/healthz`` on ``host:port`` (port 0: a free one),
    from a thread of its own (see the module doc). Use :meth:`start`, then
    :meth:`close` (also after a failed start).

    Raises (on construction):
        ConfigError: the host does not resolve or the port cannot be bound (in use,
            or privileged); the message names both.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )[0]
            self._socket = socket.socket(family, kind, proto)
            try:
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._socket.bind(address)
            except OSError:
                self._socket.close()
                raise
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"HTTP server (board, metrics, health) cannot listen on {host}:{port}: {reason}"
            ) from None
        self.port = int(self._socket.getsockname()[1])
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        """Set when the server listens, or its thread gave up (``_failure``)."""
        self._stop = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` as an operator types it (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def serving(self) -> bool:
        """The server's thread is running (started and not stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, site: Site, *, clock: Callable[[], datetime] | None = None) -> None:
        """Serve ``site`` and return once the server answers.

        Raises:
            RetroError: opening the board failed (e.g. ``StoreError``: the database
                is unreachable or lacks retro's tables), raised as it was.
            ServerError: it did not start within :data:`STARTUP_SECONDS`, or
                failed otherwise (the message names the error).
        """
        self._thread = threading.Thread(
            target=self._serve, args=(site, clock), name="retro-http", daemon=True
        )
        self._thread.start()
        started = self._ready.wait(STARTUP_SECONDS)
        failure = self._failure
        if started and failure is None:
            log.info(
                "board on %s, %shealth on /healthz (%s:%d)",
                self.url,
                "" if site.probes is None else "metrics on /metrics, ",  # retro board: none
                self.host,
                self.port,
            )
            return
        self.close()
        if isinstance(failure, RetroError):
            raise failure
        if failure is None:
            raise ServerError(
                f"HTTP server on {self.host}:{self.port} did not start within {STARTUP_SECONDS:g} s"
            )
        raise ServerError(
            f"HTTP server on {self.host}:{self.port} did not start: "
            f"{type(failure).__name__}: {error_line(failure)}"
        )

    def _serve(self, site: Site, clock: Callable[[], datetime] | None) -> None:
        """The thread: open the board and serve it on uvicorn, on an event loop of its
        own, until :meth:`close`."""
        try:
            asyncio.run(self._until_stopped(site, clock))
        except BaseException as exc:  # kept for start(), or logged: never lost
            if self._ready.is_set():
                log.error("HTTP server stopped: %s: %s", type(exc).__name__, error_line(exc))
            else:
                self._failure = exc
        finally:
            self._ready.set()

    async def _until_stopped(self, site: Site, clock: Callable[[], datetime] | None) -> None:
        async with open_board(site) as board:
            config = uvicorn.Config(
                create_app(board, clock=clock),
                log_config=None,  # retro's logging (retro.logs) formats uvicorn's lines
                access_log=False,  # a scrape or a poll every 2 s would drown the log
                lifespan="off",  # open_board is the start-up
                timeout_graceful_shutdown=int(GRACE_SECONDS),
                server_header=False,
            )
            self._server = server = _Uvicorn(config, self._ready)
            if self._stop.is_set():
                return
            try:
                await server.serve(sockets=[self._socket])
            except SystemExit:  # uvicorn's word for a failed start-up
                raise ServerError("uvicorn could not start") from None

    def close(self) -> None:
        """Stop serving (open requests get :data:`GRACE_SECONDS`), close the board's
        connections and release the port; waits at most ``GRACE_SECONDS + 1 +
        STOP_SECONDS`` seconds in all."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            if self._server is not None:
                self._server.should_exit = True
            thread.join(GRACE_SECONDS + 1.0)
            if thread.is_alive() and self._server is not None:
                self._server.should_exit = True  # set before the server existed
                self._server.force_exit = True
                thread.join(STOP_SECONDS)
            if thread.is_alive():
                log.warning(
                    "HTTP server thread did not stop within %g s; left behind (a daemon thread)",
                    GRACE_SECONDS + 1.0 + STOP_SECONDS,
                )
        self._server = self._thread = None
        self._socket.close()


async def until_signalled(server: HttpServer, *, check_every: float = 1.0) -> None:
    """Return on SIGINT (Ctrl-C) or SIGTERM, for ``retro board`` and ``retro demo
    --board``; checks every ``check_every`` seconds that ``server`` still serves.

    Raises:
        ServerError: the server's thread ended before a signal came.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if not server.serving:
                raise ServerError(f"HTTP server on {server.host}:{server.port} stopped")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), check_every)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
