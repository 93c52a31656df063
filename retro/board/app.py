"""The ASGI app of retro's HTTP server: the board, ``/healthz`` and ``/metrics``.

Routes are thin: each reads one value from :mod:`retro.board.queries` and renders
one Jinja2 template (autoescaped: host and worker text is never markup). A page
asked for by htmx (header ``HX-Request``) gets only its live part, the fragment
template ``_<page>.html``; the full page polls that every 2 s
(``hx-trigger="every 2s"``), so it updates without a reload.

Read-only: every route answers ``GET`` (and ``HEAD``) only. Every response carries
a Content-Security-Policy allowing scripts, styles and requests to this origin only
(htmx is vendored, nothing comes from a CDN) and ``X-Content-Type-Options: nosniff``.

:func:`open_board` opens what the pages read (in the serving event loop) and
:func:`create_app` builds the routes over it. ``/healthz`` is
:class:`retro.metrics.Health` (the same JSON and codes as before the board);
``/metrics`` is prometheus-client's exposition of the daemon's registry, only when a
daemon runs in this process (:attr:`Site.probes`). Both, and every Redis
read, run off the event loop or bounded, so one slow dependency stalls no page.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retro.app import App
from retro.board.queries import CHART_MINUTES, Reader
from retro.commands import Refused
from retro.config import EMBEDDED_REDIS, Settings, mask
from retro.embedded import EmbeddedRedis
from retro.machine import LIVE, TERMINAL, State
from retro.metrics import Health, Probes, WorkersByQueue, database_collectors, sync_engine

HERE = Path(__file__).parent
POLL = "every 2s"
"""htmx trigger of every page's live part."""
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Content-Security-Policy of every response: this origin only, no inline script."""
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STATES = (*LIVE, *sorted(TERMINAL, key=list(State).index))
"""Run states in the order of a run's life (the runs filter's links)."""


@dataclass(frozen=True)
class Site:
    """What the server serves, from whose data.

    Attributes:
        settings: retro's settings (database, queue names and prefix, budgets).
        probes: the daemon's probes when a daemon runs in this process
            (``retro run``, ``retro demo``): ``/metrics`` serves its registry and
            ``/healthz`` checks its tick; its Redis is the board's. ``None`` for
            ``retro board``: no ``/metrics``, no tick check, and Redis is
            ``settings.redis_url`` (an embedded one joined or started).
    """

    settings: Settings
    probes: Probes | None = None


def templates() -> Jinja2Templates:
    """The board's templates: autoescape on for every template, strict undefined."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, span=span, eta=eta, mask=mask, json_text=json_text)
    env.globals.update(POLL=POLL, STATES=STATES, CHART_MINUTES=CHART_MINUTES)
    return Jinja2Templates(env=env)


def when(instant: datetime | None) -> str:
    """``2025-05-26 12:00:05 UTC``, or ``—``."""
    return "—" if instant is None else f"{instant.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def span(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``2 h 05 min``, or ``—``."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def eta(seconds: float | None) -> str:
    """``~3 min``, ``nothing left`` (0) or ``unknown`` (no recent hand-off)."""
    if seconds == 0.0:
        return "nothing left"
    return "unknown" if seconds is None else f"~{span(seconds)}"


def json_text(value: Any) -> str:
    """``value`` as compact JSON text (escaped by the template like any text)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass(frozen=True)
class Board:
    """The connections the routes read, opened by :func:`open_board` in the serving
    event loop: ``reader`` (database and Redis), ``health`` (``/healthz``) and the
    daemon's ``probes`` (``None`` for ``retro board``)."""

    reader: Reader
    health: Health
    probes: Probes | None


