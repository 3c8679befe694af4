"""Client -> server events of the native protocol, validated with pydantic at the edge."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from echopanel.engines.base import MAX_KEY_WORDS, MAX_REPLACE_CHARS, MAX_REPLACEMENTS, key_words
from echopanel.protocol.commands import MAX_KEYTERM_CHARS, MAX_KEYTERMS
from echopanel.protocol.errors import ErrorCode, ProtocolError, load_event

SOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    event_id: str | None = None


class TurnDetection(BaseModel):
    """Server voice-activity turn detection; null instead of this object: the client ends turns (commit)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["server_vad"] = "server_vad"
    threshold: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None  # speech probability that counts as speech
    silence_duration_ms: Annotated[int, Field(ge=100, le=5000)] | None = None  # silence that ends a turn
    prefix_padding_ms: Annotated[int, Field(ge=0, le=2000)] | None = None  # audio kept before the onset


def _keyterms(value: list[str]) -> list[str]:
    terms = [t.strip() for t in value]
    if len(terms) > MAX_KEYTERMS or any(not t or len(t) > MAX_KEYTERM_CHARS for t in terms):
        raise ValueError(f"at most {MAX_KEYTERMS} non-empty strings of at most {MAX_KEYTERM_CHARS} characters")
    return list(dict.fromkeys(terms))


def _replace(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_REPLACEMENTS:
        raise ValueError(f"at most {MAX_REPLACEMENTS} replacements")
    for key, to in value.items():
        if len(key) > MAX_REPLACE_CHARS or len(to) > MAX_REPLACE_CHARS or not to.strip():
            raise ValueError(f"keys and values are non-empty strings of at most {MAX_REPLACE_CHARS} characters")
        if not 1 <= len(key_words(key)) <= MAX_KEY_WORDS:
            raise ValueError(f"a key is 1 to {MAX_KEY_WORDS} words: {key!r}")
    return value


class _Tunable(BaseModel):
    """Settings both ``session.create`` and ``session.update`` take (docs/protocol.md "Keyterms and replacements")."""

    keyterms: list[str] | None = None  # names and jargon the decoder should expect
    replace: dict[str, str] | None = None  # heard -> written, applied to finals and stable deltas
    partials: bool | None = None  # false: finals only

    @field_validator("keyterms")
    @classmethod
    def _terms(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _keyterms(value)

    @field_validator("replace")
    @classmethod
    def _rules(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return None if value is None else _replace(value)


class SessionConfig(_Tunable):
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


class SessionUpdateConfig(_Tunable):
    """What may change mid-session (sources and sample rate are fixed at creation); a field left out stays."""

    model_config = ConfigDict(extra="forbid", strict=True)
    language: str | None = None
    turn_detection: TurnDetection | None = None  # present and null: the client ends turns from now on


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
