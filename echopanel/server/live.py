"""The native dialect at ``GET /v1/live`` (docs/protocol.md): a thin adapter over ``Session``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from echopanel.audio.convert import SUPPORTED_RATES
from echopanel.config import Settings
from echopanel.events import SourceEvent
from echopanel.flow.admission import Admission
from echopanel.protocol import client_events as ce
from echopanel.protocol.errors import CloseCode, ErrorCode, ProtocolError
from echopanel.protocol.frames import decode_frame
from echopanel.protocol.native import error_event, to_wire
from echopanel.server.auth import PROTOCOL_NAME, authorized
from echopanel.server.connection import DialectConnection
from echopanel.server.resume import Resumable, ResumeRegistry
from echopanel.session.finalize import SpeakerUpdated
from echopanel.session.session import Backpressure, Degraded, OutboxItem, Session, SessionMetrics

log = logging.getLogger(__name__)


# Ends that are drops, not hang-ups. uvicorn reports a connection that vanished (reset, no close frame) as 1005 or
# 1006; a browser leaving a page sends 1001.
RESUMABLE_CLOSE_CODES = {None, 1001, 1005, 1006, 1011, 1012, 1014}


class LiveConnection(DialectConnection):
    """The native dialect."""

    def __init__(self, ws: WebSocket, engine: Any, settings: Settings) -> None:
        super().__init__(ws, engine, settings)
        self.registry: ResumeRegistry | None = getattr(ws.app.state, "resumable", None)
        self.resumable: Resumable | None = None
        self.owns_slot = True  # holds an admission slot (False: admitted only to resume, or the slot went along)
        self.provisional = False  # admitted past the session limit because a detached session may be resumed

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            entry = self.resumable
            if entry is not None and self.registry is not None and entry.connection is self:
                self.registry.forget(entry)  # closed, finalized or failed: nothing to resume

    async def on_session_end(self) -> None:
        """The connection dropped without ``session.close``: detach the session for a resume (docs/protocol.md)."""
        entry = self.resumable
        # Only a dropped connection is kept for a resume: no close frame (1005/1006, a cut), going away (1001, a
        # page reload), or a proxy/server failure on the way. A clean close (1000), a policy or size violation (1008,
        # 1009) and other protocol ends finalize the session at once.
        hung_up = self.peer_close_code not in RESUMABLE_CLOSE_CODES and not self.evicted  # evicted: handed over
        if entry is None or self.registry is None or self.session is None or self.session.closing or entry.finished:
            await super().on_session_end()
            return
        if hung_up or self.slow_client:
            entry.finished = True
            await super().on_session_end()
            return
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()  # nothing more goes to this socket; the outbox keeps what was not written
            await asyncio.gather(self._sender, return_exceptions=True)
        self.registry.detach(entry, self)
        self.session = None  # no longer this connection's to close

    async def evict(self) -> None:
        """The session was resumed on another connection while this one still held it (a half-dead socket)."""
        self.evicted = True
        try:
            await asyncio.wait_for(self.ws.close(CloseCode.RESUMED_ELSEWHERE, reason="session resumed elsewhere"), 1.0)
        except (TimeoutError, RuntimeError, OSError):
            pass
        if self._reader is not None:
            self._reader.cancel()

    def on_sent(self, wire: dict[str, Any]) -> None:
        if self.resumable is not None and wire.get("type") == "response.done" and not wire.get("replayed"):
            self.resumable.note_sent(wire, self.settings.resume_replay_s)

    def encode(self, item: OutboxItem) -> list[dict[str, Any]]:
        if isinstance(item, SourceEvent):
            return [to_wire(item)]
        if isinstance(item, Degraded):
            return [{"type": "session.degraded", "level": item.level, "name": item.name, "reason": item.reason}]
        if isinstance(item, SessionMetrics):
            return [{"type": "session.metrics", **item.payload}]
        if isinstance(item, SpeakerUpdated):
            return [item.wire()]
        if isinstance(item, Backpressure):
            return [
                {
                    "type": "input_audio_buffer.backpressure",
                    "source": item.source,
                    "level": item.level,
                    "queued_ms": item.queued_ms,
                    "dropped_ms": item.dropped_ms,
                    "limit_ms": item.limit_ms,
                }
            ]
        return [item]

    def error(self, err: ProtocolError) -> dict[str, Any]:
        return error_event(err.code, err.message, event_id=err.event_id, param=err.param)

    async def on_text(self, text: str) -> bool:
        event, event_id = ce.parse_client_event(text)
        try:
            return await self._dispatch(event)
        except ProtocolError as err:
            err.event_id = err.event_id or event_id
            raise

    async def _dispatch(self, event: Any) -> bool:
        """Apply one client event; True when the connection is done."""
        if isinstance(event, ce.Ping):
            await self.outbox.put(_with_id({"type": "pong"}, event.event_id))
            return False
        if isinstance(event, ce.SessionCreate):
            if event.resume is not None:
                await self._resume(event)
                return False
            if self.provisional:
                return await self._refuse_full(event.event_id)
            await self._create(event)
            return False
        session = self._require_session()
        if isinstance(event, ce.AudioAppend):
            source = self._source(event.source)
            try:
                pcm = base64.b64decode(event.audio, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(ErrorCode.INVALID_AUDIO, "audio is not valid base64", param="audio") from None
            await self._append(source, pcm)
        elif isinstance(event, ce.AudioCommit):
            for source in self._sources(event.source):
                await session.commit(source, event.event_id)
        elif isinstance(event, ce.AudioClear):
            for source in self._sources(event.source):
                await session.clear(source)
                cleared = {"type": "input_audio_buffer.cleared", "source": source}
                await self.outbox.put(_with_id(cleared, event.event_id))
        elif isinstance(event, ce.ResponseCreate):
            for source in self._sources(event.source):
                await session.request(source, event.event_id)
        elif isinstance(event, ce.SessionUpdate):
            await self._update(event)
        elif isinstance(event, ce.SessionClose):
            await self._close(event.event_id)
            return True
        return False

    async def on_binary(self, frame: bytes) -> None:
        session = self._require_session()
        index, pcm = decode_frame(frame, len(session.sources))
        await self._append(session.source_names[index], pcm)

    async def _append(self, source: str, pcm: bytes) -> None:
        if len(pcm) % 2:
            raise ProtocolError(
                ErrorCode.INVALID_AUDIO_LENGTH,
                f"PCM16 audio must have an even byte count, got {len(pcm)}; the chunk was not accepted",
                param="audio",
            )
        assert self.session is not None
        if self.session.closing:
            raise ProtocolError(ErrorCode.SESSION_CLOSING, "the session is closing; audio was not accepted")
        if self.resumable is not None and self.resumable.skip.get(source):
            # Resent audio overlapping what the server holds by less than a millisecond (received_ms is whole ms).
            skip = min(self.resumable.skip[source] * 2, len(pcm))
            pcm = pcm[skip:]
            self.resumable.skip[source] -= skip // 2
        if pcm:
            await self.session.append(source, pcm)

    def _require_session(self) -> Session:
        if self.session is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_CREATED, "send session.create first")
        return self.session

    def _source(self, name: str | None) -> str:
        session = self._require_session()
        if name is None:
            return session.source_names[0]
        if name not in session.sources:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SOURCE,
                f"unknown source {name!r}; this session has {session.source_names}",
                param="source",
            )
        return name

    def _sources(self, name: str | None) -> list[str]:
        return self._require_session().source_names if name is None else [self._source(name)]

    async def _create(self, event: ce.SessionCreate) -> None:
        if self.session is not None:
            raise ProtocolError(ErrorCode.SESSION_ALREADY_CREATED, "this connection already has a session")
        if event.resume is not None:
            raise ProtocolError(ErrorCode.SESSION_NOT_FOUND, "no resumable session with that id", param="resume")
        cfg = event.session
        if cfg.sample_rate not in SUPPORTED_RATES:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_SAMPLE_RATE,
                f"sample_rate {cfg.sample_rate} is not supported; use one of {list(SUPPORTED_RATES)}",
                param="session.sample_rate",
            )
        if cfg.format != "pcm16":
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_FORMAT,
                f"format {cfg.format!r} is not supported; use 'pcm16'",
                param="session.format",
            )
        self._check_language(cfg.language)
        if len(cfg.sources) > self.settings.max_sources:
            raise ProtocolError(
                ErrorCode.INVALID_EVENT, f"at most {self.settings.max_sources} sources", param="session.sources"
            )
        session = self.new_session(
            sources=cfg.sources,
            sample_rate=cfg.sample_rate,
            turn_detection=cfg.turn_detection is not None,
            language=cfg.language,
            overflow=cfg.overflow,
        )
        caps = self.engine.capabilities
        created: dict[str, Any] = {
            "type": "session.created",
            "session": {
                "id": session.id,
                "sources": session.source_names,
                "sample_rate": session.sample_rate,
                "format": "pcm16",
                "language": cfg.language,
                "turn_detection": None if cfg.turn_detection is None else {"type": "server_vad"},
                "model": caps.model,
                "engine": caps.name,
                "resume_token": session.resume_token,
                "limits": {
                    "max_message_bytes": self.settings.max_message_bytes,
                    "mic_queue_ms": self.settings.mic_queue_ms,
                    "system_queue_ms": self.settings.system_queue_ms,
                    "overflow": session.overflow,
                    "max_utterance_ms": self.settings.recognizer.max_utterance_ms,
                    "max_sources": self.settings.max_sources,
                    "resume_grace_ms": int(self.settings.resume_grace_s * 1000),
                },
            },
        }
        if self.registry is not None:
            self.resumable = self.registry.register(session, created["session"], self)
        await self.outbox.put(_with_id(created, event.event_id))
        log.info("session %s created: sources=%s rate=%d", session.id, session.source_names, session.sample_rate)

    async def _resume(self, event: ce.SessionCreate) -> None:
        """``session.create {resume}``: take over a detached (or half-dead) session (docs/protocol.md "Resume")."""
        assert event.resume is not None
        if self.session is not None:
            raise ProtocolError(ErrorCode.SESSION_ALREADY_CREATED, "this connection already has a session")
        ref = event.resume
        entry = self.registry.find(ref.session_id, ref.resume_token) if self.registry is not None else None
        not_found = ProtocolError(
            ErrorCode.SESSION_NOT_FOUND,
            "no resumable session with that id and token (unknown, closed, or its grace period expired)",
            param="resume",
        )
        if entry is None or self.registry is None:
            raise not_found
        await self.drain()  # what this connection said before (pong, errors) goes out first
        if not await self.registry.take(entry, self):
            raise not_found
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        session = entry.session
        self.session, self.resumable, self.outbox = session, entry, entry.outbox
        received = entry.received_ms()
        rate = session.sample_rate
        entry.skip = {n: s.recording.samples - received[n] * rate // 1000 for n, s in session.sources.items()}
        created = {"type": "session.created", "session": entry.created, "resumed": True, "received_ms": received}
        replay = self.registry.replay(entry)
        for item in reversed([_with_id(created, event.event_id), *replay]):
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

    async def _refuse_full(self, event_id: str | None) -> bool:
        """Admitted past the limit only to resume a detached session, this connection asked for a new one."""
        message = "the server is at its session limit; retry later"
        await self.outbox.put(error_event("server_full", message, event_id=event_id))
        await self.drain()
        await self.ws.close(CloseCode.TRY_AGAIN_LATER, reason="server full")
        return True

    def _check_language(self, language: str) -> None:
        if language not in self.engine.capabilities.languages:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"language {language!r} is not supported by this model; use one of "
                f"{list(self.engine.capabilities.languages)}",
                param="session.language",
            )

    async def _update(self, event: ce.SessionUpdate) -> None:
        try:
            update = ce.SessionUpdateConfig.model_validate(event.session)
        except ce.ValidationError as exc:
            err = exc.errors()[0]
            param = "session." + ".".join(str(p) for p in err["loc"])
            raise ProtocolError(ErrorCode.INVALID_UPDATE, f"{param}: {err['msg']}", param=param) from None
        if update.language is not None:
            self._check_language(update.language)
        session = self._require_session()
        await self.outbox.put(
            _with_id(
                {
                    "type": "session.updated",
                    "session": {"id": session.id, "language": update.language or "en"},
                },
                event.event_id,
            )
        )

    async def on_idle(self) -> None:
        message = f"no message for {self.settings.idle_timeout_s:.0f} s; the session is finalized and closed"
        await self.outbox.put(error_event(ErrorCode.IDLE_TIMEOUT, message))
        if self.session is None:
            await self.drain()
            await self.ws.close(CloseCode.NORMAL, reason="idle timeout")
            return
        await self._close(None)

    async def _close(self, event_id: str | None) -> None:
        session = self._require_session()
        await session.finalize("completed", event_id)  # puts session.summary in the outbox
        await self.drain()
        await self.ws.close(CloseCode.NORMAL)
        log.info("session %s closed normally", session.id)


def _with_id(event: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    if event_id is not None:
        event["event_id"] = event_id
    return event


async def live_endpoint(ws: WebSocket) -> None:
    state = ws.app.state
    settings: Settings = state.settings
    admission: Admission = state.admission
    offered = list(ws.scope.get("subprotocols") or [])
    chosen = PROTOCOL_NAME if PROTOCOL_NAME in offered else None
    if not authorized(settings.token, ws.headers, offered):
        await ws.accept(subprotocol=chosen)
        await ws.close(CloseCode.POLICY, reason="unauthorized")
        return
    provisional = False
    if not admission.try_admit():
        registry: ResumeRegistry | None = getattr(state, "resumable", None)
        if registry is None or registry.detached == 0:
            state.metrics.sessions_refused.inc()
            log.warning("session refused: server full (%d sessions)", admission.max_sessions)
            await refuse_full(ws, admission)
            return
        provisional = True  # a detached session holds a slot: its client may come back to resume it
    connection = LiveConnection(ws, state.engine, settings)
    connection.owns_slot, connection.provisional = not provisional, provisional
    try:
        await ws.accept(subprotocol=chosen)
        await connection.run()
    finally:
        if connection.owns_slot:
            admission.release()


async def refuse_full(ws: WebSocket, admission: Admission) -> None:
    """HTTP 503 with Retry-After before the upgrade; close 1013 where the server cannot send HTTP responses."""
    body = {"type": "error", "code": "server_full", "message": "the server is at its session limit; retry later"}
    try:
        await ws.send_denial_response(
            JSONResponse(body, status_code=503, headers={"Retry-After": str(admission.retry_after_s)})
        )
    except RuntimeError:
        await ws.accept()
        await ws.close(CloseCode.TRY_AGAIN_LATER, reason="server full")
