"""Client -> server events of the native protocol, validated with pydantic at the edge."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from echopanel.protocol.errors import ErrorCode, ProtocolError, load_event

SOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    event_id: str | None = None


class TurnDetection(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["server_vad"] = "server_vad"


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    sources: list[str] = Field(default_factory=lambda: ["mic", "system"], min_length=1)
    sample_rate: int = 16000
    format: str = "pcm16"
    language: str = "en"
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)
    overflow: Literal["shed", "block"] | None = None  # None: the server's default (shed)

    @field_validator("sources")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not SOURCE_NAME.match(name):
                raise ValueError(f"invalid source name {name!r}")
        if len(set(value)) != len(value):
            raise ValueError("source names must be unique")
        return value


class SessionUpdateConfig(BaseModel):
    """What may change mid-session (sources and sample rate are fixed at creation)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    language: str | None = None


class Resume(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    session_id: str
    resume_token: str


class SessionCreate(_Event):
    type: Literal["session.create"]
    session: SessionConfig = Field(default_factory=SessionConfig)
    resume: Resume | None = None


class AudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    source: str | None = None
    audio: str


class AudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]
    source: str | None = None


class AudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]
    source: str | None = None


class ResponseCreate(_Event):
    type: Literal["response.create"]
    source: str | None = None


class SessionUpdate(_Event):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["session.update"]
    session: dict[str, Any]


class SessionClose(_Event):
    type: Literal["session.close"]


class Ping(_Event):
    type: Literal["ping"]


ClientEvent = Annotated[
    SessionCreate | AudioAppend | AudioCommit | AudioClear | ResponseCreate | SessionUpdate | SessionClose | Ping,
    Field(discriminator="type"),
]
KNOWN_TYPES = frozenset(
    {
        "session.create",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.clear",
        "response.create",
        "session.update",
        "session.close",
        "ping",
    }
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientEvent)


def parse_client_event(text: str) -> tuple[Any, str | None]:
    """Parse one text message. Returns (event, event_id); raises ProtocolError with the event_id it could read."""
    raw, event_id = load_event(text)
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_EVENT, "missing string field 'type'", param="type", event_id=event_id)
    if kind not in KNOWN_TYPES:
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event type {kind!r}", param="type", event_id=event_id)
    try:
        return _ADAPTER.validate_python(raw), event_id
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if p != kind]
        param = ".".join(loc) or None
        message = f"{param or kind}: {err['msg']}"
        raise ProtocolError(ErrorCode.INVALID_EVENT, message, param=param, event_id=event_id) from None