@asynccontextmanager
async def open_board(site: Site) -> AsyncIterator[Board]:
    """Open what ``site``'s pages read, in the running event loop, and close it all on
    exit: an :class:`App` without Redis (the database, checked as every command checks
    it), a :class:`Reader` on the Redis, a synchronous engine for :class:`Health`,
    and, with a daemon's probes, the database collectors
    (:func:`retro.metrics.database_collectors`) and the workers collector on its
    registry (unregistered on exit).

    Raises:
        StoreError: the database is unreachable or lacks retro's tables.
    """
    settings, probes = site.settings, site.probes
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(App(settings, redis=False))  # checked first
        if probes is not None:
            redis_url = probes.redis_url
        elif settings.redis_url == EMBEDDED_REDIS:
            embedded = EmbeddedRedis(settings.embedded_redis_file())
            redis_url = embedded.start()
            stack.callback(embedded.stop)
        else:
            redis_url = settings.redis_url
        reader = Reader(app, redis_url)
        stack.push_async_callback(reader.close)
        engine = sync_engine(settings.database_url)
        stack.callback(engine.dispose)
        health = Health(
            engine, redis_url, probes.metrics if probes else None, settings.tick_interval
        )
        stack.callback(health.close)
        if probes is not None:
            registry = probes.metrics.registry
            workers = WorkersByQueue(probes.redis_url, probes.queue_prefix, probes.queues)
            stack.callback(workers.close)
            for collector in (*database_collectors(engine), workers):
                registry.register(collector)
                stack.callback(registry.unregister, collector)
        yield Board(reader=reader, health=health, probes=probes)


def create_app(board: Board, *, clock: Callable[[], datetime] | None = None) -> Starlette:
    """The Starlette app reading ``board`` (opened by :func:`open_board`); ``clock``
    gives "now" (aware UTC) for ETAs and the chart (default the wall clock)."""
    now = clock or (lambda: datetime.now(UTC))
    pages = templates()
    reader, health, probes = board.reader, board.health, board.probes

    def render(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        fragment = request.headers.get("hx-request") == "true"
        return pages.TemplateResponse(
            request,
            f"_{name}.html" if fragment else f"{name}.html",
            {"now": now(), "live_url": str(request.url.path) + _query(request), **context},
            status_code=status,
            headers={"Vary": "HX-Request", "Cache-Control": "no-store"},
        )

    def missing(request: Request, message: str) -> Response:
        return render(request, "not_found", 404, message=message)

    async def backfills(request: Request) -> Response:
        page = await reader.backfills(now=now())
        return render(request, "backfills", summaries=page.summaries, older=page.older)

    async def backfill(request: Request) -> Response:
        backfill_id = request.path_params["backfill_id"]
        wanted = request.query_params.get("state") or None
        if wanted is not None and wanted not in set(State):
            known = ", ".join(str(s) for s in STATES)
            return render(
                request, "bad_request", 400, message=f"unknown state {wanted!r}: one of {known}"
            )
        state = None if wanted is None else State(wanted)
        found = await reader.backfill(backfill_id, state=state, now=now())
        if found is None:
            return missing(request, f"There is no backfill {backfill_id!r}.")
        return render(request, "backfill", page=found)

    async def run(request: Request) -> Response:
        try:
            found = await reader.run(request.path_params["run_id"])
        except Refused as exc:
            return missing(request, f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        return render(request, "run", page=found)

    async def run_json(request: Request) -> Response:
        try:
            found = await reader.history(request.path_params["run_id"])
        except Refused as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    async def workers(request: Request) -> Response:
        found = await reader.workers()
        _, body = await run_in_threadpool(health.check)
        return render(request, "workers", page=found, checks=body["checks"])

    async def healthz(request: Request) -> Response:
        healthy, body = await run_in_threadpool(health.check)
        return Response(
            json.dumps(body) + "\n",
            status_code=200 if healthy else 503,
            media_type="application/json",
        )

    async def metrics(request: Request) -> Response:
        if probes is None:
            return missing(request, "There is no /metrics here: `retro run --http-port` serves it.")
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await run_in_threadpool(encoder, probes.metrics.registry)
        return Response(body, headers={"Content-Type": content_type})

    async def not_found(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException) and exc.status_code != 404:
            return Response(exc.detail, status_code=exc.status_code, media_type="text/plain")
        return missing(request, f"There is no page {request.url.path!r}.")

    routes = [
        Route("/", backfills),
        Route("/backfills/{backfill_id}", backfill),
        Route("/runs/{run_id}.json", run_json),
        Route("/runs/{run_id}", run),
        Route("/workers", workers),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.add_middleware(SecurityHeaders)
    return app


def _query(request: Request) -> str:
    """``?…`` of ``request`` (empty without a query string)."""
    query = request.url.query
    return f"?{query}" if query else ""
