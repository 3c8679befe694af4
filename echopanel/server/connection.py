"""The I/O shell every WebSocket dialect shares: one reader loop, one sender task, the session's outbox.

A connection owns no protocol knowledge: its dialect's codec (``echopanel/protocol``) parses each client message
into a ``Command`` and encodes each outbox event into wire messages. The shell applies the commands every dialect
has (audio, commit, clear, response.create, session.update, ping) to the session; a dialect adds the rest
(``LiveConnection``: create, resume, close; ``RealtimeConnection``: a session from the first moment).

Bounds: the outbox (``send_queue_events``; control events overtake it), a client that takes no event for
``send_timeout_s`` is cut off (1008 "client not reading"), a connection that sends nothing for ``idle_timeout_s``
ends (its session is finalized). An ``ErrorEvent`` with ``fatal`` (an internal error) is sent, then the
connection closes with 1011 and the session is finalized as ``interrupted``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from echopanel.events import AudioCleared, ErrorEvent, Pong, ServerEvent, SessionUpdated
from echopanel.flow.admission import Lease
from echopanel.flow.ladder import Level
from echopanel.flow.source_queue import MarkersFull
from echopanel.protocol import commands as cmd
from echopanel.protocol.errors import CloseCode, ErrorCode, ProtocolError
from echopanel.server import memory
from echopanel.server.context import ServerContext
from echopanel.session.finalize import finalize
from echopanel.session.outbox import Barrier, Outbox, discarding
from echopanel.session.session import Session

log = logging.getLogger(__name__)


SESSION_COMMANDS = (
    cmd.AppendAudio,
    cmd.AppendAudioMany,
    cmd.CommitAudio,
    cmd.ClearAudio,
    cmd.RequestResponse,
    cmd.UpdateSession,
)


class Codec(Protocol):
    def parse_text(self, text: str) -> cmd.Command: ...

    def parse_binary(self, data: bytes) -> cmd.Command: ...

    def encode(self, event: ServerEvent) -> list[dict[str, Any]]: ...


class DialectConnection(ABC):
    """One client connection speaking one dialect over one ``Session``."""

    # How the shared endpoint (``endpoint.py``) admits this dialect.
    subprotocol: ClassVar[str | None] = None  # chosen when the client offers it
    token_subprotocol: ClassVar[bool] = False  # browsers may send the token as a subprotocol
    refuse_with_http: ClassVar[bool] = False  # full: HTTP 503 before the upgrade (else accept and close 1013)
    admits_at_create: ClassVar[bool] = False  # takes its session slot at session.create, not at the upgrade

    @staticmethod
    def precheck(ws: WebSocket) -> str | None:
        """A reason to refuse the connection (closed 1008 with it) before admission; None to go on."""
        return None

    @staticmethod
    async def refuse(ws: WebSocket) -> bool:
        """Refuse the connection in the dialect's own way before admission (Deepgram: HTTP 400); True if done."""
        return False

    def __init__(self, ws: WebSocket, context: ServerContext, lease: Lease | None, codec: Codec) -> None:
        self.ws = ws
        self.context = context
        self.settings = context.settings
        self.engine = context.engine
        self.lease: Lease | None = lease  # released when the connection ends, unless it moved on with its session
        self.codec = codec
        self.outbox: Outbox = Outbox(self.settings.send_queue_events)  # outlives the socket when a session detaches
        self.session: Session | None = None
        self._sender: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self.slow_client = False
        self.failed = False  # an internal error ended the session (a fatal error was sent)
        self.evicted = False  # its session was resumed on another connection (native dialect)
        self.handing_off = False  # a drain closed it (1012) at a pause: the session goes on elsewhere
        self.peer_close_code: int | None = None  # the close code the client sent (1006: none, the connection dropped)
        self._pending = self.admits_at_create  # counted in ``context.pending`` until it has a session

    def leave_pending(self) -> None:
        """This socket has a session now (or is gone): it no longer counts against ``max_pending_connections``."""
        if self._pending:
            self._pending = False
            self.context.pending.leave()

    def new_session(self, **kwargs: Any) -> Session:
        """A session wired to this connection's outbox, the metrics and the current degrade level."""
        ctx = self.context
        level = ctx.controller.level if ctx.controller is not None else Level.NORMAL
        session = Session(
            engine=self.engine,
            settings=self.settings,
            outbox=self.outbox,
            metrics=ctx.metrics,
            level=level,
            store=ctx.store,
            speakers=ctx.speakers,
            **kwargs,
        )
        self.session = session
        if ctx.controller is not None:
            ctx.controller.register(session)
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
                if not (self.slow_client or self.evicted or self.failed or self.handing_off):
                    raise
        finally:
            if self.session is not None and not self.session.finalized:
                await self.on_session_end()  # may detach the session (resume): then self.session is None
            if self.session is not None:
                if self.context.controller is not None:
                    self.context.controller.unregister(self.session)
                await self.session.aclose()
            if not self._sender.done():
                self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            # A finished task keeps its exception, whose traceback holds this connection: let go of both tasks so a
            # closed session is freed at once, not at the next full garbage collection (docs/behaviour.md).
            self._sender = self._reader = None
            memory.collect_soon()

    # -- hooks ---------------------------------------------------------------------------------------------------

    def on_sent(self, event: ServerEvent) -> None:  # noqa: B027 - optional hook
        """One event was written to the socket (the native dialect keeps finals for replay on resume)."""

    async def on_open(self) -> None:  # noqa: B027 - optional hook
        """Called once the socket is accepted, before the first message is read."""

    async def on_session_end(self) -> None:
        """The connection ended and the session was not finalized (the client went away without closing it):
        finalize it as ``interrupted`` with nobody listening. Dialects may override (the OpenAI dialect has no
        close event, so its disconnect is a normal end)."""
        await self.finalize_unattended("interrupted")

    @abstractmethod
    async def on_command(self, command: cmd.Command) -> bool:
        """A command only this dialect has; True when the connection is done."""

    async def on_idle(self) -> None:
        """The client sent nothing for ``idle_timeout_s``: end the connection (dialects finalize first)."""
        await self.ws.close(CloseCode.NORMAL, reason="idle timeout")

    # -- commands ------------------------------------------------------------------------------------------------

    async def apply(self, command: cmd.Command) -> bool:
        """Apply one client command; True when the connection is done."""
        if isinstance(command, cmd.Ping):
            await self.outbox.put(Pong(command.event_id))
            return False
        if not isinstance(command, SESSION_COMMANDS):
            return await self.on_command(command)
        session = self.session
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_CREATED, "send session.create first")
        try:
            if isinstance(command, cmd.AppendAudio | cmd.AppendAudioMany):
                if session.closing:
                    raise ProtocolError(ErrorCode.SESSION_CLOSING, "the session is closing; audio was not accepted")
                for part in command.parts if isinstance(command, cmd.AppendAudioMany) else (command,):
                    pcm = self.trim_resent(part.source, part.pcm)
                    if pcm:
                        await session.append(part.source, pcm)
            elif isinstance(command, cmd.CommitAudio):
                for source in command.sources:
                    await session.commit(source, command.event_id)
            elif isinstance(command, cmd.ClearAudio):
                for source in command.sources:
                    await session.clear(source)
                    await self.outbox.put(AudioCleared(source, command.event_id))
            elif isinstance(command, cmd.RequestResponse):
                for source in command.sources:
                    await session.request(source, command.event_id)
            elif isinstance(command, cmd.UpdateSession):
                await self.update_session(session, command)
                await self.outbox.put(SessionUpdated(session.id, session.language, command.event_id))
        except MarkersFull as exc:
            raise ProtocolError(
                ErrorCode.TOO_MANY_PENDING, f"{exc}; the event was not applied, retry when results arrive"
            ) from None
        return False

    @staticmethod
    async def update_session(session: Session, command: cmd.UpdateSession) -> None:
        """Settings that change mid-session: turn detection in order with the audio, the rest from the next decode
        or utterance on (docs/protocol.md "session.update")."""
        for source in session.source_names:
            stream = session.stream_of(source)
            if command.turns is not None:
                await session.configure(source, command.turns)
            if command.prompt is not None:
                stream.set_prompt(command.prompt)
            if command.agreement is not None:
                stream.set_agreement(command.agreement)
            if command.replacements is not None:
                stream.set_replacements(command.replacements)
            if command.partials is not None:
                stream.set_partials(command.partials)
        if command.language is not None:
            session.set_language(command.language)

    def trim_resent(self, source: str, pcm: bytes) -> bytes:
        """Audio a resuming client resends that the server already holds (native dialect)."""
        return pcm

    # -- I/O -----------------------------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        handshake_by = loop.time() + self.settings.handshake_timeout_s
        while True:
            timeout = self.settings.idle_timeout_s
            waiting = self.session is None and self.admits_at_create
            if waiting:
                timeout = min(timeout, handshake_by - loop.time())
            try:
                msg = await asyncio.wait_for(self.ws.receive(), max(timeout, 0.0))
            except TimeoutError:
                if waiting and self.session is None:
                    log.info("no session.create within %.0f s: closing", self.settings.handshake_timeout_s)
                    reason = f"no session.create within {self.settings.handshake_timeout_s:g} s"
                    await self.ws.close(CloseCode.POLICY, reason=reason)
                    return
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
                    command = self.codec.parse_text(msg["text"])
                elif msg.get("bytes") is not None:
                    command = self.codec.parse_binary(msg["bytes"])
                else:
                    continue
            except ProtocolError as err:
                await self.outbox.put(err.event())
                continue
            try:
                if await self.apply(command):
                    return
            except ProtocolError as err:
                err.event_id = err.event_id or command.event_id
                await self.outbox.put(err.event())

    async def drain(self) -> None:
        """Wait until everything queued so far has been sent (or the sender stopped)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.outbox.put(Barrier(done))
        assert self._sender is not None
        await asyncio.wait([done, self._sender], return_when=asyncio.FIRST_COMPLETED)

    async def finalize_unattended(self, status: str) -> None:
        """Finalize after the client is gone: the outbox is emptied into the void meanwhile, so the bounded outbox
        never blocks finalization; everything still lands in the store."""
        assert self.session is not None
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        try:
            async with discarding(self.outbox):
                await finalize(self.session, status)
        except Exception:
            log.exception("session %s: finalization after disconnect failed", self.session.id)

    async def hand_off(self, pause_wait_s: float) -> None:
        """The node drains: at the session's next pause between utterances (at most ``pause_wait_s`` from now), close
        1012 so the client goes on elsewhere; ``on_session_end`` then lets the session go (a dialect's own way)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pause_wait_s
        # Polled: a pause is the absence of open utterances, which the session's forwarders change as events land.
        while self.session is not None and not self.session.at_pause() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.handing_off = True
        await self.close_and_stop(CloseCode.SERVICE_RESTART, "node draining")

    async def close_and_stop(self, code: int, reason: str) -> None:
        """Close the socket from the server side (waiting at most 1 s for the peer) and stop the reader loop; the
        caller has set the flag that tells ``run`` why (slow client, failed, evicted, handing off)."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason=reason), 1.0)
        except (TimeoutError, RuntimeError, OSError):
            pass
        if self._reader is not None:
            self._reader.cancel()

    async def _cut_off_slow_client(self) -> None:
        """The client has taken no event for ``send_timeout_s``: disconnect instead of buffering without end."""
        log.warning("client not reading for %.0f s: disconnecting", self.settings.send_timeout_s)
        self.slow_client = True
        await self.close_and_stop(CloseCode.POLICY, "client not reading")

    async def _fatal(self) -> None:
        """An internal error was sent: close (1011); the session is finalized as interrupted."""
        self.failed = True
        await self.close_and_stop(CloseCode.SERVER_ERROR, "internal error")

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, Barrier):
                if not item.done.done():
                    item.done.set_result(None)
                continue
            for wire in self.codec.encode(item):
                try:
                    text = json.dumps(wire, separators=(",", ":"), ensure_ascii=False)
                    await asyncio.wait_for(self.ws.send_text(text), self.settings.send_timeout_s)
                except TimeoutError:
                    self.outbox.put_front(item)  # not delivered: kept for a resume
                    await self._cut_off_slow_client()
                    return
                except (WebSocketDisconnect, RuntimeError, OSError) as exc:
                    self.outbox.put_front(item)
                    exc.__traceback__ = None  # the server's exception cycle would hold this frame, and so the session
                    return
                except asyncio.CancelledError:
                    self.outbox.put_front(item)  # stopped mid-write (the connection ended): kept for a resume
                    raise
            self.on_sent(item)
            if isinstance(item, ErrorEvent) and item.fatal:
                await self._fatal()
                return
