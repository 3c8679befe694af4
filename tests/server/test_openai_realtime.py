"""The OpenAI Realtime transcription endpoint, driven by the official ``openai`` SDK against a real server."""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import (
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    ConversationItemInputAudioTranscriptionSegment,
    InputAudioBufferClearedEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent,
    RealtimeErrorEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
)
from websockets.exceptions import ConnectionClosed

from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient

from support import LIBRIVOX, ServerProcess, librivox_refs, run_server, wer

EXPECTED = {
    "session.created": SessionCreatedEvent,
    "session.updated": SessionUpdatedEvent,
    "input_audio_buffer.speech_started": InputAudioBufferSpeechStartedEvent,
    "input_audio_buffer.speech_stopped": InputAudioBufferSpeechStoppedEvent,
    "input_audio_buffer.committed": InputAudioBufferCommittedEvent,
    "input_audio_buffer.cleared": InputAudioBufferClearedEvent,
    "conversation.item.input_audio_transcription.delta": ConversationItemInputAudioTranscriptionDeltaEvent,
    "conversation.item.input_audio_transcription.completed": ConversationItemInputAudioTranscriptionCompletedEvent,
    "conversation.item.input_audio_transcription.segment": ConversationItemInputAudioTranscriptionSegment,
    "error": RealtimeErrorEvent,
}
RATE = 24000


def client_for(server: ServerProcess, key: str = "anything") -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.http}/v1", api_key=key, max_retries=0)


def pcm24(name: str, silence_s: float = 1.0) -> bytes:
    audio = read_audio(LIBRIVOX / f"{name}.wav", RATE)
    return float_to_pcm16(np.concatenate([audio, np.zeros(int(RATE * silence_s), np.float32)]))


def typed(ev: Any) -> Any:
    cls = EXPECTED.get(ev.type)
    assert cls is not None, f"unexpected event type {ev.type}"
    assert type(ev) is cls, f"{ev.type} arrived as {type(ev).__name__}, not the SDK's {cls.__name__}"
    return ev


