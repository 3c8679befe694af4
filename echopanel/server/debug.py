"""``GET /debug/memory`` and ``POST /debug/memory/baseline`` (only with ``memory_debug``): where the server's Python
heap grew since a baseline (``echopanel/server/memory.py``, ``HeapProfile``). Same token rule as every route."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from echopanel.server.auth import authorized
from echopanel.server.memory import HeapProfile

MAX_TOP = 200


def memory_routes(profile: HeapProfile) -> list[Route]:
    async def report(request: Request) -> Response:
        if not authorized(request.app.state.settings.token, request.headers, ()):
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        try:
            top = min(MAX_TOP, max(1, int(request.query_params.get("top", "15"))))
        except ValueError:
            return JSONResponse({"error": {"code": "invalid_param", "param": "top"}}, status_code=400)
        group = request.query_params.get("group", "lineno")
        if group not in ("lineno", "traceback"):
            return JSONResponse({"error": {"code": "invalid_param", "param": "group"}}, status_code=400)
        return JSONResponse(await asyncio.to_thread(profile.report, top, group))  # a snapshot takes a while

    async def baseline(request: Request) -> Response:
        if not authorized(request.app.state.settings.token, request.headers, ()):
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        await asyncio.to_thread(profile.reset)
        return JSONResponse({"baseline": "reset"})

    return [
        Route("/debug/memory", report, methods=["GET"]),
        Route("/debug/memory/baseline", baseline, methods=["POST"]),
    ]
