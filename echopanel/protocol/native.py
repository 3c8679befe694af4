"""Engine events -> native wire events (docs/protocol.md)."""

from __future__ import annotations

from typing import Any

from echopanel.events import (
    Committed,
    ItemFailed,
    RequestCompleted,
    SourceEvent,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    Word,
    item_id,
)
from echopanel.protocol.errors import ErrorCode


def error_event(
    code: ErrorCode | str, message: str, *, event_id: str | None = None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "error", "code": str(code), "message": message}
    if event_id is not None:
        ev["event_id"] = event_id
    if param is not None:
        ev["param"] = param
    ev.update(extra)
    return ev


def words_wire(words: tuple[Word, ...]) -> list[dict[str, Any]]:
    return [{"word": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms, "confidence": w.confidence} for w in words]


def to_wire(se: SourceEvent) -> dict[str, Any]:
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
            return error_event(
                ErrorCode.COMMIT_EMPTY, f"nothing to commit on source {source!r}", event_id=ev.event_id, source=source
            )
        out = {"type": "input_audio_buffer.committed", "source": source, "item_id": item_id(source, ev.item)}
        if ev.event_id is not None:
            out["event_id"] = ev.event_id
        return out
    if isinstance(ev, ItemFailed):
        return error_event(ev.code, ev.message, item_id=item_id(source, ev.item), source=source)
    if isinstance(ev, RequestCompleted):
        out = {"type": "response.completed", "source": source, "response_id": ev.response_id}
        if ev.response_id is not None:
            out["event_id"] = ev.response_id
        return out
    raise TypeError(f"no wire form for {type(ev).__name__}")
