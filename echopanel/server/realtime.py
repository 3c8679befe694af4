"""The OpenAI Realtime transcription dialect at ``/v1/realtime?intent=transcription``.

A thin adapter over the same ``Session`` pipeline as ``/v1/live``: one source ("mic"), PCM16 at 24 kHz
(resampled to the model rate), server VAD or manual commits. docs/protocol.md shows both dialects side by side.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from starlette.websockets import WebSocket

from echopanel.config import Settings
from echopanel.engines.base import TurnSettings
from echopanel.events import (
    Committed,
    ItemFailed,
    SourceEvent,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    item_id,
)
from echopanel.flow.admission import Admission
from echopanel.protocol import openai_realtime as oa
from echopanel.protocol.errors import CloseCode, ErrorCode, ProtocolError
from echopanel.protocol.native import words_wire
from echopanel.server.auth import authorized
from echopanel.server.connection import DialectConnection
from echopanel.session.finalize import SpeakerUpdated
from echopanel.session.session import Backpressure, Degraded, OutboxItem, SessionMetrics

log = logging.getLogger(__name__)

SOURCE = "mic"


class RealtimeConnection(DialectConnection):
    def __init__(self, ws: WebSocket, engine: Any, settings: Settings) -> None:
        super().__init__(ws, engine, settings)
        self.ids = oa.EventIds()
        self.config = oa.EffectiveConfig(model=engine.capabilities.model)
        self.previous_item: str | None = None
        self.pending_commit_ids: dict[int, str | None] = {}

    async def on_open(self) -> None:
        session = self.new_session(
            sources=[SOURCE],
            sample_rate=oa.SAMPLE_RATE,
            dialect="openai",
            # This API has no finalization step to deliver repaired text, and its clients do not expect shedding:
            # a client that sends faster than we transcribe is pushed back through TCP instead.
            overflow="block",
        )
        await self.outbox.put(
            {"type": "session.created", "event_id": self.ids.next(), "session": self.config.as_session(session.id)}
        )
        log.info("realtime session %s created", session.id)

    def error(self, err: ProtocolError) -> dict[str, Any]:
        return oa.error_event(self.ids.next(), err)

    async def on_session_end(self) -> None:
        # This API has no close event: the client hanging up is the normal end. The session is finalized for the
        # store (transcript, speakers, summary), with nobody listening.
        await self.finalize_unattended("completed")

    async def on_binary(self, data: bytes) -> None:
        raise ProtocolError(ErrorCode.INVALID_EVENT, "binary messages are not part of this protocol; send JSON events")

    async def on_text(self, text: str) -> bool:
        event = oa.parse_event(text)
        session = self.session
        assert session is not None
        if isinstance(event, oa.Append):
            try:
                pcm = base64.b64decode(event.audio, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(
                    ErrorCode.INVALID_AUDIO, "audio is not valid base64", param="audio", event_id=event.event_id
                ) from None
            if len(pcm) % 2:
                raise ProtocolError(
                    ErrorCode.INVALID_AUDIO_LENGTH,
                    "PCM16 audio must have an even byte count; the chunk was not accepted",
                    param="audio",
                    event_id=event.event_id,
                )
            if pcm:
                await session.append(SOURCE, pcm)
        elif isinstance(event, oa.Commit):
            await session.commit(SOURCE, event.event_id or "")
        elif isinstance(event, oa.Clear):
            await session.clear(SOURCE)
            await self.outbox.put({"type": "input_audio_buffer.cleared", "event_id": self.ids.next()})
        elif isinstance(event, oa.SessionUpdate):
            new = oa.apply_update(self.config, event.session, event.event_id)
            old, self.config = self.config, new
            if (new.vad, new.threshold, new.prefix_padding_ms, new.silence_duration_ms) != (
                old.vad,
                old.threshold,
                old.prefix_padding_ms,
                old.silence_duration_ms,
            ):
                await session.configure(
                    SOURCE,
                    TurnSettings(
                        enabled=new.vad,
                        threshold=new.threshold,
                        prefix_padding_ms=new.prefix_padding_ms,
                        silence_duration_ms=new.silence_duration_ms,
                    ),
                )
            if new.prompt != old.prompt:
                session.set_prompt(SOURCE, new.prompt)
            await self.outbox.put(
                {"type": "session.updated", "event_id": self.ids.next(), "session": new.as_session(session.id)}
            )
        return False

    def encode(self, item: OutboxItem) -> list[dict[str, Any]]:
        if isinstance(item, Backpressure | Degraded | SessionMetrics):
            return []  # no such events in this dialect; visible in /metrics and the logs
        if isinstance(item, SpeakerUpdated):
            return []  # no such event in this API; the stored transcript has the settled labels
        if isinstance(item, dict) and item.get("type") == "session.summary":
            return []
        if not isinstance(item, SourceEvent):
            return [item]
        wire = self._encode(item)
        return wire if isinstance(wire, list) else [] if wire is None else [wire]

    def _encode(self, item: SourceEvent) -> dict[str, Any] | list[dict[str, Any]] | None:
        ev = item.event
        eid = self.ids.next()
        if isinstance(ev, SpeechStarted):
            if not self.config.vad:
                return None
            return {
                "type": "input_audio_buffer.speech_started",
                "event_id": eid,
                "item_id": item_id(SOURCE, ev.item),
                "audio_start_ms": ev.audio_start_ms,
            }
        if isinstance(ev, SpeechStopped):
            if ev.reason == "commit":
                return self._stopped(ev, eid) if self.config.vad else None
            # Server VAD (or the length cap) ended the turn: it is committed at once.
            stopped = [self._stopped(ev, eid)] if self.config.vad else []
            return [*stopped, self._committed(ev.item)]
        if isinstance(ev, Committed):
            if ev.item is None:
                err = ProtocolError(
                    ErrorCode.COMMIT_EMPTY,
                    "the input audio buffer holds no speech to commit",
                    event_id=ev.event_id or None,
                )
                return oa.error_event(eid, err)
            return self._committed(ev.item)
        if isinstance(ev, TextDelta):
            return {
                "type": "conversation.item.input_audio_transcription.delta",
                "event_id": eid,
                "item_id": item_id(SOURCE, ev.item),
                "content_index": 0,
                "delta": ev.delta,
                "tentative": ev.tentative,
                "source": SOURCE,
                "start_ms": ev.start_ms,
                "end_ms": ev.end_ms,
            }
        if isinstance(ev, TextFinal):
            iid = item_id(SOURCE, ev.item)
            completed = {
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": eid,
                "item_id": iid,
                "content_index": 0,
                "transcript": ev.text,
                "usage": {"type": "duration", "seconds": round(max(0, ev.end_ms - ev.start_ms) / 1000, 3)},
                "source": SOURCE,
                "speaker": item.speaker,
                "start_ms": ev.start_ms,
                "end_ms": ev.end_ms,
                "words": words_wire(ev.words),
            }
            if item.speaker is None or not ev.text:
                return completed
            segment = {
                "type": "conversation.item.input_audio_transcription.segment",
                "event_id": eid,
                "item_id": iid,
                "content_index": 0,
                "id": f"seg_{ev.item:05d}",
                "text": ev.text,
                "speaker": item.speaker,
                "start": round(ev.start_ms / 1000, 3),
                "end": round(ev.end_ms / 1000, 3),
                "source": SOURCE,
                "start_ms": ev.start_ms,
                "end_ms": ev.end_ms,
            }
            completed["event_id"] = self.ids.next()
            return [segment, completed]  # the segment first, so a client that stops at completed has both
        if isinstance(ev, ItemFailed):
            return {
                "type": "conversation.item.input_audio_transcription.failed",
                "event_id": eid,
                "item_id": item_id(SOURCE, ev.item),
                "content_index": 0,
                "error": {"type": "server_error", "code": ev.code, "message": ev.message, "param": None},
            }
        return None

    def _stopped(self, ev: SpeechStopped, eid: str) -> dict[str, Any]:
        return {
            "type": "input_audio_buffer.speech_stopped",
            "event_id": eid,
            "item_id": item_id(SOURCE, ev.item),
            "audio_end_ms": ev.audio_end_ms,
        }

    def _committed(self, item: int) -> dict[str, Any]:
        iid = item_id(SOURCE, item)
        out = {
            "type": "input_audio_buffer.committed",
            "event_id": self.ids.next(),
            "item_id": iid,
            "previous_item_id": self.previous_item,
        }
        self.previous_item = iid
        return out


async def realtime_endpoint(ws: WebSocket) -> None:
    state = ws.app.state
    settings: Settings = state.settings
    admission: Admission = state.admission
    if not authorized(settings.token, ws.headers, ()):
        await ws.accept()
        await ws.close(CloseCode.POLICY, reason="unauthorized")
        return
    if ws.query_params.get("intent", "transcription") != "transcription":
        await ws.accept()
        await ws.close(CloseCode.POLICY, reason="only intent=transcription is supported")
        return
    if not admission.try_admit():
        state.metrics.sessions_refused.inc()
        log.warning("realtime session refused: server full (%d sessions)", admission.max_sessions)
        await ws.accept()
        await ws.close(CloseCode.TRY_AGAIN_LATER, reason="server full")
        return
    try:
        await ws.accept()
        await RealtimeConnection(ws, state.engine, settings).run()
    finally:
        admission.release()
