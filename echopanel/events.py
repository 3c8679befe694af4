"""The typed event vocabulary (hot path: plain dataclasses), from the engines to the client.

- Engine events (``SpeechStarted`` ... ``RequestCompleted``): what a recognizer stream emits. The session tags
  them with their source (``SourceEvent``).
- Session events (``Backpressure``, ``Degraded``, ``SessionMetrics``, ``SpeakerUpdated``, ``SessionSummary``,
  ``ErrorEvent``): what the session and the server say on their own.
- Replies (``SessionCreated``, ``SessionUpdated``, ``AudioCleared``, ``Pong``, ``Replayed``): answers of a
  connection to its client's commands.

A session's outbox carries these and nothing else; each dialect's codec (``echopanel/protocol``) turns them into
its wire messages. Times are milliseconds of the source's own audio, counted from its first sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    language: str | None = None  # the language it was decoded in (detected, in an "auto" session)


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


# -- session events --------------------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Backpressure:
    """A source's queue level changed (or it keeps shedding): ``normal`` | ``high`` | ``shedding``."""

    source: str
    level: str
    queued_ms: int
    dropped_ms: int
    limit_ms: int


@dataclass(slots=True, frozen=True)
class Degraded:
    """The degrade ladder moved (``cause="load"``), or the engines switched (``cause="engine"``)."""

    level: int
    name: str
    reason: str
    cause: str = "load"  # load | engine: notices of one cause replace each other while unsent


@dataclass(slots=True, frozen=True)
class Latency:
    p50_ms: int | None
    p95_ms: int | None


@dataclass(slots=True, frozen=True)
class SourceMetrics:
    received_ms: int  # audio the server holds (recorded): the acknowledgement clients resend from
    queued_ms: int
    processed_ms: int
    dropped_ms: int
    rtf: float | None
    first_partial_latency: Latency
    final_latency: Latency
    partial_interval_ms: int | None  # None: no partials for this source now
    live: bool
    backpressure: str


@dataclass(slots=True, frozen=True)
class SessionMetrics:
    session_id: str
    sources: dict[str, SourceMetrics]
    degrade_level: int
    degrade: str
    engine: str  # the engine new decodes go to
    breaker: str  # the primary engine's circuit breaker
    breakers: dict[str, str] | None = None  # every engine of a fallback chain


@dataclass(slots=True, frozen=True)
class SpeakerUpdated:
    """An item's speaker label changed after its final was sent (a late live label, or the final re-clustering)."""

    item_id: str
    source: str
    speaker: str | None
    previous: str | None


@dataclass(slots=True, frozen=True)
class UtteranceEnd:
    """No word on ``source`` for the gap a client asked for since the last final's last word (Deepgram's
    ``utterance_end_ms``); dialects without such a message ignore it."""

    source: str
    last_word_end_ms: int
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class SessionSummary:
    """The session ended: ``document`` is the stored summary (session_id, status, transcript, speaker_turns,
    analysis, stats: docs/protocol.md "session.summary")."""

    document: dict[str, Any]
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class ErrorEvent:
    """Something the client should know went wrong. ``server``: the server's fault (an internal error), else the
    client's (a refused event). ``fatal``: the connection closes after it (1011)."""

    code: str
    message: str
    param: str | None = None
    event_id: str | None = None  # the client event it answers
    source: str | None = None
    item_id: str | None = None
    server: bool = False
    fatal: bool = False


# -- replies to client commands ----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Limits:
    max_message_bytes: int
    mic_queue_ms: int
    system_queue_ms: int
    overflow: str
    max_utterance_ms: int
    max_sources: int
    resume_grace_ms: int


@dataclass(slots=True, frozen=True)
class Features:
    """Which optional parts serve a session: live speaker labels, the fallback engine (its name; None: none), the
    session store (its kind; None: nothing is stored). Also in ``/ready`` and the server's ready line."""

    speakers: bool
    fallback: str | None
    store: str | None


@dataclass(slots=True, frozen=True)
class SessionInfo:
    """What a session is: sent in ``session.created`` (again on resume)."""

    id: str
    sources: tuple[str, ...]
    sample_rate: int
    language: str
    turn_detection: bool
    model: str
    engine: str
    resume_token: str
    limits: Limits
    features: Features


@dataclass(slots=True, frozen=True)
class SessionCreated:
    info: SessionInfo
    event_id: str | None = None
    resumed: bool = False
    received_ms: dict[str, int] | None = None  # resumed: audio the server holds, per source
    # resumed on another node: partial text of items without a final is void (they are transcribed again)
    partials_reset: bool = False


@dataclass(slots=True, frozen=True)
class SessionUpdated:
    session_id: str
    language: str
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class AudioCleared:
    source: str
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class Pong:
    event_id: str | None = None


@dataclass(slots=True, frozen=True)
class Replayed:
    """A final sent again after a resume (it may have been lost in flight); clients drop it if they have it."""

    event: SourceEvent


ServerEvent = (
    SourceEvent
    | Backpressure
    | Degraded
    | SessionMetrics
    | SpeakerUpdated
    | SessionSummary
    | UtteranceEnd
    | ErrorEvent
    | SessionCreated
    | SessionUpdated
    | AudioCleared
    | Pong
    | Replayed
)
