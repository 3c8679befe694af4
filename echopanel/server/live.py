"""The native dialect at ``GET /v1/live`` (docs/protocol.md): a thin I/O shell over ``Session`` and ``NativeCodec``.

What it adds to the shared shell: ``session.create`` (a new session, or a resume of a detached one), ``session.close``
(finalize, summary, close 1000), and detaching on a dropped connection (``echopanel/server/resume.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Literal

from starlette.websockets import WebSocket

from echopanel.engines.base import TurnSettings
from echopanel.events import ErrorEvent, ServerEvent, SessionCreated, SourceEvent, TextFinal
from echopanel.flow.admission import Lease
from echopanel.protocol import commands as cmd
from echopanel.protocol.errors import CloseCode, ErrorCode, ProtocolError
from echopanel.protocol.native import NativeCodec, NativeLimits
from echopanel.server.auth import PROTOCOL_NAME
from echopanel.server.connection import DialectConnection
from echopanel.server.context import ServerContext
from echopanel.server.endpoint import dialect_endpoint
from echopanel.server.resume import Busy, Resumable, shares_sessions
from echopanel.session.finalize import finalize
from echopanel.session.outbox import OutboxItem, discarding

log = logging.getLogger(__name__)


# Ends that are drops, not hang-ups. uvicorn reports a connection that vanished (reset, no close frame) as 1005 or
# 1006; a browser leaving a page sends 1001.
RESUMABLE_CLOSE_CODES = {None, 1001, 1005, 1006, 1011, 1012, 1014}


class LiveConnection(DialectConnection):
    """The native dialect."""

    subprotocol = PROTOCOL_NAME
    token_subprotocol = True
    refuse_with_http = True
    admits_at_create = True

    def __init__(self, ws: WebSocket, context: ServerContext, lease: Lease | None) -> None:
        caps = context.engine.capabilities
        r = context.settings.recognizer
        turns = TurnSettings(
            threshold=r.vad_threshold, silence_duration_ms=r.hangover_ms, prefix_padding_ms=r.pre_roll_ms
        )
        codec = NativeCodec(NativeLimits(caps.languages, context.settings.max_sources, turns))
        super().__init__(ws, context, lease, codec)
        self.native = codec
        self.registry = context.registry
        self.resumable: Resumable | None = None

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            entry = self.resumable
            if entry is not None and entry.connection is self:
                self.registry.forget(entry)  # closed, finalized or failed: nothing to resume

    async def on_command(self, command: cmd.Command) -> bool:
        if isinstance(command, cmd.CreateSession):
            self.lease = self.context.admission.acquire()
            if self.lease is None:  # the last slot went after the upgrade
                self.context.metrics.sessions_refused.inc()
                return await self._refuse_full(command.event_id)
            fleet = self.context.fleet
            if fleet is not None and not await fleet.take(self.lease):  # the whole fleet is at its limit
                self.lease.release()
                self.lease = None
                self.context.metrics.sessions_refused.inc()
                return await self._refuse_full(command.event_id, "the fleet is at its session limit; retry later")
            await self._create(command)
            return False
        if isinstance(command, cmd.ResumeSession):
            await self._resume(command)
            return False
        if isinstance(command, cmd.CloseSession):
            await self._close(command.event_id)
            return True
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"{type(command).__name__} is not part of this dialect")

    async def _create(self, command: cmd.CreateSession) -> None:
        session = self.new_session(
            sources=list(command.sources),
            sample_rate=command.sample_rate,
            turn_detection=command.turn_detection,
            language=command.language,
            overflow=command.overflow,
        )
        self.native.bind(session.source_names)
        if command.settings is not None:
            await self.update_session(session, command.settings)
        info = session.info()
        self.resumable = self.registry.register(session, info, self)
        self.leave_pending()
        await self.outbox.put(SessionCreated(info, command.event_id))
        log.info("session %s created: sources=%s rate=%d", session.id, session.source_names, session.sample_rate)

    async def _resume(self, command: cmd.ResumeSession) -> None:
        """``session.create {resume}``: take over a detached (or half-dead) session (docs/protocol.md "Resume"), or,
        with a shared store, one another node ran (docs/deployment.md "Resume on any node")."""
        not_found = ProtocolError(
            ErrorCode.SESSION_NOT_FOUND,
            "no resumable session with that id and token (unknown, closed, or its grace period expired)",
            param="resume",
        )
        entry = self.registry.find(command.session_id, command.resume_token)
        if entry is not None and entry.connection is None and not await self.registry.still_ours(entry):
            entry = None  # another node took it over since it detached here: take it back from the store
        if entry is None:
            if self.session is not None or self.context.store is None:
                raise not_found
            taken = await self._take_over(command)
            if taken is None:
                raise not_found
            if taken is False:  # refused (full, busy) and closed
                return
            entry = taken
        else:
            await self.drain()  # what this connection said before (pong, errors) goes out first
            if not await self.registry.take(entry, self):
                raise not_found
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        session = entry.session
        self.session, self.resumable, self.outbox = session, entry, entry.outbox
        self.leave_pending()
        self.native.bind(session.source_names)
        received = entry.received_ms()
        rate = session.sample_rate
        entry.skip = {n: s.recording.samples - received[n] * rate // 1000 for n, s in session.sources.items()}
        created = SessionCreated(
            entry.info, command.event_id, resumed=True, received_ms=received, partials_reset=entry.taken_over
        )
        replay = self.registry.replay(entry)
        front: list[OutboxItem] = [created, *replay]
        for item in reversed(front):
            self.outbox.put_front(item)
        self._sender = asyncio.create_task(self._send_loop(), name="sender")
        log.info(
            "session %s resumed (%d time%s): %s, %d finals replayed, %d events kept while detached",
            session.id,
            entry.resumes,
            "" if entry.resumes == 1 else "s",
            received,
            len(replay),
            self.outbox.qsize() - len(replay) - 1,
        )

    async def _take_over(self, command: cmd.ResumeSession) -> Resumable | Literal[False] | None:
        """The session is not on this node: go on with it from the shared store and recordings (None: no such
        session). It needs a slot here; a session its node still runs with its client attached is refused as busy
        (1013, the client retries: by then that connection has usually dropped). False: refused, closed."""
        store = self.context.store
        assert store is not None
        self.lease = self.context.admission.acquire()
        if self.lease is None:
            self.context.metrics.sessions_refused.inc()
            await self._refuse_full(command.event_id)
            return False
        if self.context.fleet is not None:
            await self.context.fleet.take(self.lease, force=True)  # a session the fleet already has
        try:
            carried = await self.registry.claim(store, command.session_id, command.resume_token)
        except Busy:
            self.lease.release()
            self.lease = None
            message = "the session still runs on another node with a client attached; retry"
            await self.outbox.put(ErrorEvent(str(ErrorCode.SESSION_BUSY), message, event_id=command.event_id))
            await self.drain()
            await self.ws.close(CloseCode.TRY_AGAIN_LATER, reason="session busy")
            return False
        if carried is None:
            self.lease.release()
            self.lease = None
            return None
        handoff = carried.handoff
        try:
            session = self.new_session(
                sources=list(handoff.sources),
                sample_rate=handoff.sample_rate,
                turn_detection=bool(handoff.extra.get("turn_detection", True)),
                language=handoff.language,
                overflow=handoff.extra.get("overflow"),
                carried=carried,
            )
        except Exception:
            # Taken over but not rebuilt (its recordings unreadable here, say): leave it takeable for another try.
            log.exception("session %s: could not go on with it on this node", command.session_id)
            await store.write(store.store.set_detached, command.session_id, time.time())
            self.lease.release()
            self.lease = None
            return None
        entry = self.registry.register(session, session.info(), self)
        self.registry.adopted(entry)
        return entry

    def trim_resent(self, source: str, pcm: bytes) -> bytes:
        entry = self.resumable
        if entry is not None and entry.skip.get(source):
            # Resent audio overlapping what the server holds by less than a millisecond (received_ms is whole ms).
            skip = min(entry.skip[source] * 2, len(pcm))
            entry.skip[source] -= skip // 2
            return pcm[skip:]
        return pcm

    async def _refuse_full(
        self, event_id: str | None, message: str = "the server is at its session limit; retry later"
    ) -> bool:
        """``session.create`` found no free slot (admitted while one was free, or to resume a detached session)."""
        await self.outbox.put(ErrorEvent(str(ErrorCode.SERVER_FULL), message, event_id=event_id))
        await self.drain()
        await self.ws.close(CloseCode.TRY_AGAIN_LATER, reason="server full")
        return True

    def on_sent(self, event: ServerEvent) -> None:
        if self.resumable is not None and isinstance(event, SourceEvent) and isinstance(event.event, TextFinal):
            self.resumable.note_sent(event, self.settings.resume_replay_s)

    async def on_session_end(self) -> None:
        """The connection dropped without ``session.close``: detach the session for a resume (docs/protocol.md)."""
        entry = self.resumable
        if self.handing_off and entry is not None and self.session is not None and not entry.finished:
            await self._hand_over(entry)
            return
        # Only a dropped connection is kept for a resume: no close frame (1005/1006, a cut), going away (1001, a
        # page reload), or a proxy/server failure on the way. A clean close (1000), a policy or size violation (1008,
        # 1009), an internal error and other protocol ends finalize the session at once.
        hung_up = self.peer_close_code not in RESUMABLE_CLOSE_CODES and not self.evicted  # evicted: handed over
        if entry is None or self.session is None or self.session.closing or entry.finished:
            await super().on_session_end()
            return
        if hung_up or self.slow_client or self.failed:
            entry.finished = True
            await super().on_session_end()
            return
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()  # nothing more goes to this socket; the outbox keeps what was not written
            await asyncio.gather(self._sender, return_exceptions=True)
        self.registry.detach(entry, self)
        self.session = None  # no longer this connection's to close

    async def _hand_over(self, entry: Resumable) -> None:
        """A drain closed this connection (1012) at a pause: with a shared store, flush the session's finals to it and
        mark it detached, so the node its client resumes on takes it over; alone, finalize it as interrupted."""
        session = self.session
        assert session is not None
        entry.finished = True
        if not shares_sessions(session):
            await super().on_session_end()
            return
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        try:
            async with discarding(self.outbox):
                await asyncio.wait_for(session.flush(), 5.0)
        except TimeoutError:
            log.warning("session %s: flush took over 5 s while handing it off", session.id)
        assert session.store is not None
        await session.ledger.write(session.store.store.set_detached, session.id, time.time())
        self.registry.forget(entry)
        log.info("session %s handed off (its client resumes on another node)", session.id)

    async def evict(self) -> None:
        """The session was resumed on another connection while this one still held it (a half-dead socket)."""
        self.evicted = True
        await self.close_and_stop(CloseCode.RESUMED_ELSEWHERE, "session resumed elsewhere")

    async def on_idle(self) -> None:
        message = f"no message for {self.settings.idle_timeout_s:.0f} s; the session is finalized and closed"
        await self.outbox.put(ErrorEvent(str(ErrorCode.IDLE_TIMEOUT), message))
        if self.session is None:
            await self.drain()
            await self.ws.close(CloseCode.NORMAL, reason="idle timeout")
            return
        await self._close(None)

    async def _close(self, event_id: str | None) -> None:
        session = self.session
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_CREATED, "send session.create first")
        await finalize(session, "completed", event_id)  # puts session.summary in the outbox
        await self.drain()
        await self.ws.close(CloseCode.NORMAL)
        log.info("session %s closed normally", session.id)


live_endpoint = dialect_endpoint(LiveConnection)
