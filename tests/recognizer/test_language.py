"""The session's language travels with every decode the streaming recognizer asks for, partials and finals."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from streaming import run_stream

from echopanel.audio.wav import read_audio
from echopanel.config import RecognizerSettings
from echopanel.events import TextFinal
from echopanel.inference.jobs import Decoded, Decoder
from echopanel.inference.scheduler import InferenceScheduler
from echopanel.recognizer.stream import VadStreamingRecognizer
from echopanel.recognizer.types import StreamOptions
from echopanel.recognizer.vad import SileroVoiceDetector

from support import LIBRIVOX


class RecordingDecoder(Decoder):
    """A decoder for one language that records what each decode asked for (it answers every decode "hallo")."""

    name = "recording"

    def __init__(self) -> None:
        self.asked: list[tuple[bool, str]] = []  # (final, language)
        self._lock = threading.Lock()

    def decode(
        self,
        audio: np.ndarray,
        *,
        prefix: str,
        context: str,
        final: bool,
        beam_size: int | None = None,
        expect_more: bool = False,
        language: str = "en",
    ) -> Decoded:
        with self._lock:
            self.asked.append((final, language))
        return Decoded(" hallo", ())


async def test_every_decode_gets_the_stream_language() -> None:
    decoder = RecordingDecoder()
    audio = np.concatenate([read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"), np.zeros(16000)])
    # at real-time pace the decode loop asks for partials
    events = await run_stream(decoder, audio, StreamOptions(source="mic", language="de"))
    assert any(isinstance(e, TextFinal) for e in events)
    assert {final for final, _ in decoder.asked} == {False, True}  # partials and finals
    assert {language for _, language in decoder.asked} == {"de"}


async def test_a_language_set_mid_stream_applies_from_the_next_decode() -> None:
    decoder, scheduler = RecordingDecoder(), InferenceScheduler(1)
    scheduler.start()
    vad = ThreadPoolExecutor(1)
    stream = VadStreamingRecognizer(
        decoder=decoder,
        scheduler=scheduler,
        detector=SileroVoiceDetector(16000),
        vad_executor=vad,
        options=StreamOptions(source="mic", language="en"),
        settings=RecognizerSettings(),
    )
    audio = np.concatenate([read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"), np.zeros(16000)])

    async def collect() -> None:
        async for _ in stream.events():
            pass

    reader = asyncio.create_task(collect())
    try:
        for i in range(0, len(audio) // 2, 1600):
            await stream.push(audio[i : i + 1600].astype(np.float32))
            await asyncio.sleep(0.02)
        asked_before = len(decoder.asked)
        stream.set_language("de")
        for i in range(len(audio) // 2 // 1600 * 1600, len(audio), 1600):
            await stream.push(audio[i : i + 1600].astype(np.float32))
            await asyncio.sleep(0.02)
        await stream.flush()
        await stream.aclose()
        await reader
    finally:
        scheduler.stop()
        vad.shutdown()
    assert asked_before > 0 and {lang for _, lang in decoder.asked[:asked_before]} == {"en"}
    later = decoder.asked[asked_before + 1 :]  # one decode may have been running at the switch
    assert later and {lang for _, lang in later} == {"de"} and (True, "de") in later  # the final too
