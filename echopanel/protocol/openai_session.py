"""The OpenAI Realtime dialect's session configuration: what clients send in ``session.update`` (GA) and
``transcription_session.update`` (beta), and what EchoPanel really does with it.

Every field the official SDK's transcription-session types define is accepted. Fields that change quality or timing
map to the nearest real behaviour; ``session.updated`` / ``transcription_session.updated`` echo what is in effect,
which is not always what was asked (docs/protocol.md, "OpenAI field mapping"):

- ``transcription.model``: any name; the echo names the model this server runs.
- ``transcription.language`` / ``languages``: the decode language; from ``languages`` the first one this server's
  engine can do. None of them possible: ``unsupported_language`` naming the field.
- ``transcription.prompt``: guides the decoder (its last 500 characters); ``keywords``: a glossary sentence after
  the prompt ("Glossary: A, B."), at most ``MAX_KEYTERMS`` of at most ``MAX_KEYTERM_CHARS`` characters each.
- ``transcription.delay``: how many consecutive decodes must agree before a word is stable and sent as ``delta``
  (minimal 1, low and medium 2, high 3, xhigh 4); echoed as asked.
- ``turn_detection``: ``server_vad`` as given; ``semantic_vad`` runs the server's VAD with ``eagerness`` mapped to
  the silence that ends a turn (high 300 ms, medium and auto 500 ms, low 1000 ms), echoed as the ``server_vad`` it
  runs; ``null``: the client commits. ``create_response``, ``interrupt_response`` and ``idle_timeout_ms`` steer
  model responses, which transcription sessions do not have: accepted, not echoed.
- ``noise_reduction``: accepted; none is applied, so the echo is ``null``.
- ``include: ["item.input_audio_transcription.logprobs"]``: completed events carry ``logprobs``, one entry per word
  (``logprob`` = ln of the word's confidence).
- Formats: ``audio/pcm`` at 24 kHz (beta ``pcm16``). G.711 (``audio/pcmu``, ``audio/pcma``; beta ``g711_ulaw``,
  ``g711_alaw``) is refused with ``unsupported_format``.
- beta ``modalities`` and ``client_secret``: accepted; the echo's ``client_secret`` is empty (no ephemeral keys),
  and its ``model`` is ``whisper-1`` (the beta type allows only OpenAI's names), the running one in ``engine_model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from echopanel.protocol.commands import MAX_KEYTERM_CHARS, MAX_KEYTERMS, glossary
from echopanel.protocol.errors import ErrorCode, ProtocolError

SAMPLE_RATE = 24000
MAX_PROMPT_CHARS = 500
LOGPROBS = "item.input_audio_transcription.logprobs"
AGREEMENT = {"minimal": 1, "low": 2, "medium": 2, "high": 3, "xhigh": 4}
EAGERNESS_SILENCE_MS = {"high": 300, "medium": 500, "auto": 500, "low": 1000}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}

Delay = Literal["minimal", "low", "medium", "high", "xhigh"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudioFormat(_Strict):
    type: str = "audio/pcm"
    rate: int | None = None


class Transcription(_Strict):
    model: str | None = None
    language: str | None = None
    languages: list[str] | None = None
    prompt: str | None = None
    keywords: list[str] | None = None
    delay: Delay | None = None


class TurnDetection(_Strict):
    type: str | None = None  # beta: may be left out (server_vad)
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None  # no model responses here; accepted and ignored
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = None


class NoiseReduction(_Strict):
    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class AudioInput(_Strict):
    format: AudioFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: NoiseReduction | None = None


class Audio(_Strict):
    input: AudioInput | None = None


class SessionConfig(_Strict):
    type: str
    audio: Audio | None = None
    include: list[str] | None = None


class _BetaExpiry(BaseModel):
    anchor: str | None = None
    seconds: int | None = None


class _BetaSecret(_Strict):
    expires_at: _BetaExpiry | None = None


class BetaSession(_Strict):
    """``transcription_session.update``'s ``session`` (the beta shape)."""

    input_audio_format: str | None = None
    input_audio_transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    include: list[str] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    client_secret: _BetaSecret | None = None


