"""The native dialect's codec (docs/protocol.md): wire messages <-> commands and typed events, without I/O.

In the style of python-websockets' sans-I/O protocols: ``parse_text`` / ``parse_binary`` turn one client message
into a validated ``Command`` (or raise ``ProtocolError`` with the code, the offending ``param`` and the client's
``event_id``); ``encode`` turns one server event into its wire messages. The codec knows the session's sources
once it is ``bind``-ed (after ``session.create`` or a resume), so binary frames and ``source`` fields resolve here.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from typing import Any

from echopanel.audio.convert import SUPPORTED_RATES
from echopanel.engines.base import Replacements, TurnSettings
from echopanel.events import (
    AudioCleared,
    Backpressure,
    Committed,
    Degraded,
    ErrorEvent,
    ItemFailed,
    Latency,
    Pong,
    Replayed,
    RequestCompleted,
    ServerEvent,
    SessionCreated,
    SessionMetrics,
    SessionSummary,
    SessionUpdated,
    SourceEvent,
    SpeakerUpdated,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    Word,
    item_id,
)
from echopanel.protocol import client_events as ce
from echopanel.protocol import commands as cmd
from echopanel.protocol.errors import ErrorCode, ProtocolError
from echopanel.protocol.frames import decode_frame

DEFAULT_TURNS = TurnSettings(threshold=0.5, silence_duration_ms=300, prefix_padding_ms=300)


@dataclass(frozen=True)
class NativeLimits:
    """What the server supports, for validating ``session.create`` / ``session.update``."""

    languages: tuple[str, ...] = ("en",)
    max_sources: int = 4
    turns: TurnSettings = DEFAULT_TURNS  # the server's turn detection, echoed until a client changes it


class NativeCodec:
    def __init__(self, limits: NativeLimits | None = None) -> None:
        self.limits = limits or NativeLimits()
        self.sources: tuple[str, ...] | None = None  # the bound session's sources
        self.settings: dict[str, Any] = self.defaults()  # what session.updated echoes as in effect

    def bind(self, sources: tuple[str, ...] | list[str]) -> None:
        """A session now runs on this connection (created or resumed)."""
        self.sources = tuple(sources)

    # -- client -> server --------------------------------------------------------------------------------------------

    def parse_text(self, text: str) -> cmd.Command:
        event, event_id = ce.parse_client_event(text)
        try:
            return self._command(event)
        except ProtocolError as err:
            err.event_id = err.event_id or event_id
            raise

    def parse_binary(self, frame: bytes) -> cmd.AppendAudio:
        sources = self._require_session()
        index, pcm = decode_frame(frame, len(sources))
        return cmd.AppendAudio(sources[index], whole_samples(pcm))

    def _command(self, event: Any) -> cmd.Command:
        if isinstance(event, ce.Ping):
            return cmd.Ping(event.event_id)
        if isinstance(event, ce.SessionCreate):
            if self.sources is not None:
                raise ProtocolError(ErrorCode.SESSION_ALREADY_CREATED, "this connection already has a session")
            if event.resume is not None:
                return cmd.ResumeSession(event.resume.session_id, event.resume.resume_token, event.event_id)
            return self._create(event)
        self._require_session()
        if isinstance(event, ce.AudioAppend):
            source = self._source(event.source)
            try:
                pcm = base64.b64decode(event.audio, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(ErrorCode.INVALID_AUDIO, "audio is not valid base64", param="audio") from None
            return cmd.AppendAudio(source, whole_samples(pcm), event.event_id)
        if isinstance(event, ce.AudioCommit):
            return cmd.CommitAudio(self._sources(event.source), event.event_id)
        if isinstance(event, ce.AudioClear):
            return cmd.ClearAudio(self._sources(event.source), event.event_id)
        if isinstance(event, ce.ResponseCreate):
            return cmd.RequestResponse(self._sources(event.source), event.event_id)
        if isinstance(event, ce.SessionUpdate):
            return self._update(event)
        if isinstance(event, ce.SessionClose):
            return cmd.CloseSession(event.event_id)
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event {type(event).__name__}")  # pragma: no cover

    def _create(self, event: ce.SessionCreate) -> cmd.CreateSession:
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
        if len(cfg.sources) > self.limits.max_sources:
            raise ProtocolError(
                ErrorCode.INVALID_EVENT, f"at most {self.limits.max_sources} sources", param="session.sources"
            )
        self.settings = {**self.defaults(), "language": cfg.language}
        td = cfg.turn_detection
        if td is None:
            self.settings["turn_detection"] = None  # (CreateSession.turn_detection says so)
        settings = self._tune(cfg, td, td is not None and bool(td.model_dump(exclude_none=True, exclude={"type"})))
        return cmd.CreateSession(
            tuple(cfg.sources), cfg.sample_rate, cfg.language, cfg.turn_detection is not None, cfg.overflow,
            event.event_id, settings if settings != cmd.UpdateSession() else None,
        )  # fmt: skip

    def defaults(self) -> dict[str, Any]:
        """The settings ``session.updated`` echoes, as a session starts."""
        t = self.limits.turns
        turns = {"type": "server_vad", "threshold": t.threshold, "silence_duration_ms": t.silence_duration_ms}
        turns["prefix_padding_ms"] = t.prefix_padding_ms
        return {"language": "en", "keyterms": [], "replace": {}, "partials": True, "turn_detection": turns}

    def _update(self, event: ce.SessionUpdate) -> cmd.UpdateSession:
        try:
            update = ce.SessionUpdateConfig.model_validate(event.session)
        except ce.ValidationError as exc:
            err = exc.errors()[0]
            param = "session." + ".".join(str(p) for p in err["loc"])
            raise ProtocolError(ErrorCode.INVALID_UPDATE, f"{param}: {err['msg']}", param=param) from None
        if update.language is not None:
            self._check_language(update.language)
            self.settings["language"] = update.language
        tuned = self._tune(update, update.turn_detection, "turn_detection" in update.model_fields_set)
        return dataclasses.replace(tuned, language=update.language, event_id=event.event_id)

    def _tune(self, cfg: Any, turns: ce.TurnDetection | None, turns_given: bool) -> cmd.UpdateSession:
        """Keyterms, replacements, partials and turn detection of a create or an update, and what is now in effect."""
        out: dict[str, Any] = {}
        if cfg.keyterms is not None:
            self.settings["keyterms"] = cfg.keyterms
            out["prompt"] = cmd.glossary(tuple(cfg.keyterms))
        if cfg.replace is not None:
            self.settings["replace"] = cfg.replace
            out["replacements"] = Replacements.of(cfg.replace)
        if cfg.partials is not None:
            self.settings["partials"] = out["partials"] = cfg.partials
        if turns_given:
            if turns is None:
                self.settings["turn_detection"] = None
                out["turns"] = TurnSettings(enabled=False)
            else:
                now = self.settings["turn_detection"] or self.defaults()["turn_detection"]
                given = turns.model_dump(exclude_none=True, exclude={"type"})
                self.settings["turn_detection"] = {**now, **given}
                out["turns"] = TurnSettings(enabled=True, **given)
        return cmd.UpdateSession(**out)

    def _check_language(self, language: str) -> None:
        if language not in self.limits.languages:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_LANGUAGE,
                f"language {language!r} is not supported by this model; use one of {list(self.limits.languages)}",
                param="session.language",
            )

    def _require_session(self) -> tuple[str, ...]:
        if self.sources is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_CREATED, "send session.create first")
        return self.sources

    def _source(self, name: str | None) -> str:
        sources = self._require_session()
        if name is None:
            return sources[0]
        if name not in sources:
            raise ProtocolError(
                ErrorCode.UNKNOWN_SOURCE, f"unknown source {name!r}; this session has {list(sources)}", param="source"
            )
        return name

    def _sources(self, name: str | None) -> tuple[str, ...]:
        return self._require_session() if name is None else (self._source(name),)

    # -- server -> client --------------------------------------------------------------------------------------------

    def encode(self, event: ServerEvent) -> list[dict[str, Any]]:
        if isinstance(event, SourceEvent):
            return [source_event(event)]
        if isinstance(event, Replayed):
            return [{**source_event(event.event), "replayed": True}]
        if isinstance(event, SessionMetrics):
            return [metrics_event(event)]
        if isinstance(event, Backpressure):
            return [
                {
                    "type": "input_audio_buffer.backpressure",
                    "source": event.source,
                    "level": event.level,
                    "queued_ms": event.queued_ms,
                    "dropped_ms": event.dropped_ms,
                    "limit_ms": event.limit_ms,
                }
            ]
        if isinstance(event, Degraded):
            return [{"type": "session.degraded", "level": event.level, "name": event.name, "reason": event.reason}]
        if isinstance(event, SpeakerUpdated):
            return [
                {
                    "type": "speaker.updated",
                    "item_id": event.item_id,
                    "source": event.source,
                    "speaker": event.speaker,
                    "previous": event.previous,
                }
            ]
        if isinstance(event, SessionSummary):
            return [_with_id({"type": "session.summary", **event.document}, event.event_id)]
        if isinstance(event, ErrorEvent):
            return [error_wire(event)]
        if isinstance(event, SessionCreated):
            out: dict[str, Any] = {"type": "session.created", "session": session_wire(event)}
            if event.resumed:
                out["resumed"] = True
                out["received_ms"] = dict(event.received_ms or {})
                if event.partials_reset:
                    out["partials_reset"] = True
            return [_with_id(out, event.event_id)]
        if isinstance(event, SessionUpdated):
            session = {**self.settings, "id": event.session_id, "language": event.language}
            updated = {"type": "session.updated", "session": session}
            return [_with_id(updated, event.event_id)]
        if isinstance(event, AudioCleared):
            return [_with_id({"type": "input_audio_buffer.cleared", "source": event.source}, event.event_id)]
        if isinstance(event, Pong):
            return [_with_id({"type": "pong"}, event.event_id)]
        raise TypeError(f"no native wire form for {type(event).__name__}")


def whole_samples(pcm: bytes) -> bytes:
    if len(pcm) % 2:
        raise ProtocolError(
            ErrorCode.INVALID_AUDIO_LENGTH,
            f"PCM16 audio must have an even byte count, got {len(pcm)}; the chunk was not accepted",
            param="audio",
        )
    return pcm


def _with_id(event: dict[str, Any], event_id: str | None) -> dict[str, Any]:
    if event_id is not None:
        event["event_id"] = event_id
    return event


def error_wire(ev: ErrorEvent) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": ev.code, "message": ev.message}
    if ev.event_id is not None:
        out["event_id"] = ev.event_id
    if ev.param is not None:
        out["param"] = ev.param
    if ev.item_id is not None:
        out["item_id"] = ev.item_id
    if ev.source is not None:
        out["source"] = ev.source
    if ev.fatal:
        out["fatal"] = True
    return out


def session_wire(ev: SessionCreated) -> dict[str, Any]:
    info = ev.info
    lim = info.limits
    return {
        "id": info.id,
        "sources": list(info.sources),
        "sample_rate": info.sample_rate,
        "format": "pcm16",
        "language": info.language,
        "turn_detection": {"type": "server_vad"} if info.turn_detection else None,
        "model": info.model,
        "engine": info.engine,
        "resume_token": info.resume_token,
        "limits": {
            "max_message_bytes": lim.max_message_bytes,
            "mic_queue_ms": lim.mic_queue_ms,
            "system_queue_ms": lim.system_queue_ms,
            "overflow": lim.overflow,
            "max_utterance_ms": lim.max_utterance_ms,
            "max_sources": lim.max_sources,
            "resume_grace_ms": lim.resume_grace_ms,
        },
        "features": {
            "speakers": info.features.speakers,
            "fallback": info.features.fallback,
            "store": info.features.store,
        },
    }


def metrics_event(ev: SessionMetrics) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "session.metrics",
        "session_id": ev.session_id,
        "sources": {
            name: {
                "received_ms": m.received_ms,
                "queued_ms": m.queued_ms,
                "processed_ms": m.processed_ms,
                "dropped_ms": m.dropped_ms,
                "rtf": m.rtf,
                "first_partial_latency_ms": _latency(m.first_partial_latency),
                "final_latency_ms": _latency(m.final_latency),
                "partial_interval_ms": m.partial_interval_ms,
                "live": m.live,
                "backpressure": m.backpressure,
            }
            for name, m in ev.sources.items()
        },
        "degrade_level": ev.degrade_level,
        "degrade": ev.degrade,
        "engine": ev.engine,
        "breaker": ev.breaker,
    }
    if ev.breakers is not None:
        out["breakers"] = ev.breakers
    return out


def _latency(lat: Latency) -> dict[str, int | None]:
    return {"p50": lat.p50_ms, "p95": lat.p95_ms}


def words_wire(words: tuple[Word, ...]) -> list[dict[str, Any]]:
    return [{"word": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms, "confidence": w.confidence} for w in words]


def source_event(se: SourceEvent) -> dict[str, Any]:
    source, ev = se.source, se.event
    if isinstance(ev, TextDelta):
        out: dict[str, Any] = {
            "type": "response.text.delta",
            "item_id": item_id(source, ev.item),
            "source": source,
            "delta": ev.delta,
            "tentative": ev.tentative,
            "start_ms": ev.start_ms,
            "end_ms": ev.end_ms,
            "speaker": None,
        }
        if ev.engine is not None:
            out["engine"] = ev.engine
        if ev.response_id is not None:
            out["response_id"] = ev.response_id
        return out
    if isinstance(ev, TextFinal):
        out = {
            "type": "response.done",
            "item_id": item_id(source, ev.item),
            "source": source,
            "text": ev.text,
            "start_ms": ev.start_ms,
            "end_ms": ev.end_ms,
            "words": words_wire(ev.words),
            "speaker": se.speaker,
            "engine": ev.engine,
            "compute_ms": ev.compute_ms,
            "repaired": ev.repaired,
        }
        if ev.language:
            out["language"] = ev.language
        if se.speaker_turns:
            out["speaker_turns"] = [{"speaker": s, "start_ms": a, "end_ms": b} for a, b, s in se.speaker_turns]
        if ev.superseded:
            out["superseded"] = True
        if ev.replaces:
            out["replaces"] = [item_id(source, n) for n in ev.replaces]
        if ev.response_id is not None:
            out["response_id"] = ev.response_id
        return out
    if isinstance(ev, SpeechStarted):
        return {
            "type": "input_audio_buffer.speech_started",
            "source": source,
            "item_id": item_id(source, ev.item),
            "audio_start_ms": ev.audio_start_ms,
        }
    if isinstance(ev, SpeechStopped):
        return {
            "type": "input_audio_buffer.speech_stopped",
            "source": source,
            "item_id": item_id(source, ev.item),
            "audio_end_ms": ev.audio_end_ms,
        }
    if isinstance(ev, Committed):
        if ev.item is None:
            err = ErrorEvent(
                str(ErrorCode.COMMIT_EMPTY), f"nothing to commit on source {source!r}", event_id=ev.event_id,
                source=source,
            )  # fmt: skip
            return error_wire(err)
        out = {"type": "input_audio_buffer.committed", "source": source, "item_id": item_id(source, ev.item)}
        if ev.event_id is not None:
            out["event_id"] = ev.event_id
        return out
    if isinstance(ev, ItemFailed):
        return error_wire(ErrorEvent(ev.code, ev.message, item_id=item_id(source, ev.item), source=source))
    if isinstance(ev, RequestCompleted):
        out = {"type": "response.completed", "source": source, "response_id": ev.response_id}
        if ev.response_id is not None:
            out["event_id"] = ev.response_id
        return out
    raise TypeError(f"no wire form for {type(ev).__name__}")
