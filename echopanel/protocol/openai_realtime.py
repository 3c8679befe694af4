"""The OpenAI Realtime transcription dialect's codec: wire messages <-> commands and typed events, without I/O.

The subset of the OpenAI Realtime API a transcription session uses (``/v1/realtime?intent=transcription``): one
source ("mic"), PCM16 at 24 kHz, server VAD or manual commits. ``OpenAICodec.parse_text`` validates one client event
into a ``Command``; ``encode`` turns one server event into its wire messages. Only event types the official SDK
knows are ever sent, so each arrives as the SDK's own typed class; EchoPanel's extras (tentative text, words,
source, speaker) ride as extra fields on those events. Events this API has no form for (backpressure, metrics,
degrade notices, speaker updates, the summary) are not sent: they are in ``/metrics`` and the store.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import uuid
from collections import deque
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from echopanel.engines.base import TurnSettings
from echopanel.events import (
    AudioCleared,
    Committed,
    ErrorEvent,
    ItemFailed,
    ServerEvent,
    SessionCreated,
    SessionUpdated,
    SourceEvent,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    item_id,
)
from echopanel.protocol import commands as cmd
from echopanel.protocol.errors import ErrorCode, ProtocolError, load_event
from echopanel.protocol.native import whole_samples, words_wire
from echopanel.protocol.openai_session import SAMPLE_RATE, EffectiveConfig, apply_update, parse_beta, parse_ga

SOURCE = "mic"
RACE_MS = 1500  # a client commit finding nothing this soon after the server VAD's own commit is that same commit


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: dict[str, Any]


class BetaSessionUpdate(_Event):
    type: Literal["transcription_session.update"]
    session: dict[str, Any]


class Append(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class Commit(_Event):
    type: Literal["input_audio_buffer.commit"]


class Clear(_Event):
    type: Literal["input_audio_buffer.clear"]


_EVENTS: dict[str, type[_Event]] = {
    "session.update": SessionUpdate,
    "transcription_session.update": BetaSessionUpdate,
    "input_audio_buffer.append": Append,
    "input_audio_buffer.commit": Commit,
    "input_audio_buffer.clear": Clear,
}


def parse_event(text: str) -> _Event:
    raw, event_id = load_event(text)
    kind = raw.get("type")
    model = _EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_EVENT,
            f"unsupported event type {kind!r} in a transcription session",
            param="type",
            event_id=event_id,
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, event_id, prefix="") from None


def _validation_error(exc: ValidationError, event_id: str | None, prefix: str) -> ProtocolError:
    err = exc.errors()[0]
    param = prefix + ".".join(str(p) for p in err["loc"])
    return ProtocolError(ErrorCode.INVALID_EVENT, f"{param}: {err['msg']}", param=param, event_id=event_id)


class EventIds:
    """Server event ids: ``event_<random>_<n>``."""

    def __init__(self) -> None:
        self._prefix = "event_" + uuid.uuid4().hex[:12]
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}_{next(self._n)}"


def error_wire(server_id: str, ev: ErrorEvent) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": server_id,
        "error": {
            "type": "server_error" if ev.server else "invalid_request_error",
            "code": ev.code,
            "message": ev.message,
            "param": ev.param,
            "event_id": ev.event_id,
        },
    }


class OpenAICodec:
    """One transcription session's codec: its effective configuration, server event ids and item chain."""

    def __init__(self, *, model: str, languages: tuple[str, ...] = ("en",)) -> None:
        self.languages = languages
        self.ids = EventIds()
        self.config = EffectiveConfig(model=model)
        self.previous_item: str | None = None
        self._update_shapes: deque[bool] = deque()  # per applied update, oldest first: answer in the beta shape?
        self._appended_ms = 0.0  # audio the client appended
        self._vad_commit_ms: float | None = None  # audio_end_ms of the server VAD's latest commit

    # -- client -> server --------------------------------------------------------------------------------------------

    def parse_text(self, text: str) -> cmd.Command:
        event = parse_event(text)
        if isinstance(event, Append):
            try:
                pcm = base64.b64decode(event.audio, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(
                    ErrorCode.INVALID_AUDIO, "audio is not valid base64", param="audio", event_id=event.event_id
                ) from None
            try:
                samples = whole_samples(pcm)
            except ProtocolError as err:
                err.event_id = event.event_id
                raise
            self._appended_ms += len(samples) / 2 / SAMPLE_RATE * 1000
            return cmd.AppendAudio(SOURCE, samples, event.event_id)
        if isinstance(event, Commit):
            return cmd.CommitAudio((SOURCE,), event.event_id)
        if isinstance(event, Clear):
            return cmd.ClearAudio((SOURCE,), event.event_id)
        assert isinstance(event, SessionUpdate | BetaSessionUpdate)
        beta = isinstance(event, BetaSessionUpdate)
        update = parse_beta(event.session, event.event_id) if beta else parse_ga(event.session, event.event_id)[0]
        new = apply_update(self.config, update, event.event_id, self.languages, beta=beta)
        old, self.config = self.config, new
        self._update_shapes.append(beta)
        turns = None
        if (new.vad, new.threshold, new.prefix_padding_ms, new.silence_duration_ms) != (
            old.vad,
            old.threshold,
            old.prefix_padding_ms,
            old.silence_duration_ms,
        ):
            turns = TurnSettings(
                enabled=new.vad,
                threshold=new.threshold,
                prefix_padding_ms=new.prefix_padding_ms,
                silence_duration_ms=new.silence_duration_ms,
            )
        return cmd.UpdateSession(
            language=new.language if new.language != old.language else None,
            turns=turns,
            prompt=new.decoder_prompt if new.decoder_prompt != old.decoder_prompt else None,
            agreement=new.agreement if new.agreement != old.agreement else None,
            event_id=event.event_id,
        )

    def parse_binary(self, data: bytes) -> cmd.Command:
        raise ProtocolError(ErrorCode.INVALID_EVENT, "binary messages are not part of this protocol; send JSON events")

    # -- server -> client --------------------------------------------------------------------------------------------

    def encode(self, event: ServerEvent) -> list[dict[str, Any]]:
        if isinstance(event, SourceEvent):
            return self._source_event(event)
        if isinstance(event, ErrorEvent):
            return [error_wire(self.ids.next(), event)]
        if isinstance(event, SessionCreated):
            return [self._session("session.created", event.info.id)]
        if isinstance(event, SessionUpdated):
            beta = self._update_shapes.popleft() if self._update_shapes else False
            if beta:
                session = self.config.as_beta_session(event.session_id)
                return [{"type": "transcription_session.updated", "event_id": self.ids.next(), "session": session}]
            return [self._session("session.updated", event.session_id)]
        if isinstance(event, AudioCleared):
            return [{"type": "input_audio_buffer.cleared", "event_id": self.ids.next()}]
        # Backpressure, Degraded, SessionMetrics, SpeakerUpdated, SessionSummary, Pong, Replayed: no such events in
        # this API (visible in /metrics and the logs; the stored transcript has the settled labels).
        return []

    def _source_event(self, item: SourceEvent) -> list[dict[str, Any]]:
        ev = item.event
        if isinstance(ev, SpeechStarted):
            if not self.config.vad:
                return []
            return [
                {
                    "type": "input_audio_buffer.speech_started",
                    "event_id": self.ids.next(),
                    "item_id": item_id(SOURCE, ev.item),
                    "audio_start_ms": ev.audio_start_ms,
                }
            ]
        if isinstance(ev, SpeechStopped):
            if ev.reason == "commit":
                return [self._stopped(ev)] if self.config.vad else []
            # Server VAD (or the length cap) ended the turn: it is committed at once.
            stopped = [self._stopped(ev)] if self.config.vad else []
            self._vad_commit_ms = float(ev.audio_end_ms)
            return [*stopped, self._committed(ev.item)]
        if isinstance(ev, Committed):
            if ev.item is None and self._lost_race():
                # The client's own VAD ended the same turn the server's VAD had just committed: that commit has
                # happened; no second item, no error (docs/protocol.md, "Client commits beside server VAD").
                return []
            if ev.item is None:
                err = ErrorEvent(
                    str(ErrorCode.COMMIT_EMPTY), "the input audio buffer holds no speech to commit",
                    event_id=ev.event_id or None,
                )  # fmt: skip
                return [error_wire(self.ids.next(), err)]
            return [self._committed(ev.item)]
        if isinstance(ev, TextDelta):
            return [
                {
                    "type": "conversation.item.input_audio_transcription.delta",
                    "event_id": self.ids.next(),
                    "item_id": item_id(SOURCE, ev.item),
                    "content_index": 0,
                    "delta": ev.delta,
                    "tentative": ev.tentative,
                    "source": SOURCE,
                    "start_ms": ev.start_ms,
                    "end_ms": ev.end_ms,
                }
            ]
        if isinstance(ev, TextFinal):
            return self._final(item, ev)
        if isinstance(ev, ItemFailed):
            return [
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "event_id": self.ids.next(),
                    "item_id": item_id(SOURCE, ev.item),
                    "content_index": 0,
                    "error": {"type": "server_error", "code": ev.code, "message": ev.message, "param": None},
                }
            ]
        return []  # RequestCompleted: no such event in this API

    def _final(self, item: SourceEvent, ev: TextFinal) -> list[dict[str, Any]]:
        iid = item_id(SOURCE, ev.item)
        segment: list[dict[str, Any]] = []
        if item.speaker is not None and ev.text:
            segment = [
                {
                    "type": "conversation.item.input_audio_transcription.segment",
                    "event_id": self.ids.next(),
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
            ]
        completed = {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": self.ids.next(),
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
        if self.config.logprobs:
            completed["logprobs"] = [
                {
                    "token": w.text,
                    "logprob": round(math.log(max(w.confidence, 1e-6)), 4),
                    "bytes": list(w.text.encode()),
                }
                for w in ev.words
            ]
        return [*segment, completed]  # the segment first, so a client that stops at completed has both

    def _lost_race(self) -> bool:
        return self._vad_commit_ms is not None and self._appended_ms - self._vad_commit_ms <= RACE_MS

    def _session(self, kind: str, session_id: str) -> dict[str, Any]:
        return {"type": kind, "event_id": self.ids.next(), "session": self.config.as_session(session_id)}

    def _stopped(self, ev: SpeechStopped) -> dict[str, Any]:
        return {
            "type": "input_audio_buffer.speech_stopped",
            "event_id": self.ids.next(),
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
