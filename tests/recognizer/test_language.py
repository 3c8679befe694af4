"""The session's language travels with every decode the streaming recognizer asks for, partials and finals."""

from __future__ import annotations

import threading

import numpy as np
from streaming import run_stream

from echopanel.audio.wav import read_audio
from echopanel.events import TextFinal
from echopanel.inference.jobs import Decoded, Decoder
from echopanel.recognizer.types import StreamOptions

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
