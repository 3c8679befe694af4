"""The native dialect at ``GET /v1/live`` (docs/protocol.md): a thin adapter over ``Session``."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from echopanel.audio.convert import SUPPORTED_RATES
from echopanel.config import Settings
from echopanel.events import SourceEvent
from echopanel.protocol import client_events as ce
from echopanel.protocol.errors import CloseCode, ErrorCode, ProtocolError
from echopanel.protocol.frames import decode_frame
from echopanel.protocol.native import error_event, to_wire
from echopanel.server.admission import Admission
from echopanel.server.auth import PROTOCOL_NAME, authorized
from echopanel.server.connection import DialectConnection
from echopanel.server.finalize import SpeakerUpdated
from echopanel.server.session import Backpressure, Degraded, OutboxItem, Session, SessionMetrics

log = logging.getLogger(__name__)


class LiveConnection(DialectConnection):
    """The native dialect."""

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
        await self.outbox.put(
            _with_id(
                {
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
                        },
                    },
                },
                event.event_id,
            )
        )
        log.info("session %s created: sources=%s rate=%d", session.id, session.source_names, session.sample_rate)

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
    if not admission.try_admit():
        state.metrics.sessions_refused.inc()
        log.warning("session refused: server full (%d sessions)", admission.max_sessions)
        await refuse_full(ws, admission)
        return
    try:
        await ws.accept(subprotocol=chosen)
        await LiveConnection(ws, state.engine, settings).run()
    finally:
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
