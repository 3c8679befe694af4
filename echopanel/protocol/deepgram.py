"""The Deepgram live dialect's codec (``/v1/listen``): query parameters -> options, client messages -> commands,
typed events -> Deepgram's messages. No I/O.

Audio: binary frames of raw PCM16 (``encoding=linear16``), ``channels`` interleaved. With ``multichannel=true`` each
channel is its own source (channel 0 "mic", 1 "system", then "ch2", "ch3"), transcribed and labelled on its own;
without it several channels are mixed down to one. Control messages: ``KeepAlive``, ``Finalize``, ``CloseStream``,
``Configure {keyterms}``.

Results (docs/protocol.md, "Deepgram"): one ``Results`` with ``is_final: true`` per utterance, its final text, words
with times, confidence and (``diarize``) speaker numbers; ``speech_final: true`` when the utterance ended on
silence (the endpoint, ``endpointing`` ms), ``from_finalize: true`` when a ``Finalize`` ended it, neither when the
15 s length cap cut it (more of the same speech follows). With ``interim_results=true`` each re-decode of the open
utterance is a ``Results`` with ``is_final: false`` and the whole text so far (stable and tentative). Everything with
``is_final: true`` is final: the transcript is their concatenation, each once.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from echopanel.audio.convert import SUPPORTED_RATES
from echopanel.events import (
    ErrorEvent,
    ItemFailed,
    ServerEvent,
    SessionSummary,
    SessionUpdated,
    SourceEvent,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    UtteranceEnd,
)
from echopanel.protocol import commands as cmd
from echopanel.protocol.commands import MAX_KEYTERM_CHARS, MAX_KEYTERMS, glossary
from echopanel.protocol.errors import ErrorCode, ProtocolError

CHANNEL_SOURCES = ("mic", "system")
MODEL_UUID = "echopanel-" + "whisper-tiny-en"
_NOT_ALNUM = re.compile(r"[^\w'-]+")


def _flag(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


class DeepgramOptions(BaseModel):
    """The query parameters EchoPanel honours; the others Deepgram defines are accepted and have no effect."""

    model_config = ConfigDict(extra="ignore")

    model: str = "nova-3"
    encoding: str = "linear16"
    sample_rate: int = 16000
    channels: int = Field(1, ge=1)
    multichannel: bool = False
    interim_results: bool = False
    punctuate: bool = False
    smart_format: bool = False
    diarize: bool = False
    # ms of silence that ends an utterance; false: only Finalize ends one; left out: the server's (300 ms), since
    # Deepgram's own default of 10 ms would cut a whole-utterance decoder's utterances at every breath
    endpointing: int | bool | None = None
    utterance_end_ms: int | None = Field(None, ge=1000, le=5000)
    vad_events: bool = False
    keyterm: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)  # nova-2's "word:boost": the boost is dropped
    language: str = "en"
    callback: str | None = None

    _bools = field_validator(
        "multichannel", "interim_results", "punctuate", "smart_format", "diarize", "vad_events", mode="before"
    )(_flag)

    @field_validator("endpointing", mode="before")
    @classmethod
    def _endpointing(cls, value: Any) -> Any:
        value = _flag(value)
        if isinstance(value, str) and value.isdigit():
            return int(value)
        return value

    @property
    def keyterms(self) -> tuple[str, ...]:
        terms = [*self.keyterm, *(k.rsplit(":", 1)[0] for k in self.keywords)]
        return tuple(t.strip() for t in terms if t.strip())

    @property
    def turn_detection(self) -> bool:
        """False with ``endpointing=false``: only Finalize (or the length cap) ends an utterance."""
        return self.endpointing is not False

    @property
    def silence_ms(self) -> int | None:
        """The silence that ends an utterance; None: the server's own."""
        if self.endpointing is None or isinstance(self.endpointing, bool):
            return None
        return max(100, min(5000, int(self.endpointing)))

    @property
    def sources(self) -> list[str]:
        n = self.channels if self.multichannel else 1
        return [CHANNEL_SOURCES[i] if i < len(CHANNEL_SOURCES) else f"ch{i}" for i in range(n)]


