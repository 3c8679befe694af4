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


# -- the fields today's SDK and frameworks send ----------------------------------------------------------------------

EVERY_GA_FIELD = {
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "noise_reduction": {"type": "near_field", "strength": 0.5},
            "transcription": {
                "model": "gpt-live-transcribe",
                "prompt": "A meeting about the database.",
                "keywords": ["Postgres", "HAProxy", " "],
                "languages": ["de", "en"],
                "delay": "minimal",
            },
            "turn_detection": {
                "type": "semantic_vad",
                "eagerness": "low",
                "create_response": False,
                "interrupt_response": False,
            },
        }
    },
    "include": ["item.input_audio_transcription.logprobs"],
}


def test_every_ga_field_maps_to_what_runs() -> None:
    c = OpenAICodec(model="whisper-tiny.en")
    got = parse(c, update(EVERY_GA_FIELD))
    assert got == cmd.UpdateSession(
        turns=TurnSettings(enabled=True, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=1000),
        prompt="A meeting about the database. Glossary: Postgres, HAProxy.",
        agreement=1,
        event_id="u",
    )
    (updated,) = sdk(c, SessionUpdated("sess_1", "en"))
    assert isinstance(updated, SessionUpdatedEvent)
    audio_in = updated.session.audio.input  # type: ignore[union-attr]
    assert audio_in.transcription.model == "whisper-tiny.en"  # the model that runs, not the one asked for
    assert audio_in.transcription.keywords == ["Postgres", "HAProxy"]
    assert audio_in.transcription.languages == ["en"] and audio_in.transcription.language == "en"
    assert audio_in.transcription.delay == "minimal"
    assert audio_in.turn_detection.type == "server_vad" and audio_in.turn_detection.silence_duration_ms == 1000
    assert audio_in.noise_reduction is None  # none is applied
    assert updated.session.include == ["item.input_audio_transcription.logprobs"]  # type: ignore[union-attr]
    final = TextFinal(1, "Hi.", 0, 900, (Word(" Hi.", 100, 400, 0.5),), "whisper", 3.0)
    (completed,) = sdk(c, SourceEvent("mic", final))
    assert isinstance(completed, ConversationItemInputAudioTranscriptionCompletedEvent)
    assert completed.logprobs is not None and completed.logprobs[0].token == " Hi."
    assert completed.logprobs[0].logprob == pytest.approx(-0.6931, abs=1e-3)