@dataclass
class EffectiveConfig:
    """What the session actually does, echoed in session.created / session.updated."""

    model: str
    language: str = "en"
    prompt: str = ""
    keywords: tuple[str, ...] = ()
    delay: Delay | None = None
    vad: bool = True
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 300
    logprobs: bool = False
    languages_asked: tuple[str, ...] = field(default=(), compare=False)

    @property
    def agreement(self) -> int:
        return AGREEMENT[self.delay or "medium"]

    @property
    def decoder_prompt(self) -> str:
        """The text that guides the decoder: the client's prompt, then the keywords as a glossary sentence."""
        return " ".join(p for p in (self.prompt, glossary(self.keywords)) if p)

    def _turn(self) -> dict[str, Any] | None:
        if not self.vad:
            return None
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
        }

    def _transcription(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "language": self.language, "prompt": self.prompt}
        if self.keywords:
            out["keywords"] = list(self.keywords)
        if self.languages_asked:
            out["languages"] = [self.language]
        if self.delay is not None:
            out["delay"] = self.delay
        return out

    def as_session(self, session_id: str) -> dict[str, Any]:
        return {
            "type": "transcription",
            "id": session_id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SAMPLE_RATE},
                    "transcription": self._transcription(),
                    "turn_detection": self._turn(),
                    "noise_reduction": None,
                }
            },
            "include": [LOGPROBS] if self.logprobs else None,
        }

    def as_beta_session(self, session_id: str) -> dict[str, Any]:
        return {
            "id": session_id,
            "object": "realtime.transcription_session",
            "client_secret": {"value": "", "expires_at": 0},
            "input_audio_format": "pcm16",
            # The beta type names only OpenAI's models: "whisper-1" is the one EchoPanel's Whisper engines are a kind
            # of; the model that really runs is in "engine_model".
            "input_audio_transcription": {**self._transcription(), "model": "whisper-1", "engine_model": self.model},
            "turn_detection": self._turn(),
            "input_audio_noise_reduction": None,
            "include": [LOGPROBS] if self.logprobs else None,
            "modalities": ["text"],
        }


def _validation_error(exc: ValidationError, event_id: str | None, prefix: str) -> ProtocolError:
    err = exc.errors()[0]
    param = prefix + ".".join(str(p) for p in err["loc"])
    return ProtocolError(ErrorCode.INVALID_EVENT, f"{param}: {err['msg']}", param=param, event_id=event_id)


def parse_ga(raw: dict[str, Any], event_id: str | None) -> tuple[SessionConfig, str]:
    """A GA ``session.update``'s session, and the prefix its field names take in errors."""
    try:
        return SessionConfig.model_validate(raw), "session."
    except ValidationError as exc:
        raise _validation_error(exc, event_id, prefix="session.") from None


def parse_beta(raw: dict[str, Any], event_id: str | None) -> SessionConfig:
    """A beta ``transcription_session.update``'s session, in the GA shape (errors name the beta fields)."""
    try:
        beta = BetaSession.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, event_id, prefix="session.") from None
    audio_in = AudioInput(
        transcription=beta.input_audio_transcription, noise_reduction=beta.input_audio_noise_reduction
    )
    if beta.input_audio_format is not None:
        kind = BETA_FORMATS.get(beta.input_audio_format)
        if kind is None:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_FORMAT,
                f"input_audio_format {beta.input_audio_format!r} is not supported; use 'pcm16'",
                param="session.input_audio_format",
                event_id=event_id,
            )
        audio_in.format = AudioFormat(type=kind, rate=SAMPLE_RATE)
    if "turn_detection" in beta.model_fields_set:
        audio_in.turn_detection = beta.turn_detection
    return SessionConfig(type="transcription", audio=Audio(input=audio_in), include=beta.include)


def apply_update(
    config: EffectiveConfig,
    update: SessionConfig,
    event_id: str | None,
    languages: tuple[str, ...] = ("en",),
    *,
    beta: bool = False,
) -> EffectiveConfig:
    """Return the new effective config; what cannot work at all raises a ``ProtocolError`` naming its field."""
    names = _BETA_NAMES if beta else _GA_NAMES

    def refuse(key: str, message: str, code: ErrorCode = ErrorCode.INVALID_EVENT) -> ProtocolError:
        return ProtocolError(code, message, param=names[key], event_id=event_id)

    if update.type != "transcription":
        raise refuse("type", f"session type {update.type!r} is not supported; use 'transcription'")
    new = replace(config)
    if update.include is not None:
        unknown = [i for i in update.include if i != LOGPROBS]
        if unknown:
            raise refuse("include", f"include options {unknown} are not supported; only {LOGPROBS!r}")
        new.logprobs = LOGPROBS in update.include
    audio_in = update.audio.input if update.audio else None
    if audio_in is None:
        return new
    fmt = audio_in.format
    if fmt is not None:
        if fmt.type != "audio/pcm":
            raise refuse(
                "format", f"audio format {fmt.type!r} is not supported; use 'audio/pcm'", ErrorCode.UNSUPPORTED_FORMAT
            )
        if fmt.rate not in (None, SAMPLE_RATE):
            raise refuse(
                "rate", f"rate {fmt.rate} is not supported; use {SAMPLE_RATE}", ErrorCode.UNSUPPORTED_SAMPLE_RATE
            )
    if audio_in.transcription is not None:
        _transcription(new, audio_in.transcription, languages, refuse)
    if "turn_detection" in audio_in.model_fields_set:
        _turns(new, audio_in.turn_detection, refuse)
    return new