def parse_options(query: str, max_sources: int, languages: tuple[str, ...]) -> DeepgramOptions:
    """The options of a ``/v1/listen`` URL's query; a ``ProtocolError`` (param named) for what cannot work."""
    raw: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ("keyterm", "keywords"):
            raw.setdefault(key, []).append(value)
        else:
            raw[key] = value
    try:
        options = DeepgramOptions.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"])
        raise ProtocolError(ErrorCode.INVALID_EVENT, f"{param}: {err['msg']}", param=param) from None
    if options.encoding != "linear16":
        raise ProtocolError(ErrorCode.UNSUPPORTED_FORMAT, "only encoding=linear16 is supported", param="encoding")
    if options.sample_rate not in SUPPORTED_RATES:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_SAMPLE_RATE,
            f"sample_rate must be one of {list(SUPPORTED_RATES)}",
            param="sample_rate",
        )
    if options.multichannel and options.channels > max_sources:
        raise ProtocolError(ErrorCode.INVALID_EVENT, f"at most {max_sources} channels", param="channels")
    if options.language not in languages:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_LANGUAGE, f"language must be one of {list(languages)}", param="language"
        )
    if options.callback:
        raise ProtocolError(ErrorCode.INVALID_EVENT, "callback delivery is not supported", param="callback")
    terms = options.keyterms
    if len(terms) > MAX_KEYTERMS or any(len(t) > MAX_KEYTERM_CHARS for t in terms):
        raise ProtocolError(
            ErrorCode.INVALID_EVENT,
            f"at most {MAX_KEYTERMS} keyterms of at most {MAX_KEYTERM_CHARS} characters",
            param="keyterm",
        )
    return options


def _error(code: str, message: str) -> dict[str, Any]:
    return {"type": "Error", "variant": code, "description": message, "code": code, "message": message}


@dataclass
class _Utterance:
    stable: str = ""
    ended_by: str = ""  # the SpeechStopped reason


