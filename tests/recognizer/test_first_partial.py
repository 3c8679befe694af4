"""The first text of an utterance: while partial decodes have heard no word yet, the next one comes after half the
partial interval of new audio, not a whole one (issue 12: first partial p50 0.72 -> 0.49-0.55 s, bench/latency)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from echopanel.audio.wav import read_audio
from echopanel.config import RecognizerSettings
from echopanel.inference.jobs import Decoded, Decoder
from echopanel.inference.scheduler import InferenceScheduler
from echopanel.recognizer.stream import VadStreamingRecognizer
from echopanel.recognizer.types import StreamOptions
from echopanel.recognizer.vad import SileroVoiceDetector

from support import LIBRIVOX


class SlowToHear(Decoder):
    """Hears nothing in its first two partial decodes, then words; records the audio length of each partial."""

    name = "slow-to-hear"

    def __init__(self) -> None:
        self.partials: list[int] = []
        self._lock = threading.Lock()

    def decode(self, audio: np.ndarray, *, prefix: str, context: str, final: bool, **_: object) -> Decoded:
        with self._lock:
            if final:
                return Decoded(" he was not an old man", ())
            self.partials.append(len(audio))
            words = ["he", "was", "not", "an", "old", "man"][: max(0, len(self.partials) - 2)]
            return Decoded("".join(f" {w}" for w in words), ())


async def test_the_next_partial_comes_sooner_while_none_has_heard_a_word() -> None:
    decoder, scheduler = SlowToHear(), InferenceScheduler(1)
    scheduler.start()
    vad = ThreadPoolExecutor(1)
    settings = RecognizerSettings()
    stream = VadStreamingRecognizer(
        decoder=decoder, scheduler=scheduler, detector=SileroVoiceDetector(16000), vad_executor=vad,
        options=StreamOptions(source="mic"), settings=settings,
    )  # fmt: skip

    async def drain() -> None:
        async for _ in stream.events():
            pass

    reader = asyncio.create_task(drain())
    audio = np.concatenate([read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"), np.zeros(16000)])
    try:
        for i in range(0, len(audio), 320):  # 20 ms pieces, each given time to be decoded
            await stream.push(audio[i : i + 320].astype(np.float32))
            await asyncio.sleep(0.005)
        await stream.flush()
        await stream.aclose()
        await reader
    finally:
        scheduler.stop()
        vad.shutdown()
    gaps_ms = [(b - a) // 16 for a, b in zip(decoder.partials, decoder.partials[1:], strict=False)]
    half, whole = settings.partial_interval_ms // 2, settings.partial_interval_ms
    assert len(gaps_ms) >= 4, gaps_ms
    assert all(half <= g < half + 100 for g in gaps_ms[:2]), gaps_ms  # nothing heard yet: half the interval
    assert all(whole <= g < whole + 100 for g in gaps_ms[2:]), gaps_ms  # words shown: the whole interval