async def send_audio(conn: Any, pcm: bytes, chunk_ms: int = 100, speed: float | None = None) -> None:
    """Append ``pcm`` in ``chunk_ms`` pieces: as fast as possible, or at ``speed`` x real time."""
    step = RATE * chunk_ms // 1000 * 2
    t0 = asyncio.get_running_loop().time()
    for n, i in enumerate(range(0, len(pcm), step)):
        if speed is not None:
            await asyncio.sleep(max(0.0, t0 + n * chunk_ms / 1000 / speed - asyncio.get_running_loop().time()))
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of this test's own: the degrade level is server-wide, and under load (level >= 1) live speaker
    labels pause, so load left by other tests on the shared server would take the labels this test checks."""
    with run_server(tmp_path_factory.mktemp("openai")) as srv:
        yield srv


SERVER_VAD = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": RATE},
            "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 300,
            },
        }
    },
}


async def test_server_vad_stream_with_the_official_sdk(own_server: ServerProcess) -> None:
    server = own_server
    refs = librivox_refs()
    names = sorted(refs)
    pcm = b"".join(pcm24(n) for n in names)
    client = client_for(server)
    deltas: dict[str, str] = defaultdict(str)
    completed: dict[str, str] = {}
    committed: list[InputAudioBufferCommittedEvent] = []
    segments: dict[str, ConversationItemInputAudioTranscriptionSegment] = {}
    speakers: dict[str, str | None] = {}
    kinds: list[str] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = typed(await conn.recv())
        assert created.type == "session.created" and created.session.type == "transcription"
        await conn.session.update(session=SERVER_VAD)  # type: ignore[arg-type]
        updated = typed(await conn.recv())
        assert updated.type == "session.updated"
        assert updated.session.audio.input.turn_detection.silence_duration_ms == 300
        assert updated.session.audio.input.format.rate == RATE

        sender = asyncio.create_task(send_audio(conn, pcm, speed=2.0))  # 2x real time: a live stream, not a burst

        def all_in() -> bool:
            return sender.done() and len(completed) == len(committed) >= len(names)

        async def receive() -> None:
            while not all_in():
                try:  # the last item may complete before the paced sender is done: look again every 0.5 s
                    ev = typed(await asyncio.wait_for(conn.recv(), 0.5))
                except TimeoutError:
                    continue
                kinds.append(ev.type)
                if ev.type == "input_audio_buffer.committed":
                    committed.append(ev)
                elif ev.type == "conversation.item.input_audio_transcription.delta":
                    deltas[ev.item_id] += ev.delta or ""
                    assert isinstance(ev.model_extra.get("tentative"), str)
                elif ev.type == "conversation.item.input_audio_transcription.segment":
                    segments[ev.item_id] = ev
                elif ev.type == "conversation.item.input_audio_transcription.completed":
                    completed[ev.item_id] = ev.transcript
                    speakers[ev.item_id] = ev.model_extra["speaker"]
                    assert ev.usage.type == "duration" and ev.usage.seconds > 0
                    assert ev.model_extra["source"] == "mic" and ev.model_extra["words"]
                elif ev.type == "error":
                    raise AssertionError(ev.error)

        await asyncio.wait_for(receive(), 120)
        await sender
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("input_audio_buffer.speech_stopped")
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")
    # Append-only deltas: their concatenation is the transcript.
    for iid, text in completed.items():
        assert deltas[iid] == text
    assert committed[0].previous_item_id is None
    for a, b in itertools.pairwise(committed):
        assert b.previous_item_id == a.item_id
    hyp = " ".join(completed[c.item_id] for c in committed)
    assert wer(" ".join(refs[n] for n in names), hyp) <= 0.10, hyp
    # Speaker labels: one reader, one label; each item's segment (sent before its completed event) carries it.
    assert set(speakers.values()) == {"mic:S1"}, speakers
    for iid, text in completed.items():
        seg = segments[iid]
        assert (seg.text, seg.speaker) == (text, speakers[iid]) and 0 <= seg.start < seg.end
        assert kinds.index(seg.type) < kinds.index("conversation.item.input_audio_transcription.completed")


async def test_manual_commits(server: ServerProcess) -> None:
    refs = librivox_refs()
    names = sorted(refs)
    client = client_for(server)
    manual = {**SERVER_VAD, "audio": {"input": {**SERVER_VAD["audio"]["input"], "turn_detection": None}}}  # type: ignore[index]
    transcripts = []
    previous = None
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        typed(await conn.recv())
        await conn.session.update(session=manual)  # type: ignore[arg-type]
        updated = typed(await conn.recv())
        assert updated.session.audio.input.turn_detection is None
        for name in names:
            await send_audio(conn, pcm24(name, silence_s=0.3))
            await conn.input_audio_buffer.commit()
            ev = typed(await conn.recv())
            while ev.type != "input_audio_buffer.committed":
                assert ev.type.startswith("conversation.item.input_audio_transcription"), ev.type
                ev = typed(await conn.recv())
            assert ev.previous_item_id == previous
            previous = ev.item_id
            while True:
                done = typed(await conn.recv())
                assert not done.type.startswith("input_audio_buffer.speech"), "no VAD events in manual mode"
                if done.type == "conversation.item.input_audio_transcription.completed":
                    assert done.item_id == ev.item_id
                    transcripts.append(done.transcript)
                    break
    # The same audio and the same bound as the native endpoint's test.
    hyp = " ".join(transcripts)
    assert wer(" ".join(refs[n] for n in names), hyp) <= 0.10, hyp


async def expect_error(conn: Any, code: str, param: str | None = None, event_id: str | None = None) -> None:
    ev = typed(await asyncio.wait_for(conn.recv(), 30))
    while ev.type != "error":
        ev = typed(await asyncio.wait_for(conn.recv(), 30))
    assert ev.error.code == code, ev.error
    assert ev.error.type == "invalid_request_error"
    if param is not None:
        assert ev.error.param == param
    if event_id is not None:
        assert ev.error.event_id == event_id


async def test_malformed_events_get_errors_and_the_connection_stays_usable(server: ServerProcess) -> None:
    name = "sense_and_sensibility_01_austen_64kb-0930"
    client = client_for(server)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        typed(await conn.recv())
        await conn.send({"type": "input_audio_buffer.append", "audio": "%%% not base64", "event_id": "b1"})
        await expect_error(conn, "invalid_audio", "audio", "b1")
        await conn.send({"type": "session.update", "session": {"type": "realtime"}, "event_id": "b2"})
        await expect_error(conn, "invalid_event", "session.type", "b2")
        await conn.input_audio_buffer.commit(event_id="b3")
        await expect_error(conn, "input_audio_buffer_commit_empty", None, "b3")
        bad_format = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}
        await conn.send({"type": "session.update", "session": bad_format, "event_id": "b4"})  # type: ignore[typeddict-item]
        await expect_error(conn, "unsupported_format", "session.audio.input.format.type", "b4")
        bad_rate = {"type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}}
        await conn.send({"type": "session.update", "session": bad_rate, "event_id": "b5"})  # type: ignore[typeddict-item]
        await expect_error(conn, "unsupported_sample_rate", "session.audio.input.format.rate", "b5")
        await conn.send({"type": "response.create", "event_id": "b6"})
        await expect_error(conn, "unknown_event", "type", "b6")
        other = {"type": "transcription", "audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}}
        await conn.send({"type": "session.update", "session": other, "event_id": "b7"})  # type: ignore[typeddict-item]
        await expect_error(conn, "invalid_event", "session.audio.input.turn_detection.type", "b7")
        await conn.send({"type": "session.update", "session": {"type": "transcription", "speed": 2}, "event_id": "b8"})  # type: ignore[typeddict-item]
        await expect_error(conn, "invalid_event", "session.speed", "b8")
        await conn.send({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "b9"})
        await expect_error(conn, "invalid_audio_length", "audio", "b9")

        await send_audio(conn, pcm24(name, silence_s=0.2))
        await conn.input_audio_buffer.clear()
        ev = typed(await conn.recv())
        while ev.type != "input_audio_buffer.cleared":
            ev = typed(await conn.recv())

        await send_audio(conn, pcm24(name))
        while True:
            ev = typed(await asyncio.wait_for(conn.recv(), 60))
            assert ev.type != "error", ev
            if ev.type == "conversation.item.input_audio_transcription.completed" and ev.transcript:
                break
        assert wer(librivox_refs()[name], ev.transcript) <= 0.25, ev.transcript


async def test_wrong_key_closes_1008_and_the_sdk_does_not_retry(token_server: ServerProcess) -> None:
    attempts: list[int] = []

    def on_reconnecting(event: Any) -> dict[str, bool]:
        attempts.append(event.close_code)
        return {"abort": True}

    client = client_for(token_server, key="wrong")
    with pytest.raises(ConnectionClosed) as info:
        async with client.realtime.connect(
            extra_query={"intent": "transcription"}, on_reconnecting=on_reconnecting
        ) as conn:
            async for _event in conn:
                pass
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    assert attempts == []
    good = client_for(token_server, key="s3cret")
    async with good.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert typed(await conn.recv()).type == "session.created"


async def test_full_server_closes_1013_and_the_sdk_backs_off(small_server: ServerProcess) -> None:
    attempts: list[int] = []

    def on_reconnecting(event: Any) -> dict[str, bool]:
        attempts.append(event.close_code)
        return {"abort": True}

    async with LiveClient(small_server.url, sources=["mic"]):  # holds the only slot
        client = client_for(small_server)
        with pytest.raises(ConnectionClosed) as info:
            async with client.realtime.connect(
                extra_query={"intent": "transcription"}, on_reconnecting=on_reconnecting
            ) as conn:
                async for _event in conn:  # the SDK reconnects from its event iterator
                    pass
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        assert attempts == [1013]
    # The slot is free again.
    async with client_for(small_server).realtime.connect(extra_query={"intent": "transcription"}) as conn:
        assert typed(await conn.recv()).type == "session.created"
