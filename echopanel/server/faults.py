"""``POST /faults`` (only with ``fault_injection``, tests and demos): failpoints on the engines
(``echopanel/engines/faults.py``): make a decode fail, hang or kill its worker, for a count or until cleared."""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from echopanel.engines.faults import KINDS, MODES, FaultSwitch

log = logging.getLogger(__name__)


def fault_routes(switch: FaultSwitch, engine_names: list[str]) -> list[Route]:
    """``POST /faults {engine, mode: ok|fail|hang|die, count?, kinds?}``, ``DELETE /faults``, ``GET /faults``."""

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(switch.snapshot())
        if request.method == "DELETE":
            switch.clear()
            return JSONResponse(switch.snapshot())
        try:
            body = json.loads(await request.body())
            engine, mode = str(body["engine"]), str(body["mode"])
            count = body.get("count")
            kinds = frozenset(body["kinds"]) if body.get("kinds") is not None else None
            if engine not in engine_names:
                raise ValueError(f"engine must be one of {engine_names}")
            switch.set(engine, mode, None if count is None else int(count), kinds)
        except (ValueError, KeyError, TypeError) as exc:
            detail = f"{exc}; body: {{engine: {engine_names}, mode: {list(MODES)}, count?, kinds?: {sorted(KINDS)}}}"
            return JSONResponse({"error": detail}, status_code=400)
        log.warning("fault injection: %s -> %s (count %s)", engine, mode, count)
        return JSONResponse(switch.snapshot())

    return [Route("/faults", faults, methods=["GET", "POST", "DELETE"])]
