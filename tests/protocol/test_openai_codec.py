"""The OpenAI Realtime codec without sockets: every client event parsed, every server event encoded, and each
encoded event validated by the official SDK's own type for it (``openai.types.realtime``)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    ConversationItemInputAudioTranscriptionFailedEvent,
    ConversationItemInputAudioTranscriptionSegment,
    InputAudioBufferClearedEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent,
    RealtimeErrorEvent,
    RealtimeServerEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
)
from pydantic import TypeAdapter

from echopanel.engines.base import TurnSettings
from echopanel.events import (
    AudioCleared,
    Backpressure,
    Committed,
    Degraded,
    ErrorEvent,
    Features,
    ItemFailed,
    Limits,
    Pong,
    Replayed,
    RequestCompleted,
    SessionCreated,
    SessionInfo,
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
)
from echopanel.protocol import commands as cmd
from echopanel.protocol.errors import ErrorCode, ProtocolError
from echopanel.protocol.openai_realtime import OpenAICodec

SDK = TypeAdapter(RealtimeServerEvent)
INFO = SessionInfo(
    "sess_1", ("mic",), 24000, "en", True, "tiny.en", "whisper", "tok", Limits(1, 1, 1, "block", 1, 1, 1),
    Features(speakers=False, fallback=None, store=None),
)  # fmt: skip


def parse(c: OpenAICodec, event: dict[str, Any]) -> cmd.Command:
    return c.parse_text(json.dumps(event))


def refused(c: OpenAICodec, event: dict[str, Any] | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        c.parse_text(event if isinstance(event, str) else json.dumps(event))
    return info.value


def sdk(c: OpenAICodec, event: Any) -> list[Any]:
    """Encode ``event`` and parse each wire message as the SDK does (strict validation of its fields)."""
    return [SDK.validate_python(json.loads(json.dumps(wire))) for wire in c.encode(event)]


def update(session: dict[str, Any]) -> dict[str, Any]:
    return {"type": "session.update", "event_id": "u", "session": {"type": "transcription", **session}}


# -- client -> server ----------------------------------------------------------------------------------------------


def test_append_commit_clear() -> None:
    c = OpenAICodec(model="m")
    pcm = b"\x01\x00\x02\x00"
    audio = base64.b64encode(pcm).decode()
    assert parse(c, {"type": "input_audio_buffer.append", "audio": audio}) == cmd.AppendAudio("mic", pcm)
    assert parse(c, {"type": "input_audio_buffer.commit", "event_id": "c"}) == cmd.CommitAudio(("mic",), "c")
    assert parse(c, {"type": "input_audio_buffer.clear"}) == cmd.ClearAudio(("mic",))


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ({"type": "input_audio_buffer.append", "audio": "%%%"}, ErrorCode.INVALID_AUDIO, "audio"),
        ({"type": "input_audio_buffer.append", "audio": "AAAA"}, ErrorCode.INVALID_AUDIO_LENGTH, "audio"),  # 3 bytes
        ({"type": "response.create"}, ErrorCode.UNKNOWN_EVENT, "type"),
        ({"type": "input_audio_buffer.commit", "source": "mic"}, ErrorCode.INVALID_EVENT, "source"),
        (update({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}), ErrorCode.UNSUPPORTED_FORMAT, None),
        (
            update({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
            ErrorCode.UNSUPPORTED_SAMPLE_RATE,
            None,
        ),
        (update({"audio": {"input": {"transcription": {"language": "fr"}}}}), ErrorCode.UNSUPPORTED_LANGUAGE, None),
        (
            update({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}}),
            ErrorCode.INVALID_EVENT,
            None,
        ),
        ({"type": "session.update", "session": {"type": "realtime"}}, ErrorCode.INVALID_EVENT, "session.type"),
    ],
)
def test_refusals_name_the_param_and_keep_the_event_id(
    event: dict[str, Any], code: ErrorCode, param: str | None
) -> None:
    err = refused(OpenAICodec(model="m"), {**event, "event_id": "x"})
    assert err.code == code and err.event_id == "x"
    if param is not None:
        assert err.param == param


def test_binary_messages_are_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        OpenAICodec(model="m").parse_binary(b"EP\x01\x00")
    assert info.value.code == ErrorCode.INVALID_EVENT


def test_session_update_carries_only_what_changed() -> None:
    c = OpenAICodec(model="m")
    vad = {"type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 500}
    first = parse(c, update({"audio": {"input": {"turn_detection": vad, "transcription": {"prompt": "EchoPanel"}}}}))
    assert first == cmd.UpdateSession(
        turns=TurnSettings(enabled=True, threshold=0.6, prefix_padding_ms=200, silence_duration_ms=500),
        prompt="EchoPanel",
        event_id="u",
    )
    assert parse(c, update({})) == cmd.UpdateSession(event_id="u")  # nothing changed
    manual = parse(c, update({"audio": {"input": {"turn_detection": None}}}))
    assert isinstance(manual, cmd.UpdateSession) and manual.turns is not None and manual.turns.enabled is False
    assert c.config.vad is False


# -- server -> client: each wire event is the SDK's own type ------------------------------------------------------


def test_replies_and_errors() -> None:
    c = OpenAICodec(model="whisper-tiny.en")
    (created,) = sdk(c, SessionCreated(INFO))
    assert isinstance(created, SessionCreatedEvent) and created.session.id == "sess_1"
    (updated,) = sdk(c, SessionUpdated("sess_1", "en"))
    assert isinstance(updated, SessionUpdatedEvent)
    (cleared,) = sdk(c, AudioCleared("mic", "c"))
    assert isinstance(cleared, InputAudioBufferClearedEvent)
    (refusal,) = sdk(c, ProtocolError(ErrorCode.INVALID_AUDIO, "bad", param="audio", event_id="e").event())
    assert isinstance(refusal, RealtimeErrorEvent) and refusal.error.type == "invalid_request_error"
    assert (refusal.error.code, refusal.error.param, refusal.error.event_id) == ("invalid_audio", "audio", "e")
    (internal,) = sdk(c, ErrorEvent("internal_error", "source mic failed", source="mic", server=True, fatal=True))
    assert isinstance(internal, RealtimeErrorEvent) and internal.error.type == "server_error"
    assert internal.error.code == "internal_error"
    ids = [e.event_id for e in (created, updated, cleared, refusal, internal)]
    assert len(set(ids)) == len(ids)  # every server event has its own id


def test_engine_events_with_server_vad() -> None:
    c = OpenAICodec(model="m")
    (started,) = sdk(c, SourceEvent("mic", SpeechStarted(1, 120, 0)))
    assert isinstance(started, InputAudioBufferSpeechStartedEvent) and started.item_id == "item_mic_00001"
    stopped, committed = sdk(c, SourceEvent("mic", SpeechStopped(1, 900)))  # server VAD commits at once
    assert isinstance(stopped, InputAudioBufferSpeechStoppedEvent) and stopped.audio_end_ms == 900
    assert isinstance(committed, InputAudioBufferCommittedEvent) and committed.previous_item_id is None
    (delta,) = sdk(c, SourceEvent("mic", TextDelta(1, "Hello", " the", 120, 600)))
    assert isinstance(delta, ConversationItemInputAudioTranscriptionDeltaEvent) and delta.delta == "Hello"
    final = TextFinal(1, "Hello there.", 120, 900, (Word(" Hello", 120, 400, 0.9),), "whisper", 3.0)
    segment, completed = sdk(c, SourceEvent("mic", final, "mic:S1"))
    assert isinstance(segment, ConversationItemInputAudioTranscriptionSegment) and segment.speaker == "mic:S1"
    assert isinstance(completed, ConversationItemInputAudioTranscriptionCompletedEvent)
    assert completed.transcript == "Hello there."
    (unlabelled,) = sdk(c, SourceEvent("mic", final))  # no speaker: no segment
    assert isinstance(unlabelled, ConversationItemInputAudioTranscriptionCompletedEvent)
    (failed,) = sdk(c, SourceEvent("mic", ItemFailed(2, "engine_unavailable", "no engine")))
    assert isinstance(failed, ConversationItemInputAudioTranscriptionFailedEvent)
    assert failed.error.code == "engine_unavailable"
    (_, next_commit) = sdk(c, SourceEvent("mic", SpeechStopped(2, 2000)))
    assert next_commit.previous_item_id == "item_mic_00001"  # the item chain


def test_manual_commits_without_server_vad() -> None:
    c = OpenAICodec(model="m")
    parse(c, update({"audio": {"input": {"turn_detection": None}}}))
    assert sdk(c, SourceEvent("mic", SpeechStarted(1, 0, 0))) == []  # no VAD events without server VAD
    assert sdk(c, SourceEvent("mic", SpeechStopped(1, 900, "commit"))) == []
    (committed,) = sdk(c, SourceEvent("mic", Committed(1, "c")))
    assert isinstance(committed, InputAudioBufferCommittedEvent)
    (empty,) = sdk(c, SourceEvent("mic", Committed(None, "c2")))
    assert isinstance(empty, RealtimeErrorEvent) and empty.error.code == "input_audio_buffer_commit_empty"
    assert empty.error.event_id == "c2"


def test_events_this_api_has_no_form_for_are_not_sent() -> None:
    c = OpenAICodec(model="m")
    final = SourceEvent("mic", TextFinal(1, "a", 0, 1, (), "whisper", 1.0))
    for event in (
        Backpressure("mic", "high", 1, 0, 2),
        Degraded(1, "slow_partials", "load"),
        SessionMetrics("s", {}, 0, "normal", "whisper", "closed"),
        SpeakerUpdated("item_mic_00001", "mic", "mic:S1", None),
        SessionSummary({"session_id": "s"}),
        Pong("p"),
        Replayed(final),
        SourceEvent("mic", RequestCompleted("r")),
    ):
        assert c.encode(event) == [], event
