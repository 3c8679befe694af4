"""The HTTP application: WebSocket dialects, health and readiness."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from echopanel import __version__
from echopanel.config import Settings
from echopanel.engines.base import EngineStatus, SpeechEngine
from echopanel.events import Features
from echopanel.flow.admission import Admission, Pending
from echopanel.metrics import ServerMetrics
from echopanel.server.context import ServerContext
from echopanel.server.controller import FlowController
from echopanel.server.debug import memory_routes
from echopanel.server.deepgram import deepgram_endpoint
from echopanel.server.files import file_jobs, file_routes
from echopanel.server.fleet import FleetSlots
from echopanel.server.live import live_endpoint
from echopanel.server.memory import HeapProfile
from echopanel.server.realtime import realtime_endpoint
from echopanel.server.resume import ResumeRegistry
from echopanel.server.sessions_api import session_routes
from echopanel.speakers.live import SpeakerService
from echopanel.storage.store import AsyncStore, store_kind_of

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the live panel (echopanel/web, shipped as package data)


def server_features(engine: SpeechEngine, store: AsyncStore | None, speakers: SpeakerService | None) -> Features:
    """The optional parts this server runs with (``/ready``, the ready line; each session says its own)."""
    status = engine.status()  # a chain names its fallback engines beside the primary
    fallback = next((name for name in status.breakers or {} if name != status.primary), None)
    return Features(speakers=speakers is not None, fallback=fallback, store=store_kind_of(store))


def engines_down(status: EngineStatus) -> bool:
    """No engine's circuit breaker is closed (open, or half-open letting only trial decodes through): the chain's
    own "down" (``ChainEngine.mode``)."""
    states = list((status.breakers or {}).values()) or [status.breaker]
    return all(state != "closed" for state in states)


def create_app(
    engine: SpeechEngine,
    settings: Settings,
    controller: FlowController | None = None,
    *,
    store: AsyncStore | None = None,
    speakers: SpeakerService | None = None,
) -> Starlette:
    admission = Admission(settings.max_sessions)
    metrics = controller.metrics if controller is not None else ServerMetrics()
    features = server_features(engine, store, speakers)

    async def index(request: Request) -> Response:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def ready(request: Request) -> Response:
        """Whether this server takes new sessions: the status a balancer's health check reads (200 or 503)."""
        caps = engine.capabilities
        status = "ready"
        if request.app.state.context.draining:
            status = "draining"  # SIGTERM: handing its sessions off, then exiting
        elif engines_down(engine.status()):
            status = "engines_down"  # no engine takes work: new sessions would get only errors
        elif admission.capacity_left <= 0:
            status = "full"
        body = {
            "status": status,
            "engine": caps.name,
            "model": caps.model,
            "sessions": admission.active,
            "max_sessions": admission.max_sessions,
            "features": dataclasses.asdict(features),
        }
        return JSONResponse(body, status_code=200 if status == "ready" else 503)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/", index),
            Mount("/static", StaticFiles(directory=WEB_DIR), name="static"),
            Route("/metrics", prometheus),
            Route("/health", health),
            Route("/ready", ready),
            WebSocketRoute("/v1/live", live_endpoint),
            WebSocketRoute("/ws/live-listener", live_endpoint),  # the original EchoPanel's path
            WebSocketRoute("/v1/realtime", realtime_endpoint),
            WebSocketRoute("/v1/listen", deepgram_endpoint),
            *session_routes(),
            *file_routes(),
        ]
    )
    if settings.memory_debug:  # diagnostics: tracemalloc from here on, the baseline before any session
        log.warning("memory debug is on: tracemalloc traces every Python allocation; GET /debug/memory")
        app.router.routes.extend(memory_routes(HeapProfile()))
    registry = ResumeRegistry(settings, metrics, controller)  # detached sessions (resume)
    pending = Pending(settings.max_pending_connections)
    app.state.context = ServerContext(
        settings, engine, admission, metrics, registry, controller, store, speakers, pending
    )
    if store is not None and settings.fleet_max_sessions is not None:
        app.state.context.fleet = FleetSlots(store, settings.fleet_max_sessions, settings.takeover_after_s)
    app.state.settings = settings  # the HTTP routes' view (sessions API)
    app.state.store = store
    app.state.file_jobs = file_jobs()
    return app