@dataclass
class DeepgramCodec:
    options: DeepgramOptions
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    model_name: str = "whisper-tiny.en"
    _open: dict[tuple[str, int], _Utterance] = field(default_factory=dict)
    _finalizing: set[str] = field(default_factory=set)  # sources whose next final a Finalize asked for
    _speakers: dict[str, int] = field(default_factory=dict)
    last_word_end_ms: dict[str, int] = field(default_factory=dict)  # per source: waiting for an UtteranceEnd
    audio_ms: float = 0.0
    configured: tuple[str, ...] = ()  # keyterms in effect

    # -- client -> server --------------------------------------------------------------------------------------------

    def parse_text(self, text: str) -> cmd.Command:
        try:
            raw = json.loads(text)
        except ValueError:
            raise ProtocolError(ErrorCode.INVALID_JSON, "control messages are JSON") from None
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind == "KeepAlive":
            return cmd.Ping()
        if kind == "Finalize":
            self._finalizing.update(self.options.sources)
            return cmd.CommitAudio(tuple(self.options.sources))
        if kind == "CloseStream":
            return cmd.CloseSession()
        if kind == "Configure":
            terms = raw.get("keyterms")
            if terms is not None and (
                not isinstance(terms, list)
                or not all(isinstance(t, str) for t in terms)
                or len(terms) > MAX_KEYTERMS
                or any(len(t) > MAX_KEYTERM_CHARS for t in terms)
            ):
                raise ProtocolError(
                    ErrorCode.INVALID_EVENT,
                    f"keyterms: at most {MAX_KEYTERMS} strings of at most {MAX_KEYTERM_CHARS} characters",
                    param="keyterms",
                )
            if terms is None:
                return cmd.UpdateSession()
            self.configured = tuple(t.strip() for t in terms if t.strip())
            return cmd.UpdateSession(prompt=glossary(self.configured))
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown message type {kind!r}", param="type")

    def parse_binary(self, data: bytes) -> cmd.Command:
        frame = 2 * self.options.channels
        if len(data) % frame:
            raise ProtocolError(
                ErrorCode.INVALID_AUDIO_LENGTH, f"audio must be whole frames of {frame} bytes (PCM16 x channels)"
            )
        self.audio_ms += len(data) / frame / self.options.sample_rate * 1000
        parts = tuple(cmd.AppendAudio(src, pcm) for src, pcm in self.split(data).items())
        return parts[0] if len(parts) == 1 else cmd.AppendAudioMany(parts)

    def split(self, pcm: bytes) -> dict[str, bytes]:
        """One frame's audio per source: the channels apart (multichannel) or mixed down to one."""
        n = self.options.channels
        if n == 1:
            return {self.options.sources[0]: pcm}
        samples = np.frombuffer(pcm, "<i2").reshape(-1, n)
        if self.options.multichannel:
            return {src: samples[:, i].tobytes() for i, src in enumerate(self.options.sources)}
        mixed = samples.astype(np.int32).mean(axis=1).astype("<i2")
        return {self.options.sources[0]: mixed.tobytes()}

    # -- server -> client --------------------------------------------------------------------------------------------

    def _channel(self, source: str) -> list[int]:
        sources = self.options.sources
        return [sources.index(source) if source in sources else 0, len(sources)]

    def encode(self, event: ServerEvent) -> list[dict[str, Any]]:
        if isinstance(event, SourceEvent):
            return self._source_event(event)
        if isinstance(event, UtteranceEnd):
            return [
                {
                    "type": "UtteranceEnd",
                    "channel": self._channel(event.source),
                    "last_word_end": event.last_word_end_ms / 1000,
                }
            ]
        if isinstance(event, SessionUpdated):
            return [{"type": "ConfigureSuccess", "request_id": self.request_id, "keyterms": list(self.configured)}]
        if isinstance(event, SessionSummary):
            return [self.metadata()]
        if isinstance(event, ErrorEvent):
            return [_error(event.code, event.message)]
        return []  # SessionCreated, Pong, Backpressure, Degraded, SessionMetrics, SpeakerUpdated: no such messages

    def metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "",
            "created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "duration": round(self.audio_ms / 1000, 3),
            "channels": self.options.channels,
            "models": [MODEL_UUID],
            "model_info": {MODEL_UUID: {"name": self.model_name, "version": "1", "arch": "whisper"}},
        }

    def _source_event(self, item: SourceEvent) -> list[dict[str, Any]]:
        ev, source = item.event, item.source
        if isinstance(ev, SpeechStarted):
            self.last_word_end_ms.pop(source, None)  # speech again: no UtteranceEnd for the gap
            if not self.options.vad_events:
                return []
            return [{"type": "SpeechStarted", "channel": self._channel(source), "timestamp": ev.audio_start_ms / 1000}]
        if isinstance(ev, SpeechStopped):
            self._open.setdefault((source, ev.item), _Utterance()).ended_by = ev.reason
            return []
        if isinstance(ev, TextDelta):
            utt = self._open.setdefault((source, ev.item), _Utterance())
            utt.stable += ev.delta
            if not self.options.interim_results:
                return []
            text = (utt.stable + ev.tentative).strip()
            if not text:
                return []
            return [self._results(source, text, ev.start_ms, ev.end_ms, [], final=False)]
        if isinstance(ev, TextFinal):
            utt = self._open.pop((source, ev.item), _Utterance())
            from_finalize = utt.ended_by in ("commit", "flush") and source in self._finalizing
            if from_finalize:
                self._finalizing.discard(source)
            speech_final = utt.ended_by in ("silence", "pause") or from_finalize
            words = [self._word(w, item.speaker) for w in ev.words if _NOT_ALNUM.sub("", w.text)]
            if speech_final and ev.words:
                self.last_word_end_ms[source] = ev.words[-1].end_ms
            out = self._results(source, ev.text.strip(), ev.start_ms, ev.end_ms, words, final=True)
            out["speech_final"] = speech_final
            out["from_finalize"] = from_finalize
            return [out]
        if isinstance(ev, ItemFailed):
            return [_error(ev.code, f"channel {self._channel(source)[0]}: {ev.message}")]
        return []

    def _speaker(self, label: str | None) -> int | None:
        if not self.options.diarize or label is None:
            return None
        return self._speakers.setdefault(label, len(self._speakers))

    def _word(self, w: Any, speaker: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "word": _NOT_ALNUM.sub("", w.text.strip().lower()),
            "start": w.start_ms / 1000,
            "end": w.end_ms / 1000,
            "confidence": round(w.confidence, 4),
            "punctuated_word": w.text.strip(),
        }
        number = self._speaker(speaker)
        if number is not None:
            out["speaker"] = number
            out["speaker_confidence"] = 1.0
        return out

    def _results(
        self, source: str, text: str, start_ms: int, end_ms: int, words: list[dict[str, Any]], *, final: bool
    ) -> dict[str, Any]:
        confidence = sum(w["confidence"] for w in words) / len(words) if words else 0.0
        return {
            "type": "Results",
            "channel_index": self._channel(source),
            "duration": round(max(0, end_ms - start_ms) / 1000, 3),
            "start": round(start_ms / 1000, 3),
            "is_final": final,
            "speech_final": False,
            "from_finalize": False,
            "channel": {"alternatives": [{"transcript": text, "confidence": round(confidence, 4), "words": words}]},
            "metadata": {
                "request_id": self.request_id,
                "model_info": {"name": self.model_name, "version": "1", "arch": "whisper"},
                "model_uuid": MODEL_UUID,
            },
        }


__all__ = ["DeepgramCodec", "DeepgramOptions", "parse_options"]
