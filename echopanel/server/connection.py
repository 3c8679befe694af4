"""What every WebSocket dialect shares: one reader loop, one sender task, one bounded outbox, admission."""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from echopanel.config import Settings
from echopanel.engines.base import SpeechEngine
from echopanel.flow.ladder import Level
from echopanel.metrics import ServerMetrics
from echopanel.protocol.errors import CloseCode, ProtocolError
from echopanel.server.controller import FlowController
from echopanel.session.outbox import Outbox
from echopanel.session.session import Barrier, OutboxItem, Session

log = logging.getLogger(__name__)


class DialectConnection(ABC):
    """One client connection speaking one dialect over one ``Session``."""

    def __init__(self, ws: WebSocket, engine: SpeechEngine, settings: Settings) -> None:
        self.ws = ws
        self.engine = engine
        self.settings = settings
        self.outbox: Outbox = Outbox(settings.send_queue_events)  # outlives the socket when a session detaches
        self.session: Session | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.slow_client = False
        self.evicted = False  # its session was resumed on another connection (native dialect)
        self.peer_close_code: int | None = None  # the close code the client sent (1006: none, the connection dropped)
        self.controller: FlowController | None = ws.app.state.controller
        self.metrics: ServerMetrics | None = ws.app.state.metrics

    def new_session(self, **kwargs: Any) -> Session:
        """A session wired to this connection's outbox, the metrics and the current degrade level."""
        level = self.controller.level if self.controller is not None else Level.NORMAL
        state = self.ws.app.state
        session = Session(
            engine=self.engine,
            settings=self.settings,
            outbox=self.outbox,
            metrics=self.metrics,
            level=level,
            store=getattr(state, "store", None),
            speakers=getattr(state, "speakers", None),
            **kwargs,
        )
        self.session = session
        if self.controller is not None:
            self.controller.register(session)
        session.start()
        return session

    async def run(self) -> None:
        self._sender = asyncio.create_task(self._send_loop(), name="sender")
        try:
            await self.on_open()
            self._reader = asyncio.create_task(self._read_loop(), name="reader")
            try:
                await self._reader
            except asyncio.CancelledError:
                if not (self.slow_client or self.evicted):
                    raise
        finally:
            if self.session is not None:
                if not self.session.finalized:
                    await self.on_session_end()  # may detach the session (resume): then self.session is None
            if self.session is not None:
                if self.controller is not None:
                    self.controller.unregister(self.session)
                await self.session.aclose()
            if not self._sender.done():
                self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)

    def on_sent(self, wire: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """One event was written to the socket (the native dialect keeps finals for replay on resume)."""

    async def on_open(self) -> None:  # noqa: B027 - optional hook
        """Called once the socket is accepted, before the first message is read."""

    async def on_session_end(self) -> None:
        """The connection ended and the session was not finalized (the client went away without closing it):
        finalize it as ``interrupted`` with nobody listening. Dialects may override (the OpenAI dialect has no
        close event, so its disconnect is a normal end)."""
        await self.finalize_unattended("interrupted")

    async def finalize_unattended(self, status: str) -> None:
        """``Session.finalize`` after the client is gone: the outbox is emptied into the void meanwhile, so the
        bounded outbox never blocks finalization; everything still lands in the store."""
        assert self.session is not None
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)

        async def discard() -> None:
            while True:
                item = await self.outbox.get()
                if isinstance(item, Barrier) and not item.done.done():
                    item.done.set_result(None)

        sink = asyncio.create_task(discard(), name="discard")
        try:
            await self.session.finalize(status)
        except Exception:
            log.exception("session %s: finalization after disconnect failed", self.session.id)
        finally:
            sink.cancel()
            await asyncio.gather(sink, return_exceptions=True)

    @abstractmethod
    async def on_text(self, text: str) -> bool:
        """Handle one text message; True when the connection is done."""

    @abstractmethod
    async def on_binary(self, data: bytes) -> None: ...

    @abstractmethod
    def encode(self, item: OutboxItem) -> list[dict[str, Any]]:
        """Wire events for one outbox item (none, one or several in this dialect)."""

    @abstractmethod
    def error(self, err: ProtocolError) -> dict[str, Any]: ...

    async def on_idle(self) -> None:
        """The client sent nothing for ``idle_timeout_s``: end the connection (dialects finalize first)."""
        await self.ws.close(CloseCode.NORMAL, reason="idle timeout")

    async def _read_loop(self) -> None:
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), self.settings.idle_timeout_s)
            except TimeoutError:
                log.info("connection idle for %.0f s: ending it", self.settings.idle_timeout_s)
                await self.on_idle()
                return
            except WebSocketDisconnect as exc:
                self.peer_close_code = exc.code
                return
            except RuntimeError:
                return
            if msg["type"] == "websocket.disconnect":
                self.peer_close_code = msg.get("code")
                if msg.get("code") == CloseCode.TOO_LARGE:
                    log.info("connection closed: message larger than %d bytes", self.settings.max_message_bytes)
                return
            try:
                if msg.get("text") is not None:
                    if await self.on_text(msg["text"]):
                        return
                elif msg.get("bytes") is not None:
                    await self.on_binary(msg["bytes"])
            except ProtocolError as err:
                await self.outbox.put(self.error(err))

    async def drain(self) -> None:
        """Wait until everything queued so far has been sent (or the sender stopped)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.outbox.put(Barrier(done))
        assert self._sender is not None
        await asyncio.wait([done, self._sender], return_when=asyncio.FIRST_COMPLETED)

    async def _cut_off_slow_client(self) -> None:
        """The client has taken no event for ``send_timeout_s``: disconnect instead of buffering without end."""
        log.warning("client not reading for %.0f s: disconnecting", self.settings.send_timeout_s)
        self.slow_client = True
        try:
            await asyncio.wait_for(self.ws.close(CloseCode.POLICY, reason="client not reading"), 1.0)
        except (TimeoutError, RuntimeError, OSError):
            pass
        if self._reader is not None:
            self._reader.cancel()

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, Barrier):
                if not item.done.done():
                    item.done.set_result(None)
                continue
            for wire in self.encode(item):
                try:
                    text = json.dumps(wire, separators=(",", ":"), ensure_ascii=False)
                    await asyncio.wait_for(self.ws.send_text(text), self.settings.send_timeout_s)
                except TimeoutError:
                    self.outbox.put_front(item)  # not delivered: kept for a resume
                    await self._cut_off_slow_client()
                    return
                except (WebSocketDisconnect, RuntimeError, OSError):
                    self.outbox.put_front(item)
                    return
                except asyncio.CancelledError:
                    self.outbox.put_front(item)  # stopped mid-write (the connection ended): kept for a resume
                    raise
                self.on_sent(wire)
                if wire.get("fatal"):
                    await self.ws.close(CloseCode.SERVER_ERROR)
                    return
