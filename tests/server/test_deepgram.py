"""The Deepgram live dialect (``/v1/listen``) with the official ``deepgram-sdk`` as the client, streaming real
speech at real-time pace to a real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np
import pytest
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment
from deepgram.listen.v1.types import (
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)
from websockets.exceptions import ConnectionClosed

from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio

from support import CARDS, LIBRIVOX, ServerProcess, librivox_refs, wer

RATE = 16000
CHUNK_S = 0.04
CLIPS = ["sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0930"]


def client_for(server: ServerProcess, key: str = "k") -> AsyncDeepgramClient:
    ws = server.http.replace("http://", "ws://", 1)
    env = DeepgramClientEnvironment(base=server.http, production=ws, agent=ws, agent_rest=server.http)
    return AsyncDeepgramClient(api_key=key, environment=env)


def speech(names: list[str], silence_s: float = 1.5) -> np.ndarray:
    gap = np.zeros(int(RATE * silence_s), np.float32)
    return np.concatenate([np.concatenate([read_audio(LIBRIVOX / f"{n}.wav", RATE), gap]) for n in names])


async def send_realtime(socket: Any, pcm: bytes, channels: int = 1) -> None:
    step = int(RATE * CHUNK_S) * 2 * channels
    t0 = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, t0 + n * CHUNK_S - time.monotonic()))
        await socket.send_media(pcm[i : i + step])


async def collect(socket: Any, into: list[Any]) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in socket:
            into.append(message)


def finals(messages: list[Any], channel: int = 0) -> list[ListenV1Results]:
    return [m for m in messages if isinstance(m, ListenV1Results) and m.is_final and m.channel_index[0] == channel]


async def test_live_results_with_the_official_sdk(server: ServerProcess) -> None:
    refs = librivox_refs()
    messages: list[Any] = []
    async with client_for(server).listen.v1.connect(
        model="nova-3",
        encoding="linear16",
        sample_rate=RATE,
        channels=1,
        interim_results="true",
        punctuate="true",
        smart_format="true",
        diarize="true",
        endpointing=300,
        utterance_end_ms=1000,
        vad_events="true",
        keyterm=["Dashwood"],
        language="en",
    ) as socket:
        reader = asyncio.create_task(collect(socket, messages))
        await send_realtime(socket, float_to_pcm16(speech(CLIPS)))
        # Finalize flushes an utterance still open: speech with no silence after it
        await send_realtime(
            socket, float_to_pcm16(read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"))
        )
        await socket.send_finalize()
        await asyncio.sleep(3.0)
        await socket.send_close_stream()
        await asyncio.wait_for(reader, 60)
    kinds = [type(m).__name__ for m in messages]
    assert not [m for m in messages if getattr(m, "type", None) == "Error"], messages
    interim = [m for m in messages if isinstance(m, ListenV1Results) and not m.is_final]
    done = finals(messages)
    assert interim and all(m.channel.alternatives[0].transcript for m in interim)
    assert [m.speech_final for m in done[:-1]] == [True] * (len(done) - 1)  # each utterance ends on silence
    assert done[-1].from_finalize and done[-1].speech_final  # ... the last one on Finalize
    assert sum(isinstance(m, ListenV1UtteranceEnd) for m in messages) >= len(CLIPS)
    assert sum(isinstance(m, ListenV1SpeechStarted) for m in messages) >= len(CLIPS) + 1
    words = [w for m in done for w in m.channel.alternatives[0].words]
    assert words and all(w.start <= w.end and 0 <= w.confidence <= 1 for w in words)
    assert {w.speaker for w in words} == {0}  # one reader, diarized: speaker 0
    assert isinstance(messages[-1], ListenV1Metadata) and messages[-1].duration > 10, kinds[-3:]
    reference = " ".join(refs[n] for n in [*CLIPS, "sense_and_sensibility_01_austen_64kb-0880"])
    hyp = " ".join(m.channel.alternatives[0].transcript for m in done)
    assert wer(reference, hyp) <= 0.10, hyp  # a keyterm is set: no sign-off invented after an utterance
    # every UtteranceEnd follows a speech_final result of its channel, after the gap asked for
    ends = [m for m in messages if isinstance(m, ListenV1UtteranceEnd)]
    assert all(e.last_word_end > 0 for e in ends)


async def test_multichannel_gives_one_channel_per_source(server: ServerProcess) -> None:
    refs = librivox_refs()
    mic = speech(CLIPS)
    cards = read_audio(CARDS / "005.wav", RATE)
    system = np.zeros_like(mic)
    system[: min(len(cards), len(mic))] = cards[: len(mic)]
    pcm = np.stack([np.frombuffer(float_to_pcm16(mic), "<i2"), np.frombuffer(float_to_pcm16(system), "<i2")], 1)
    messages: list[Any] = []
    async with client_for(server).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=RATE, channels=2, multichannel="true"
    ) as socket:
        reader = asyncio.create_task(collect(socket, messages))
        await send_realtime(socket, pcm.tobytes(), channels=2)
        await socket.send_close_stream()
        await asyncio.wait_for(reader, 60)
    ch0 = " ".join(m.channel.alternatives[0].transcript for m in finals(messages, 0))
    ch1 = " ".join(m.channel.alternatives[0].transcript for m in finals(messages, 1))
    assert wer(" ".join(refs[n] for n in CLIPS), ch0) <= 0.10, ch0
    assert ch1 and wer(ch1, ch0) > 0.9  # the other channel's words, not a copy
    assert {tuple(m.channel_index) for m in finals(messages, 1)} == {(1, 2)}


async def test_keepalive_keeps_an_idle_stream_open(idle_server: ServerProcess) -> None:
    """The idle server ends a connection that sends nothing for 2 s."""
    async with client_for(idle_server).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=RATE) as s:
        for _ in range(8):  # 4 s of silence from the client, KeepAlive every 0.5 s
            await s.send_keep_alive()
            await asyncio.sleep(0.5)
        await send_realtime(s, float_to_pcm16(speech(CLIPS[:1])))
        messages: list[Any] = []
        await s.send_close_stream()
        await asyncio.wait_for(collect(s, messages), 30)
    assert finals(messages), messages
    async with client_for(idle_server).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=RATE) as s:
        closed: list[Any] = []
        await asyncio.wait_for(collect(s, closed), 10)  # no KeepAlive: the server ends it


async def test_bad_input_gets_deepgram_errors(server: ServerProcess) -> None:
    for bad in ({"encoding": "mulaw", "sample_rate": 8000}, {"encoding": "linear16", "sample_rate": 11025}):
        with pytest.raises(ApiError) as info:  # the handshake refused with HTTP 400, as Deepgram does
            async with client_for(server).listen.v1.connect(model="nova-3", **bad):
                pass
        assert info.value.status_code == 400
    messages: list[Any] = []
    async with client_for(server).listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=RATE) as s:
        reader = asyncio.create_task(collect(s, messages))
        await s.send_media(b"\x01\x02\x03")  # not whole samples
        await s._send({"type": "Shout"})  # not a message type
        await send_realtime(s, float_to_pcm16(speech(CLIPS[:1])))  # the stream goes on
        await s.send_close_stream()
        await asyncio.wait_for(reader, 30)
    errors = [m for m in messages if getattr(m, "type", None) == "Error"]
    assert len(errors) == 2 and {e.variant for e in errors} == {"invalid_audio_length", "unknown_event"}, errors
    assert (
        wer(librivox_refs()[CLIPS[0]], " ".join(m.channel.alternatives[0].transcript for m in finals(messages))) <= 0.10
    )
