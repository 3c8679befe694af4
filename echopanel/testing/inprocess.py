"""An EchoPanel app on a real uvicorn server in this process, on a free port: for tests that give the server an
engine of their own (a fake that subclasses the engine interface, for fault injection) and drive it with real
clients over a real socket.

    async with serve_app(create_app(engine, settings), settings) as url:   # ws://127.0.0.1:PORT
        ...
    async with serve_stack(settings) as (url, stack):                     # the whole server, real parts
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from echopanel.config import Settings
from echopanel.server.run import Stack, running, until_started, uvicorn_config


@contextlib.asynccontextmanager
async def serve_app(app: Starlette, settings: Settings) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port (``settings.port`` is ignored); yields ``ws://127.0.0.1:PORT``."""
    config = uvicorn_config(app, settings.replace(host="127.0.0.1", port=0))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        port = await until_started(server, task)
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def serve_stack(settings: Settings) -> AsyncIterator[tuple[str, Stack]]:
    """The whole server ``echopanel serve`` runs (real engine, store, speaker encoder, flow control), in this process
    on a free port; yields ``(ws://127.0.0.1:PORT, stack)``."""
    async with running(settings) as stack, serve_app(stack.app, settings) as url:
        yield url, stack
