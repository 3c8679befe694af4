"""Run a ``VadStreamingRecognizer`` over a decoder of the test's own, real VAD and real speech."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from echopanel.config import RecognizerSettings
from echopanel.inference.jobs import Decoder
from echopanel.inference.scheduler import InferenceScheduler
from echopanel.recognizer.stream import VadStreamingRecognizer
from echopanel.recognizer.types import StreamOptions
from echopanel.recognizer.vad import SileroVoiceDetector


async def run_stream(
    decoder: Decoder,
    audio: np.ndarray,
    options: StreamOptions,
    *,
    settings: RecognizerSettings | None = None,
    piece: int = 1600,
    pause_s: float = 0.02,
) -> list[object]:
    """Push ``audio`` in ``piece``-sample pieces with ``pause_s`` between them (time for the decode loop to ask for
    partials), flush, close; the stream's events."""
    scheduler = InferenceScheduler(1)
    scheduler.start()
    vad = ThreadPoolExecutor(1)
    stream = VadStreamingRecognizer(
        decoder=decoder, scheduler=scheduler, detector=SileroVoiceDetector(16000), vad_executor=vad,
        options=options, settings=settings or RecognizerSettings(),
    )  # fmt: skip
    events: list[object] = []

    async def collect() -> None:
        async for ev in stream.events():
            events.append(ev)

    reader = asyncio.create_task(collect())
    try:
        for i in range(0, len(audio), piece):
            await stream.push(audio[i : i + piece].astype(np.float32))
            await asyncio.sleep(pause_s)
        await stream.flush()
        await stream.aclose()
        await reader
    finally:
        scheduler.stop()
        vad.shutdown()
    return events
