"""The first text of an utterance: while partial decodes have heard no word yet, the next one comes after half the
partial interval of new audio, not a whole one (issue 12: first partial p50 0.72 -> 0.49-0.55 s, bench/latency)."""

from __future__ import annotations

import threading

import numpy as np
from streaming import run_stream

from echopanel.audio.wav import read_audio
from echopanel.config import RecognizerSettings
from echopanel.inference.jobs import Decoded, Decoder
from echopanel.recognizer.types import StreamOptions

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
    decoder, settings = SlowToHear(), RecognizerSettings()
    audio = np.concatenate([read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"), np.zeros(16000)])
    # 20 ms pieces, each given time to be decoded
    await run_stream(decoder, audio, StreamOptions(source="mic"), settings=settings, piece=320, pause_s=0.005)
    gaps_ms = [(b - a) // 16 for a, b in zip(decoder.partials, decoder.partials[1:], strict=False)]
    half, whole = settings.partial_interval_ms // 2, settings.partial_interval_ms
    assert len(gaps_ms) >= 4, gaps_ms
    assert all(half <= g < half + 100 for g in gaps_ms[:2]), gaps_ms  # nothing heard yet: half the interval
    assert all(whole <= g < whole + 100 for g in gaps_ms[2:]), gaps_ms  # words shown: the whole interval
