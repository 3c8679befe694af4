"""The typed event vocabulary of the pipeline (hot path: plain dataclasses).

Engines emit these; the session tags them with their source; each protocol dialect turns them into its own
wire events. Times are milliseconds of the source's own audio, counted from its first sample.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    confidence: float


@dataclass(slots=True, frozen=True)
class SpeechStarted:
    item: int
    audio_start_ms: int
    held_from_ms: int | None = None  # first audio the recognizer holds for this utterance (pre-roll included)


@dataclass(slots=True, frozen=True)
class SpeechStopped:
    item: int
    audio_end_ms: int
    reason: str = "silence"  # silence | pause | max_length | commit | flush


@dataclass(slots=True, frozen=True)
class Committed:
    """An utterance was closed by an explicit commit (answers that client event)."""

    item: int | None
    event_id: str | None


@dataclass(slots=True, frozen=True)
class TextDelta:
    """Partial result: ``delta`` is newly stable text (append-only), ``tentative`` the unstable tail."""

    item: int
    delta: str
    tentative: str
    start_ms: int
    end_ms: int
    response_id: str | None = None
    engine: str | None = None  # the engine that decoded this partial (a fallback chain may switch engines)


@dataclass(slots=True, frozen=True)
class TextFinal:
    """Final result of one utterance; ``text`` equals the concatenation of the item's deltas."""

    item: int
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...]
    engine: str
    compute_ms: float
    response_id: str | None = None
    repaired: bool = False  # transcribed at finalization from the recording (its live audio was shed)
    speech_end_ms: int | None = None  # end of the last voiced window (final latency is measured from here)
    # Cut by a shed span: only the stable text already sent, not decoded; the whole utterance is transcribed again
    # from the recording at finalization and the repaired item replaces this one in the stored transcript.
    superseded: bool = False
    # Re-decoded at finalization by the primary engine: the items (numbers, same source) this one replaces, whose
    # finals came from a fallback engine or failed (every engine down). Set on the first item of a re-decoded span.
    replaces: tuple[int, ...] = ()


@dataclass(slots=True, frozen=True)
class ItemFailed:
    item: int
    code: str
    message: str
    start_ms: int | None = None  # the utterance's audio (kept in the recording; re-decoded at finalization)
    end_ms: int | None = None


@dataclass(slots=True, frozen=True)
class RequestCompleted:
    """Everything a ``response.create`` asked for has been emitted."""

    response_id: str | None


EngineEvent = SpeechStarted | SpeechStopped | Committed | TextDelta | TextFinal | ItemFailed | RequestCompleted


@dataclass(slots=True, frozen=True)
class SourceEvent:
    """An engine event tagged with the session source it belongs to."""

    source: str
    event: EngineEvent
    speaker: str | None = None  # finals: the live speaker label ("mic:S1"), when known
    # finals: live speaker turns inside the utterance, (start_ms, end_ms, label); one voice: one turn
    speaker_turns: tuple[tuple[int, int, str], ...] = ()


def item_id(source: str, item: int) -> str:
    return f"item_{source}_{item:05d}"
