"""The OpenAI Realtime API transcription-session subset: client event models and server event encoding.

Only event types the official SDK knows are ever sent, so each arrives as the SDK's own typed class; EchoPanel's
extras (tentative text, words, source, speaker) ride as extra fields on those events.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from echopanel.protocol.errors import ErrorCode, ProtocolError, load_event

SAMPLE_RATE = 24000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioFormat(_Strict):
    type: str = "audio/pcm"
    rate: int | None = None


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class TurnDetection(_Strict):
    type: str
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    create_response: bool | None = None  # no model responses here; accepted and ignored
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None


class AudioInput(_Strict):
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: dict[str, Any] | None = None


class Audio(_Strict):
    input: AudioInput | None = None


class SessionConfig(_Strict):
    type: str
    audio: Audio | None = None
    include: list[str] | None = None


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
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


@dataclass
class EffectiveConfig:
    """What the session actually does, echoed in session.created / session.updated."""

    model: str
    language: str = "en"
    prompt: str = ""
    vad: bool = True
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 300

    def as_session(self, session_id: str) -> dict[str, Any]:
        turn = (
            {
                "type": "server_vad",
                "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
            }
            if self.vad
            else None
        )
        return {
            "type": "transcription",
            "id": session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "transcription": {"model": self.model, "language": self.language, "prompt": self.prompt},
                    "turn_detection": turn,
                    "noise_reduction": None,
                }
            },
            "include": None,
        }


def apply_update(config: EffectiveConfig, raw: dict[str, Any], event_id: str | None) -> EffectiveConfig:
    """Validate a ``session.update`` and return the new effective config; unsupported options name their param."""
    try:
        update = SessionConfig.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, event_id, prefix="session.") from None

    def unsupported(param: str, message: str, code: ErrorCode = ErrorCode.INVALID_EVENT) -> ProtocolError:
        return ProtocolError(code, message, param=param, event_id=event_id)

    if update.type != "transcription":
        raise unsupported("session.type", f"session type {update.type!r} is not supported; use 'transcription'")
    if update.include:
        raise unsupported("session.include", "include options are not supported")
    new = EffectiveConfig(**vars(config))
    audio_in = update.audio.input if update.audio else None
    if audio_in is None:
        return new
    fmt = audio_in.format
    if fmt is not None:
        if fmt.type != "audio/pcm":
            raise unsupported(
                "session.audio.input.format.type",
                f"audio format {fmt.type!r} is not supported; use 'audio/pcm'",
                ErrorCode.UNSUPPORTED_FORMAT,
            )
        if fmt.rate not in (None, SAMPLE_RATE):
            raise unsupported(
                "session.audio.input.format.rate",
                f"rate {fmt.rate} is not supported; use {SAMPLE_RATE}",
                ErrorCode.UNSUPPORTED_SAMPLE_RATE,
            )
    if audio_in.noise_reduction is not None:
        raise unsupported("session.audio.input.noise_reduction", "noise reduction is not supported; use null")
    tr = audio_in.transcription
    if tr is not None:
        if tr.language not in (None, "en"):
            raise unsupported(
                "session.audio.input.transcription.language",
                f"language {tr.language!r} is not supported by this model; use 'en'",
                ErrorCode.UNSUPPORTED_LANGUAGE,
            )
        if tr.prompt is not None:
            new.prompt = tr.prompt[-500:]
    if "turn_detection" in audio_in.model_fields_set:
        td = audio_in.turn_detection
        if td is None:
            new.vad = False
        else:
            if td.type != "server_vad":
                raise unsupported(
                    "session.audio.input.turn_detection.type",
                    f"turn detection {td.type!r} is not supported; use 'server_vad' or null",
                )
            if td.idle_timeout_ms is not None:
                raise unsupported("session.audio.input.turn_detection.idle_timeout_ms", "idle timeout is not supported")
            new.vad = True
            if td.threshold is not None:
                if not 0.0 < td.threshold < 1.0:
                    raise unsupported("session.audio.input.turn_detection.threshold", "threshold must be in (0, 1)")
                new.threshold = td.threshold
            if td.prefix_padding_ms is not None:
                if not 0 <= td.prefix_padding_ms <= 2000:
                    raise unsupported(
                        "session.audio.input.turn_detection.prefix_padding_ms", "prefix_padding_ms must be 0-2000"
                    )
                new.prefix_padding_ms = td.prefix_padding_ms
            if td.silence_duration_ms is not None:
                if not 100 <= td.silence_duration_ms <= 5000:
                    raise unsupported(
                        "session.audio.input.turn_detection.silence_duration_ms", "silence_duration_ms must be 100-5000"
                    )
                new.silence_duration_ms = td.silence_duration_ms
    return new


class EventIds:
    """Server event ids: ``event_<random>_<n>``."""

    def __init__(self) -> None:
        self._prefix = "event_" + uuid.uuid4().hex[:12]
        self._n = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}_{next(self._n)}"


def error_event(server_id: str, err: ProtocolError, error_type: str = "invalid_request_error") -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": server_id,
        "error": {
            "type": error_type,
            "code": str(err.code),
            "message": err.message,
            "param": err.param,
            "event_id": err.event_id,
        },
    }
