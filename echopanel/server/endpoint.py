"""One admit / auth / refuse path for every dialect.

1. Auth: ``Authorization: Bearer T`` (and, for dialects that allow it, the ``echopanel.token.T`` subprotocol a
   browser can send); wrong or missing: accept, then close 1008 "unauthorized" (clients do not retry on 1008).
2. The dialect's precheck (the OpenAI dialect: ``intent=transcription``); refused: close 1008 with the reason.
3. Admission (``echopanel/flow/admission.py``). A dialect whose session starts with the socket (OpenAI, Deepgram)
   takes a ``Lease`` on a session slot here; at the limit the connection is refused: accept and close 1013 (the
   OpenAI SDK retries on 1013). The native dialect takes its slot at ``session.create`` (``LiveConnection``), so
   a socket that never sends it holds none; here it is refused with HTTP 503 and ``Retry-After`` before the
   upgrade when no slot is free and no detached session could be resumed, or when ``max_pending_connections``
   sockets already wait without a session.
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
WAITING_MESSAGE = "too many connections are waiting to create a session; retry later"
DRAINING_MESSAGE = "this node is shutting down; connect again (a balancer sends you to another node)"


def context_of(ws: WebSocket) -> ServerContext:
    ctx: ServerContext = ws.app.state.context
    return ctx


def dialect_endpoint(
    connection: Callable[[WebSocket, ServerContext, Lease | None], DialectConnection],
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
        if ctx.draining:
            await refuse_full(
                ws, ctx.admission, http=dialect.refuse_with_http, message=DRAINING_MESSAGE, code=ErrorCode.DRAINING
            )
            return
        lease: Lease | None = None
        if dialect.admits_at_create:
            if ctx.admission.capacity_left <= 0 and ctx.registry.detached == 0:
                await _refuse(ws, ctx, http=True)
                return
            if not ctx.pending.enter():
                log.warning("connection refused: %d sockets already wait for session.create", ctx.pending.limit)
                await _refuse(ws, ctx, http=True, message=WAITING_MESSAGE)
                return
        else:
            lease = ctx.admission.acquire()
            if lease is not None and ctx.fleet is not None and not await ctx.fleet.take(lease):
                lease.release()  # this node has room, the fleet has none
                lease = None
            if lease is None:
                await _refuse(ws, ctx, http=dialect.refuse_with_http)
                return
        conn = connection(ws, ctx, lease)
        ctx.connections.add(conn)
        try:
            await ws.accept(subprotocol=chosen)
            await conn.run()
        finally:
            ctx.connections.discard(conn)
            if dialect.admits_at_create:
                conn.leave_pending()
            if conn.lease is not None:
                conn.lease.release()

    return endpoint


async def _refuse(ws: WebSocket, ctx: ServerContext, *, http: bool, message: str = FULL_MESSAGE) -> None:
    ctx.metrics.sessions_refused.inc()
    if message is FULL_MESSAGE:
        log.warning("session refused: server full (%d sessions)", ctx.admission.max_sessions)
    await refuse_full(ws, ctx.admission, http=http, message=message)


async def refuse_full(
    ws: WebSocket,
    admission: Admission,
    *,
    http: bool,
    message: str = FULL_MESSAGE,
    code: ErrorCode = ErrorCode.SERVER_FULL,
) -> None:
    """HTTP 503 with Retry-After before the upgrade; close 1013 where the server cannot send HTTP responses (or the
    dialect's clients expect a close code)."""
    if http:
        body = {"type": "error", "code": str(code), "message": message}
        try:
            await ws.send_denial_response(
                JSONResponse(body, status_code=503, headers={"Retry-After": str(admission.retry_after_s)})
            )
            return
        except RuntimeError:
            pass
    await ws.accept()
    await ws.close(CloseCode.TRY_AGAIN_LATER, reason="server full" if code is ErrorCode.SERVER_FULL else "draining")
