"""The native codec without sockets: every client event parsed into its command, every server event encoded."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from echopanel.engines.base import TurnSettings
from echopanel.events import (
    AudioCleared,
    Backpressure,
    Committed,
    Degraded,
    ErrorEvent,
    Features,
    ItemFailed,
    Latency,
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
    SourceMetrics,
    SpeakerUpdated,
    SpeechStarted,
    SpeechStopped,
    TextDelta,
    TextFinal,
    Word,
)
from echopanel.protocol import commands as cmd
from echopanel.protocol.errors import ErrorCode, ProtocolError
from echopanel.protocol.frames import encode_frame
from echopanel.protocol.native import NativeCodec, NativeLimits


def codec(bound: bool = True) -> NativeCodec:
    c = NativeCodec(NativeLimits(languages=("en",), max_sources=2))
    if bound:
        c.bind(["mic", "system"])
    return c


def parse(c: NativeCodec, event: dict[str, Any]) -> cmd.Command:
    return c.parse_text(json.dumps(event))


def refused(c: NativeCodec, event: dict[str, Any] | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        c.parse_text(event if isinstance(event, str) else json.dumps(event))
    return info.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- client -> server ----------------------------------------------------------------------------------------------


def test_session_create_and_resume() -> None:
    c = codec(bound=False)
    create = parse(
        c, {"type": "session.create", "event_id": "e1", "session": {"sources": ["mic"], "sample_rate": 48000}}
    )
    assert create == cmd.CreateSession(("mic",), 48000, "en", True, None, "e1")
    manual = parse(c, {"type": "session.create", "session": {"turn_detection": None, "overflow": "block"}})
    assert manual == cmd.CreateSession(("mic", "system"), 16000, "en", False, "block", None)
    resume = parse(c, {"type": "session.create", "event_id": "r", "resume": {"session_id": "s", "resume_token": "t"}})
    assert resume == cmd.ResumeSession("s", "t", "r")


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"sample_rate": 8000}, ErrorCode.UNSUPPORTED_SAMPLE_RATE, "session.sample_rate"),
        ({"format": "opus"}, ErrorCode.UNSUPPORTED_FORMAT, "session.format"),
        ({"language": "fr"}, ErrorCode.UNSUPPORTED_LANGUAGE, "session.language"),
        ({"sources": ["a", "b", "c"]}, ErrorCode.INVALID_EVENT, "session.sources"),  # N + 1 with max_sources 2
    ],
)
def test_session_create_refusals_name_the_param(session: dict[str, Any], code: ErrorCode, param: str) -> None:
    err = refused(codec(bound=False), {"type": "session.create", "event_id": "e", "session": session})
    assert (err.code, err.param, err.event_id) == (code, param, "e")


def test_two_sources_at_the_bound_are_taken() -> None:
    assert isinstance(
        parse(codec(bound=False), {"type": "session.create", "session": {"sources": ["a", "b"]}}), cmd.CreateSession
    )


def test_events_before_session_create_and_a_second_create() -> None:
    c = codec(bound=False)
    assert parse(c, {"type": "ping", "event_id": "p"}) == cmd.Ping("p")  # ping needs no session
    for event in (
        {"type": "input_audio_buffer.commit"},
        {"type": "input_audio_buffer.append", "audio": ""},
        {"type": "session.close"},
    ):
        assert refused(c, event).code == ErrorCode.SESSION_NOT_CREATED
    with pytest.raises(ProtocolError) as info:
        c.parse_binary(encode_frame(0, b"\x00\x00"))
    assert info.value.code == ErrorCode.SESSION_NOT_CREATED
    c.bind(["mic"])
    assert refused(c, {"type": "session.create"}).code == ErrorCode.SESSION_ALREADY_CREATED
    resume = {"type": "session.create", "resume": {"session_id": "s", "resume_token": "t"}}
    assert refused(c, resume).code == ErrorCode.SESSION_ALREADY_CREATED


def test_audio_as_json_and_as_binary_frames() -> None:
    c = codec()
    pcm = b"\x01\x00\x02\x00"
    assert parse(c, {"type": "input_audio_buffer.append", "audio": b64(pcm)}) == cmd.AppendAudio("mic", pcm)
    assert parse(c, {"type": "input_audio_buffer.append", "source": "system", "audio": b64(pcm), "event_id": "a"}) == (
        cmd.AppendAudio("system", pcm, "a")
    )
    assert c.parse_binary(encode_frame(1, pcm)) == cmd.AppendAudio("system", pcm)
    assert c.parse_binary(encode_frame(0, b"")) == cmd.AppendAudio("mic", b"")  # empty audio is harmless


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ({"type": "input_audio_buffer.append", "audio": "not base64!"}, ErrorCode.INVALID_AUDIO, "audio"),
        ({"type": "input_audio_buffer.append", "audio": b64(b"\x00\x00\x00")}, ErrorCode.INVALID_AUDIO_LENGTH, "audio"),
        ({"type": "input_audio_buffer.append", "source": "tv", "audio": ""}, ErrorCode.UNKNOWN_SOURCE, "source"),
        ({"type": "input_audio_buffer.commit", "source": "tv"}, ErrorCode.UNKNOWN_SOURCE, "source"),
        ({"type": "session.update", "session": {"sample_rate": 8000}}, ErrorCode.INVALID_UPDATE, "session.sample_rate"),
        ({"type": "session.update", "session": {"language": "de"}}, ErrorCode.UNSUPPORTED_LANGUAGE, "session.language"),
    ],
)
def test_bad_events_mid_session(event: dict[str, Any], code: ErrorCode, param: str) -> None:
    err = refused(codec(), {**event, "event_id": "x"})
    assert (err.code, err.param, err.event_id) == (code, param, "x")


def test_bad_binary_frames() -> None:
    c = codec()
    for frame, param in ((b"XX\x01\x00", "magic"), (b"EP\x02\x00", "version"), (encode_frame(2, b""), "source")):
        with pytest.raises(ProtocolError) as info:
            c.parse_binary(frame)
        assert (info.value.code, info.value.param) == (ErrorCode.INVALID_FRAME, param)
    with pytest.raises(ProtocolError) as odd:
        c.parse_binary(encode_frame(0, b"\x00"))
    assert odd.value.code == ErrorCode.INVALID_AUDIO_LENGTH


def test_commit_clear_response_update_close_ping() -> None:
    c = codec()
    both = ("mic", "system")
    assert parse(c, {"type": "input_audio_buffer.commit", "event_id": "c"}) == cmd.CommitAudio(both, "c")
    assert parse(c, {"type": "input_audio_buffer.commit", "source": "mic"}) == cmd.CommitAudio(("mic",))
    assert parse(c, {"type": "input_audio_buffer.clear", "source": "system"}) == cmd.ClearAudio(("system",))
    assert parse(c, {"type": "input_audio_buffer.clear"}) == cmd.ClearAudio(both)
    assert parse(c, {"type": "response.create", "event_id": "r"}) == cmd.RequestResponse(both, "r")
    assert parse(c, {"type": "session.update", "session": {"language": "en"}}) == cmd.UpdateSession(language="en")
    assert parse(c, {"type": "session.update", "session": {}}) == cmd.UpdateSession()
    assert parse(c, {"type": "session.close", "event_id": "z"}) == cmd.CloseSession("z")
    assert parse(c, {"type": "ping"}) == cmd.Ping()


def test_unknown_and_malformed_messages() -> None:
    c = codec()
    assert refused(c, "{nope").code == ErrorCode.INVALID_JSON
    assert refused(c, {"type": "teleport", "event_id": "t"}).event_id == "t"
    assert refused(c, {"type": "input_audio_buffer.append"}).code == ErrorCode.INVALID_EVENT


# -- server -> client ----------------------------------------------------------------------------------------------


def encode(event: Any, c: NativeCodec | None = None) -> list[dict[str, Any]]:
    wires = (c or codec()).encode(event)
    for wire in wires:
        json.dumps(wire)  # plain JSON
    return wires


def one(event: Any, c: NativeCodec | None = None) -> dict[str, Any]:
    wires = encode(event, c)
    assert len(wires) == 1
    return wires[0]


FINAL = TextFinal(
    3,
    "Hello there.",
    100,
    900,
    (Word(" Hello", 100, 400, 0.9), Word(" there.", 450, 900, 0.8)),
    "whisper",
    12.5,
    response_id="r1",
    replaces=(1, 2),
)
INFO = SessionInfo(
    "sess_1",
    ("mic", "system"),
    16000,
    "en",
    True,
    "tiny.en",
    "whisper",
    "tok",
    Limits(1 << 20, 4000, 2000, "shed", 15000, 4, 30000),
    Features(speakers=True, fallback="pocketsphinx", store="sqlite"),
)


def test_engine_events() -> None:
    assert one(SourceEvent("mic", SpeechStarted(3, 120, 0))) == {
        "type": "input_audio_buffer.speech_started", "source": "mic", "item_id": "item_mic_00003",
        "audio_start_ms": 120,
    }  # fmt: skip
    assert one(SourceEvent("mic", SpeechStopped(3, 950))) == {
        "type": "input_audio_buffer.speech_stopped", "source": "mic", "item_id": "item_mic_00003", "audio_end_ms": 950,
    }  # fmt: skip
    delta = one(SourceEvent("system", TextDelta(3, "Hello", " the", 100, 600, response_id="r1", engine="whisper")))
    assert delta == {
        "type": "response.text.delta", "item_id": "item_system_00003", "source": "system", "delta": "Hello",
        "tentative": " the", "start_ms": 100, "end_ms": 600, "speaker": None, "engine": "whisper", "response_id": "r1",
    }  # fmt: skip
    done = one(SourceEvent("mic", FINAL, "mic:S1", ((100, 900, "mic:S1"),)))
    assert done["type"] == "response.done" and done["text"] == "Hello there." and done["speaker"] == "mic:S1"
    assert done["words"][1] == {"word": " there.", "start_ms": 450, "end_ms": 900, "confidence": 0.8}
    assert done["speaker_turns"] == [{"speaker": "mic:S1", "start_ms": 100, "end_ms": 900}]
    assert done["replaces"] == ["item_mic_00001", "item_mic_00002"] and done["response_id"] == "r1"
    assert done["repaired"] is False and "superseded" not in done
    cut = one(SourceEvent("mic", TextFinal(4, "Hel", 0, 10, (), "whisper", 0.0, superseded=True)))
    assert cut["superseded"] is True and "speaker_turns" not in cut
    assert one(SourceEvent("mic", Committed(3, "c1"))) == {
        "type": "input_audio_buffer.committed", "source": "mic", "item_id": "item_mic_00003", "event_id": "c1",
    }  # fmt: skip
    empty = one(SourceEvent("mic", Committed(None, "c2")))
    assert empty["type"] == "error" and empty["code"] == "input_audio_buffer_commit_empty"
    assert empty["event_id"] == "c2" and empty["source"] == "mic"
    failed = one(SourceEvent("mic", ItemFailed(5, "engine_unavailable", "no engine", 0, 10)))
    assert failed == {
        "type": "error", "code": "engine_unavailable", "message": "no engine", "item_id": "item_mic_00005",
        "source": "mic",
    }  # fmt: skip
    assert one(SourceEvent("mic", RequestCompleted("r1"))) == {
        "type": "response.completed", "source": "mic", "response_id": "r1", "event_id": "r1",
    }  # fmt: skip


def test_session_events() -> None:
    assert one(Backpressure("mic", "shedding", 3900, 1200, 4000)) == {
        "type": "input_audio_buffer.backpressure", "source": "mic", "level": "shedding", "queued_ms": 3900,
        "dropped_ms": 1200, "limit_ms": 4000,
    }  # fmt: skip
    assert one(Degraded(2, "no_system_partials", "high load")) == {
        "type": "session.degraded", "level": 2, "name": "no_system_partials", "reason": "high load",
    }  # fmt: skip
    src = SourceMetrics(5000, 40, 4960, 0, 0.12, Latency(520, 900), Latency(700, None), 500, True, "normal")
    metrics = one(SessionMetrics("sess_1", {"mic": src}, 0, "normal", "whisper", "closed", {"whisper": "closed"}))
    assert metrics["type"] == "session.metrics" and metrics["breakers"] == {"whisper": "closed"}
    assert metrics["sources"]["mic"] == {
        "received_ms": 5000, "queued_ms": 40, "processed_ms": 4960, "dropped_ms": 0, "rtf": 0.12,
        "first_partial_latency_ms": {"p50": 520, "p95": 900}, "final_latency_ms": {"p50": 700, "p95": None},
        "partial_interval_ms": 500, "live": True, "backpressure": "normal",
    }  # fmt: skip
    assert "breakers" not in one(SessionMetrics("s", {}, 0, "normal", "whisper", "closed"))
    assert one(SpeakerUpdated("item_mic_00003", "mic", "mic:S2", None)) == {
        "type": "speaker.updated", "item_id": "item_mic_00003", "source": "mic", "speaker": "mic:S2", "previous": None,
    }  # fmt: skip
    summary = one(SessionSummary({"session_id": "sess_1", "status": "completed", "transcript": []}, "e9"))
    assert summary == {
        "type": "session.summary",
        "session_id": "sess_1",
        "status": "completed",
        "transcript": [],
        "event_id": "e9",
    }


def test_errors_in_the_native_shape() -> None:
    refusal = ProtocolError(ErrorCode.UNKNOWN_SOURCE, "unknown source", param="source", event_id="e").event()
    assert one(refusal) == {
        "type": "error",
        "code": "unknown_source",
        "message": "unknown source",
        "event_id": "e",
        "param": "source",
    }
    internal = one(ErrorEvent("internal_error", "source mic failed", source="mic", server=True, fatal=True))
    assert internal == {
        "type": "error",
        "code": "internal_error",
        "message": "source mic failed",
        "source": "mic",
        "fatal": True,
    }


def test_replies() -> None:
    created = one(SessionCreated(INFO, "e1"))
    assert created["type"] == "session.created" and created["event_id"] == "e1" and "resumed" not in created
    assert created["session"] == {
        "id": "sess_1", "sources": ["mic", "system"], "sample_rate": 16000, "format": "pcm16", "language": "en",
        "turn_detection": {"type": "server_vad"}, "model": "tiny.en", "engine": "whisper", "resume_token": "tok",
        "limits": {
            "max_message_bytes": 1 << 20, "mic_queue_ms": 4000, "system_queue_ms": 2000, "overflow": "shed",
            "max_utterance_ms": 15000, "max_sources": 4, "resume_grace_ms": 30000,
        },
        "features": {"speakers": True, "fallback": "pocketsphinx", "store": "sqlite"},
    }  # fmt: skip
    resumed = one(SessionCreated(INFO, None, resumed=True, received_ms={"mic": 1200, "system": 900}))
    assert resumed["resumed"] is True and resumed["received_ms"] == {"mic": 1200, "system": 900}
    assert "event_id" not in resumed
    turns = {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 300, "prefix_padding_ms": 300}
    assert one(SessionUpdated("sess_1", "en", "u")) == {
        "type": "session.updated",
        "session": {
            "id": "sess_1", "language": "en", "keyterms": [], "replace": {}, "partials": True, "turn_detection": turns,
        },
        "event_id": "u",
    }  # fmt: skip
    assert one(AudioCleared("system", "c")) == {
        "type": "input_audio_buffer.cleared",
        "source": "system",
        "event_id": "c",
    }
    assert one(Pong("p")) == {"type": "pong", "event_id": "p"} and one(Pong()) == {"type": "pong"}
    replayed = one(Replayed(SourceEvent("mic", FINAL)))
    assert replayed["type"] == "response.done" and replayed["replayed"] is True


# -- settings that change mid-session (issue 14) ----------------------------------------------------------------------


def test_keyterms_replacements_partials_and_turns_at_create_reach_the_session_as_one_update() -> None:
    c = codec(bound=False)
    session = {
        "keyterms": ["Ragnhild", " Okonkwo ", "Ragnhild"], "replace": {"post gress": "Postgres"}, "partials": False,
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 800},
    }  # fmt: skip
    create = parse(c, {"type": "session.create", "session": session})
    assert isinstance(create, cmd.CreateSession) and create.turn_detection
    s = create.settings
    assert s is not None and s.prompt == "Glossary: Ragnhild, Okonkwo." and s.partials is False
    assert s.replacements is not None and s.replacements.apply(" the post gress db") == " the Postgres db"
    assert s.turns == TurnSettings(enabled=True, silence_duration_ms=800)
    assert (
        c.settings["keyterms"] == ["Ragnhild", "Okonkwo"] and c.settings["turn_detection"]["silence_duration_ms"] == 800
    )


def test_session_update_changes_only_what_it_names_and_the_echo_shows_what_is_in_effect() -> None:
    c = codec()
    update = parse(c, {"type": "session.update", "event_id": "u1", "session": {"keyterms": ["Zyxel"]}})
    assert update == cmd.UpdateSession(prompt="Glossary: Zyxel.", event_id="u1")
    manual = parse(c, {"type": "session.update", "session": {"turn_detection": None, "keyterms": []}})
    assert manual == cmd.UpdateSession(turns=TurnSettings(enabled=False), prompt="")
    back = parse(c, {"type": "session.update", "session": {"turn_detection": {"type": "server_vad", "threshold": 0.7}}})
    assert back == cmd.UpdateSession(turns=TurnSettings(enabled=True, threshold=0.7))
    echoed = one(SessionUpdated("sess_1", "en", None), c)["session"]
    assert echoed["keyterms"] == [] and echoed["partials"] is True
    assert echoed["turn_detection"] == {
        "type": "server_vad", "threshold": 0.7, "silence_duration_ms": 300, "prefix_padding_ms": 300,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"keyterms": ["x"] * 51}, "session.keyterms"),
        ({"keyterms": ["x" * 51]}, "session.keyterms"),
        ({"keyterms": ["  "]}, "session.keyterms"),
        ({"keyterms": "Postgres"}, "session.keyterms"),
        ({"replace": {f"k{i}": "v" for i in range(101)}}, "session.replace"),
        ({"replace": {"...": "v"}}, "session.replace"),
        ({"replace": {"a b c d e f g h i": "v"}}, "session.replace"),
        ({"replace": {"post gress": ""}}, "session.replace"),
        ({"replace": {"k": "v" * 101}}, "session.replace"),
        ({"partials": "no"}, "session.partials"),
        ({"turn_detection": {"type": "server_vad", "threshold": 1.5}}, "session.turn_detection.threshold"),
        ({"turn_detection": {"silence_duration_ms": 50}}, "session.turn_detection.silence_duration_ms"),
        ({"turn_detection": {"prefix_padding_ms": 2001}}, "session.turn_detection.prefix_padding_ms"),
        ({"sample_rate": 8000}, "session.sample_rate"),
    ],
)
def test_a_bad_update_is_refused_with_its_field_and_changes_nothing(session: dict[str, Any], param: str) -> None:
    c = codec()
    before = dict(c.settings)
    with pytest.raises(ProtocolError) as err:
        parse(c, {"type": "session.update", "session": session})
    assert err.value.code == ErrorCode.INVALID_UPDATE and err.value.param == param
    assert c.settings == before


def test_the_bounds_hold_at_n() -> None:
    c = codec()
    terms = [f"term{i:02d}" + "x" * 44 for i in range(50)]
    rules = {f"w{i} a b c d e f g": "v" * 100 for i in range(100)}
    update = parse(c, {"type": "session.update", "session": {"keyterms": terms, "replace": rules}})
    assert isinstance(update, cmd.UpdateSession) and update.replacements is not None
    assert len(c.settings["keyterms"]) == 50 and len(c.settings["replace"]) == 100