@pytest.mark.parametrize(("eagerness", "silence_ms"), [("high", 300), ("medium", 500), ("auto", 500), ("low", 1000)])
def test_semantic_vad_eagerness_sets_the_silence_that_ends_a_turn(eagerness: str, silence_ms: int) -> None:
    c = OpenAICodec(model="m")
    parse(c, update({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": eagerness}}}}))
    assert c.config.vad and c.config.silence_duration_ms == silence_ms


@pytest.mark.parametrize(("delay", "agree"), [("minimal", 1), ("low", 2), ("medium", 2), ("high", 3), ("xhigh", 4)])
def test_delay_sets_how_many_decodes_must_agree(delay: str, agree: int) -> None:
    c = OpenAICodec(model="m")
    parse(c, update({"audio": {"input": {"transcription": {"delay": delay}}}}))
    assert c.config.agreement == agree


def test_an_empty_keyword_list_is_fine_and_limits_name_the_field() -> None:
    c = OpenAICodec(model="m")
    assert parse(c, update({"audio": {"input": {"transcription": {"keywords": []}}}})) == cmd.UpdateSession(
        event_id="u"
    )
    many = refused(c, update({"audio": {"input": {"transcription": {"keywords": [f"k{i}" for i in range(51)]}}}}))
    assert (many.code, many.param) == (ErrorCode.INVALID_EVENT, "session.audio.input.transcription.keywords")
    long = refused(c, update({"audio": {"input": {"transcription": {"keywords": ["x" * 51]}}}}))
    assert long.param == "session.audio.input.transcription.keywords"
    none = refused(c, update({"audio": {"input": {"transcription": {"languages": ["fr", "de"]}}}}))
    assert (none.code, none.param) == (ErrorCode.UNSUPPORTED_LANGUAGE, "session.audio.input.transcription.languages")
    bad = refused(c, update({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}))
    assert bad.code == ErrorCode.INVALID_EVENT and "eagerness" in (bad.param or "")


BETA = TypeAdapter(
    __import__("openai.types.beta.realtime", fromlist=["RealtimeServerEvent"]).RealtimeServerEvent  # type: ignore[attr-defined]
)


def test_the_beta_transcription_session_update() -> None:
    from openai.types.beta.realtime import TranscriptionSessionUpdatedEvent

    c = OpenAICodec(model="whisper-tiny.en")
    event = {
        "type": "transcription_session.update",
        "event_id": "b",
        "session": {
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "Names"},
            "turn_detection": {"type": "server_vad", "threshold": 0.6, "silence_duration_ms": 700},
            "input_audio_noise_reduction": {"type": "far_field"},
            "include": ["item.input_audio_transcription.logprobs"],
            "modalities": ["text"],
            "client_secret": {"expires_at": {"anchor": "created_at", "seconds": 600}},
        },
    }
    got = parse(c, event)
    assert got == cmd.UpdateSession(
        turns=TurnSettings(enabled=True, threshold=0.6, prefix_padding_ms=300, silence_duration_ms=700),
        prompt="Names",
        event_id="b",
    )
    (updated,) = [BETA.validate_python(json.loads(json.dumps(w))) for w in c.encode(SessionUpdated("sess_1", "en"))]
    assert isinstance(updated, TranscriptionSessionUpdatedEvent)
    assert updated.session.turn_detection is not None and updated.session.turn_detection.silence_duration_ms == 700
    assert updated.session.input_audio_transcription is not None
    assert updated.session.input_audio_transcription.model == "whisper-1"  # the only Whisper name the type allows
    assert updated.session.input_audio_transcription.model_extra["engine_model"] == "whisper-tiny.en"
    # the next GA update is answered in the GA shape
    parse(c, update({}))
    (ga,) = sdk(c, SessionUpdated("sess_1", "en"))
    assert isinstance(ga, SessionUpdatedEvent)
    err = refused(c, {**event, "session": {"input_audio_format": "g711_ulaw"}})
    assert (err.code, err.param) == (ErrorCode.UNSUPPORTED_FORMAT, "session.input_audio_format")


def test_a_client_commit_right_after_the_server_vad_commit_is_not_an_error() -> None:
    c = OpenAICodec(model="m")
    pcm = base64.b64encode(b"\0\0" * 2400).decode()  # 100 ms
    for _ in range(10):
        parse(c, {"type": "input_audio_buffer.append", "audio": pcm})  # 1 s appended
    sdk(c, SourceEvent("mic", SpeechStopped(1, 900)))  # the server VAD commits item 1 at 900 ms
    parse(c, {"type": "input_audio_buffer.append", "audio": pcm})
    assert sdk(c, SourceEvent("mic", Committed(None, "client"))) == []  # the client's VAD, 200 ms later
    for _ in range(20):
        parse(c, {"type": "input_audio_buffer.append", "audio": pcm})  # 2 s later: a commit of nothing again
    (empty,) = sdk(c, SourceEvent("mic", Committed(None, "late")))
    assert isinstance(empty, RealtimeErrorEvent) and empty.error.code == "input_audio_buffer_commit_empty"


def test_server_vad_with_every_field_and_language_beside_languages() -> None:
    c = OpenAICodec(model="m")
    vad = {
        "type": "server_vad",
        "threshold": 0.4,
        "prefix_padding_ms": 250,
        "silence_duration_ms": 600,
        "create_response": True,
        "interrupt_response": True,
        "idle_timeout_ms": 5000,
    }
    tr = {"model": "gpt-transcribe", "language": "en", "languages": ["fr"], "prompt": "", "keywords": ["A"]}
    got = parse(c, update({"audio": {"input": {"turn_detection": vad, "transcription": tr}}}))
    assert isinstance(got, cmd.UpdateSession) and got.turns == TurnSettings(True, 0.4, 250, 600)
    assert c.config.language == "en"  # an explicit language wins over the list
