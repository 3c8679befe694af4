"""One admit / auth / refuse path for every dialect.

1. Auth: ``Authorization: Bearer T`` (and, for dialects that allow it, the ``echopanel.token.T`` subprotocol a
   browser can send); wrong or missing: accept, then close 1008 "unauthorized" (clients do not retry on 1008).
2. The dialect's precheck (the OpenAI dialect: ``intent=transcription``); refused: close 1008 with the reason.
3. Admission: a ``Lease`` on a session slot. At the limit a dialect that can resume is admitted provisionally while
   detached sessions exist (it may only resume one); otherwise the connection is refused: HTTP 503 with
   ``Retry-After`` before the upgrade (native), or accept and close 1013 (the OpenAI SDK retries on 1013).
4. Accept (with the dialect's subprotocol when offered), run the connection, release whatever lease it still holds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from echopanel.flow.admission import Admission, Lease
from echopanel.protocol.errors import CloseCode, ErrorCode
from echopanel.server.auth import authorized
from echopanel.server.connection import DialectConnection
from echopanel.server.context import ServerContext

log = logging.getLogger(__name__)

FULL_MESSAGE = "the server is at its session limit; retry later"


def context_of(ws: WebSocket) -> ServerContext:
    ctx: ServerContext = ws.app.state.context
    return ctx


def dialect_endpoint(
    connection: Callable[[WebSocket, ServerContext, Lease], DialectConnection],
) -> Callable[[WebSocket], Awaitable[None]]:
    """The Starlette WebSocket endpoint of a dialect (``connection`` is its ``DialectConnection`` class)."""
    dialect: type[DialectConnection] = connection  # type: ignore[assignment]

    async def endpoint(ws: WebSocket) -> None:
        ctx = context_of(ws)
        offered = list(ws.scope.get("subprotocols") or [])
        chosen = dialect.subprotocol if dialect.subprotocol in offered else None
        if not authorized(ctx.settings.token, ws.headers, offered if dialect.token_subprotocol else ()):
            await ws.accept(subprotocol=chosen)
            await ws.close(CloseCode.POLICY, reason="unauthorized")
            return
        reason = dialect.precheck(ws)
        if reason is not None:
            await ws.accept(subprotocol=chosen)
            await ws.close(CloseCode.POLICY, reason=reason)
            return
        if await dialect.refuse(ws):
            return
        lease = ctx.admission.acquire()
        if lease is None and dialect.may_resume and ctx.registry.detached > 0:
            lease = ctx.admission.provisional()  # a detached session holds a slot: its client may come back
        if lease is None:
            ctx.metrics.sessions_refused.inc()
            log.warning("session refused: server full (%d sessions)", ctx.admission.max_sessions)
            await refuse_full(ws, ctx.admission, http=dialect.refuse_with_http)
            return
        conn = connection(ws, ctx, lease)
        try:
            await ws.accept(subprotocol=chosen)
            await conn.run()
        finally:
            if conn.lease is not None:
                conn.lease.release()

    return endpoint


async def refuse_full(ws: WebSocket, admission: Admission, *, http: bool) -> None:
    """HTTP 503 with Retry-After before the upgrade; close 1013 where the server cannot send HTTP responses (or the
    dialect's clients expect a close code)."""
    if http:
        body = {"type": "error", "code": str(ErrorCode.SERVER_FULL), "message": FULL_MESSAGE}
        try:
            await ws.send_denial_response(
                JSONResponse(body, status_code=503, headers={"Retry-After": str(admission.retry_after_s)})
            )
            return
        except RuntimeError:
            pass
    await ws.accept()
    await ws.close(CloseCode.TRY_AGAIN_LATER, reason="server full")
