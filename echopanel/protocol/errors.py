"""Error codes and close codes of the native protocol (docs/protocol.md lists each with its meaning)."""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Any

from echopanel.events import ErrorEvent


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    UNKNOWN_EVENT = "unknown_event"
    INVALID_EVENT = "invalid_event"  # a field is missing, has the wrong type or an invalid value
    SESSION_NOT_CREATED = "session_not_created"
    SESSION_ALREADY_CREATED = "session_already_created"
    SESSION_NOT_FOUND = "session_not_found"
    UNKNOWN_SOURCE = "unknown_source"
    INVALID_AUDIO = "invalid_audio"  # not valid base64
    INVALID_AUDIO_LENGTH = "invalid_audio_length"  # odd byte count: not whole PCM16 samples
    INVALID_FRAME = "invalid_frame"  # binary frame with a bad magic, version or source index
    UNSUPPORTED_SAMPLE_RATE = "unsupported_sample_rate"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_LANGUAGE = "unsupported_language"
    INVALID_UPDATE = "invalid_update"
    COMMIT_EMPTY = "input_audio_buffer_commit_empty"
    TRANSCRIPTION_FAILED = "transcription_failed"
    ENGINE_UNAVAILABLE = "engine_unavailable"  # every engine is failing; the item's audio is kept (recording)
    SESSION_CLOSING = "session_closing"
    TOO_MANY_PENDING = "too_many_pending_events"  # a source's queue already holds its bound of control events
    SERVER_FULL = "server_full"
    DRAINING = "server_draining"  # the node is shutting down (SIGTERM): connect again, to another node
    SESSION_BUSY = "session_busy"  # resume: the session still runs on another node with its client; retry (1013)
    IDLE_TIMEOUT = "idle_timeout"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    NORMAL = 1000
    POLICY = 1008  # unauthorized
    TOO_LARGE = 1009
    SERVER_ERROR = 1011
    SERVICE_RESTART = 1012  # the node is draining (SIGTERM): resume the session on another node
    TRY_AGAIN_LATER = 1013
    RESUMED_ELSEWHERE = 4000  # native: this connection's session was resumed on a newer connection


class ProtocolError(Exception):
    """A client event that cannot be applied. The session stays open."""

    def __init__(self, code: ErrorCode, message: str, *, param: str | None = None, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.event_id = event_id

    def event(self) -> ErrorEvent:
        """The typed error event that tells the client (each dialect's codec encodes it)."""
        return ErrorEvent(str(self.code), self.message, param=self.param, event_id=self.event_id)


def load_event(text: str) -> tuple[dict[str, Any], str | None]:
    """Decode one JSON text message into an object; returns it with the ``event_id`` it carries, if any."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "message must be a JSON object")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    return raw, event_id
