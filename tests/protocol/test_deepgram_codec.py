"""The Deepgram codec without sockets: options from the query, frames split per channel, and the is_final /
speech_final / from_finalize mapping, each message validated by the deepgram-sdk's own type."""

from __future__ import annotations

import json

import numpy as np
import pytest
from deepgram.listen.v1.types import ListenV1Results, ListenV1SpeechStarted, ListenV1UtteranceEnd

from echopanel.events import SourceEvent, SpeechStarted, SpeechStopped, TextDelta, TextFinal, UtteranceEnd, Word
from echopanel.protocol import commands as cmd
from echopanel.protocol.deepgram import DeepgramCodec, parse_options
from echopanel.protocol.errors import ErrorCode, ProtocolError


def codec(query: str = "encoding=linear16&sample_rate=16000") -> DeepgramCodec:
    return DeepgramCodec(parse_options(query, 4, ("en",)))


@pytest.mark.parametrize(
    ("query", "code", "param"),
    [
        ("encoding=mulaw", ErrorCode.UNSUPPORTED_FORMAT, "encoding"),
        ("sample_rate=8000", ErrorCode.UNSUPPORTED_SAMPLE_RATE, "sample_rate"),
        ("channels=5&multichannel=true", ErrorCode.INVALID_EVENT, "channels"),
        ("language=fr", ErrorCode.UNSUPPORTED_LANGUAGE, "language"),
        ("callback=https://x", ErrorCode.INVALID_EVENT, "callback"),
        ("utterance_end_ms=200", ErrorCode.INVALID_EVENT, "utterance_end_ms"),
        ("keyterm=" + "x" * 51, ErrorCode.INVALID_EVENT, "keyterm"),
        ("channels=two", ErrorCode.INVALID_EVENT, "channels"),
    ],
)
def test_parameters_that_cannot_work_name_themselves(query: str, code: ErrorCode, param: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_options(query, 4, ("en",))
    assert (info.value.code, info.value.param) == (code, param)


def test_options() -> None:
    o = parse_options("keyterm=Dashwood&keyterm=Norland&keywords=Elinor:2&endpointing=false&tag=x", 4, ("en",))
    assert o.keyterms == ("Dashwood", "Norland", "Elinor") and o.turn_detection is False
    assert parse_options("endpointing=10", 4, ("en",)).silence_ms == 100
    assert parse_options("", 4, ("en",)).silence_ms is None  # the server's own
    assert parse_options("channels=3&multichannel=true", 4, ("en",)).sources == ["mic", "system", "ch2"]


def test_frames_split_per_channel_or_mix_down() -> None:
    left, right = np.array([100, 200], "<i2"), np.array([-100, 400], "<i2")
    frame = np.stack([left, right], 1).tobytes()
    multi = codec("channels=2&multichannel=true").parse_binary(frame)
    assert multi == cmd.AppendAudioMany(
        (cmd.AppendAudio("mic", left.tobytes()), cmd.AppendAudio("system", right.tobytes()))
    )
    mixed = codec("channels=2").parse_binary(frame)
    assert mixed == cmd.AppendAudio("mic", np.array([0, 300], "<i2").tobytes())
    with pytest.raises(ProtocolError) as info:
        codec("channels=2").parse_binary(b"\0\0\0")
    assert info.value.code == ErrorCode.INVALID_AUDIO_LENGTH


def test_control_messages() -> None:
    c = codec()
    assert c.parse_text('{"type": "KeepAlive"}') == cmd.Ping()
    assert c.parse_text('{"type": "Finalize"}') == cmd.CommitAudio(("mic",))
    assert c.parse_text('{"type": "CloseStream"}') == cmd.CloseSession()
    assert c.parse_text('{"type": "Configure", "keyterms": ["EchoPanel"]}') == cmd.UpdateSession(
        prompt="Glossary: EchoPanel."
    )
    for bad in ('{"type": "Shout"}', "not json", '{"type": "Configure", "keyterms": "x"}'):
        with pytest.raises(ProtocolError):
            c.parse_text(bad)


def results(c: DeepgramCodec, ev: object, speaker: str | None = None) -> list[ListenV1Results]:
    return [
        ListenV1Results.model_validate(json.loads(json.dumps(w))) for w in c.encode(SourceEvent("mic", ev, speaker))
    ]  # type: ignore[arg-type]


WORDS = (Word(" Hello,", 100, 400, 0.9), Word(" world.", 450, 800, 0.8))


def test_is_final_speech_final_and_from_finalize() -> None:
    c = codec("interim_results=true&diarize=true&vad_events=true")
    (started,) = [
        ListenV1SpeechStarted.model_validate(w) for w in c.encode(SourceEvent("mic", SpeechStarted(1, 100, 0)))
    ]
    assert started.channel == [0, 1] and started.timestamp == 0.1
    (interim,) = results(c, TextDelta(1, "Hello,", " wor", 100, 600))
    assert interim.is_final is False and interim.channel.alternatives[0].transcript == "Hello, wor"
    assert results(c, SpeechStopped(1, 900)) == []
    (final,) = results(c, TextFinal(1, "Hello, world.", 100, 900, WORDS, "whisper", 1.0), "mic:S1")
    assert (final.is_final, final.speech_final, final.from_finalize) == (True, True, False)
    w = final.channel.alternatives[0].words
    assert [(x.word, x.punctuated_word, x.speaker) for x in w] == [("hello", "Hello,", 0), ("world", "world.", 0)]
    assert c.last_word_end_ms == {"mic": 800}
    # the 15 s cap: final, but not the end of speech
    results(c, SpeechStopped(2, 16000, "max_length"))
    (capped,) = results(c, TextFinal(2, "and so on", 1000, 16000, (), "whisper", 1.0), "mic:S2")
    assert (capped.is_final, capped.speech_final) == (True, False)
    # Finalize
    c.parse_text('{"type": "Finalize"}')
    results(c, SpeechStopped(3, 17000, "commit"))
    (flushed,) = results(c, TextFinal(3, "Bye.", 16000, 17000, WORDS[:1], "whisper", 1.0), "mic:S2")
    assert (flushed.speech_final, flushed.from_finalize) == (True, True)
    assert flushed.channel.alternatives[0].words[0].speaker == 1  # a second label, a second number
    (end,) = [ListenV1UtteranceEnd.model_validate(w) for w in c.encode(UtteranceEnd("mic", 17000))]
    assert end.last_word_end == 17.0