def _transcription(new: EffectiveConfig, tr: Transcription, languages: tuple[str, ...], refuse: Any) -> None:
    if tr.language is not None:
        if tr.language not in languages:
            raise refuse(
                "language",
                f"language {tr.language!r} is not supported by this model; use one of {list(languages)}",
                ErrorCode.UNSUPPORTED_LANGUAGE,
            )
        new.language = tr.language
        new.languages_asked = ()
    if tr.languages is not None and tr.language is None:
        if tr.languages:
            usable = [lang for lang in tr.languages if lang in languages]
            if not usable:
                raise refuse(
                    "languages",
                    f"none of the languages {tr.languages} is supported by this model; use one of {list(languages)}",
                    ErrorCode.UNSUPPORTED_LANGUAGE,
                )
            new.language = usable[0]
        new.languages_asked = tuple(tr.languages)
    if tr.prompt is not None:
        new.prompt = tr.prompt[-MAX_PROMPT_CHARS:]
    if tr.keywords is not None:
        keywords = tuple(k.strip() for k in tr.keywords if k.strip())
        if len(keywords) > MAX_KEYTERMS:
            raise refuse("keywords", f"at most {MAX_KEYTERMS} keywords; got {len(keywords)}")
        long = [k for k in keywords if len(k) > MAX_KEYTERM_CHARS]
        if long:
            raise refuse("keywords", f"a keyword may have at most {MAX_KEYTERM_CHARS} characters: {long[0][:60]!r}")
        new.keywords = keywords
    if tr.delay is not None:
        new.delay = tr.delay


def _turns(new: EffectiveConfig, td: TurnDetection | None, refuse: Any) -> None:
    if td is None:
        new.vad = False
        return
    kind = td.type or "server_vad"
    if kind not in ("server_vad", "semantic_vad"):
        raise refuse("turn_type", f"turn detection {kind!r} is not supported; use 'server_vad', 'semantic_vad' or null")
    new.vad = True
    if kind == "semantic_vad":
        new.silence_duration_ms = EAGERNESS_SILENCE_MS[td.eagerness or "auto"]
    if td.threshold is not None:
        if not 0.0 < td.threshold < 1.0:
            raise refuse("threshold", "threshold must be in (0, 1)")
        new.threshold = td.threshold
    if td.prefix_padding_ms is not None:
        if not 0 <= td.prefix_padding_ms <= 2000:
            raise refuse("prefix_padding_ms", "prefix_padding_ms must be 0-2000")
        new.prefix_padding_ms = td.prefix_padding_ms
    if td.silence_duration_ms is not None and kind == "server_vad":
        if not 100 <= td.silence_duration_ms <= 5000:
            raise refuse("silence_duration_ms", "silence_duration_ms must be 100-5000")
        new.silence_duration_ms = td.silence_duration_ms


_GA_IN = "session.audio.input."
_GA_NAMES = {
    "type": "session.type",
    "include": "session.include",
    "format": _GA_IN + "format.type",
    "rate": _GA_IN + "format.rate",
    "language": _GA_IN + "transcription.language",
    "languages": _GA_IN + "transcription.languages",
    "keywords": _GA_IN + "transcription.keywords",
    "turn_type": _GA_IN + "turn_detection.type",
    "threshold": _GA_IN + "turn_detection.threshold",
    "prefix_padding_ms": _GA_IN + "turn_detection.prefix_padding_ms",
    "silence_duration_ms": _GA_IN + "turn_detection.silence_duration_ms",
}
_BETA_NAMES = {
    "type": "session",
    "include": "session.include",
    "format": "session.input_audio_format",
    "rate": "session.input_audio_format",
    "language": "session.input_audio_transcription.language",
    "languages": "session.input_audio_transcription.languages",
    "keywords": "session.input_audio_transcription.keywords",
    "turn_type": "session.turn_detection.type",
    "threshold": "session.turn_detection.threshold",
    "prefix_padding_ms": "session.turn_detection.prefix_padding_ms",
    "silence_duration_ms": "session.turn_detection.silence_duration_ms",
}
