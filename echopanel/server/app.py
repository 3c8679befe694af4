"""The HTTP application: WebSocket dialects, health and readiness."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from echopanel import __version__
from echopanel.config import Settings
from echopanel.engines.base import SpeechEngine
from echopanel.server.live import live_endpoint

_INDEX = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>EchoPanel</title></head>
<body><main><h1>EchoPanel</h1><p>Real-time transcription server, version {version}.</p>
<ul><li>WebSocket: <code>/v1/live</code> (native protocol)</li><li><a href="/health">/health</a></li>
<li><a href="/ready">/ready</a></li></ul></main></body></html>"""


def create_app(engine: SpeechEngine, settings: Settings) -> Starlette:
    async def index(request: Request) -> Response:
        return HTMLResponse(_INDEX.format(version=__version__))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def ready(request: Request) -> Response:
        caps = engine.capabilities
        return JSONResponse({"status": "ready", "engine": caps.name, "model": caps.model})

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/ready", ready),
            WebSocketRoute("/v1/live", live_endpoint),
        ]
    )
    app.state.engine = engine
    app.state.settings = settings
    return app
