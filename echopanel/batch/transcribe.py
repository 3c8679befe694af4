"""A decoded file -> its utterances' finals, through the engine's ordinary streaming interface.

The audio goes into one finals-only stream (``partials=False``) a second at a time; the stream's own bound on
closed utterances awaiting their decode (``max_pending_finals``) makes the feeder wait, so a long file holds at most
a few utterances in flight besides its decoded audio. The stream's decodes are background jobs: they run after
every live decode, on one worker at a time, and stay out of the load figures the degrade ladder reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from echopanel.engines.base import SpeechEngine, StreamOptions
from echopanel.events import ItemFailed, TextFinal

SOURCE = "file"
BACKGROUND_PRIORITY = 9  # below every live source, so no slot reserved for the microphone takes it
TAIL_S = 0.5  # silence after the end, so the last utterance closes on silence
CHUNK_S = 1.0


class TranscriptionFailed(RuntimeError):
    """An utterance of the file could not be decoded (every engine failing)."""


@dataclass(frozen=True)
class FileRequest:
    language: str = "en"
    prompt: str = ""


async def finals(engine: SpeechEngine, audio: np.ndarray, request: FileRequest) -> AsyncIterator[TextFinal]:
    """The file's finals in order, as they are decoded. Raises ``TranscriptionFailed`` at the first failed item."""
    rate = engine.capabilities.sample_rate
    stream = engine.open_stream(
        StreamOptions(
            source=SOURCE,
            priority=BACKGROUND_PRIORITY,
            language=request.language,
            prompt=request.prompt,
            partials=False,
            background=True,
        )
    )
    padded = np.concatenate([audio, np.zeros(int(rate * TAIL_S), np.float32)])
    step = int(rate * CHUNK_S)

    async def feed() -> None:
        for i in range(0, len(padded), step):
            await stream.push(padded[i : i + step])
        await stream.flush()
        await stream.aclose()  # every final is out: this ends the event iteration below

    feeder = asyncio.create_task(feed())
    try:
        async for ev in stream.events():
            if isinstance(ev, ItemFailed):
                raise TranscriptionFailed(ev.message)
            if isinstance(ev, TextFinal) and ev.text.strip():
                yield ev
        await feeder
    finally:
        if not feeder.done():
            feeder.cancel()
        await stream.aclose()
        await asyncio.gather(feeder, return_exceptions=True)


async def transcribe(engine: SpeechEngine, audio: np.ndarray, request: FileRequest) -> list[TextFinal]:
    return [ev async for ev in finals(engine, audio, request)]
