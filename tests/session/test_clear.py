"""``input_audio_buffer.clear`` drops queued audio, and the recognizer's clock moves over it: item times after a
clear are those of the recording (real Session, real Whisper engine and streaming recognizer, real speech)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.config import Settings
from echopanel.engines.whisper import WhisperEngine
from echopanel.events import SourceEvent, TextFinal
from echopanel.session.finalize import finalize
from echopanel.session.outbox import Barrier
from echopanel.session.session import Session

from support import LIBRIVOX

RATE = 16000
CHUNK = RATE // 10  # 100 ms


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    eng = WhisperEngine(workers=2, cpu_threads=1)
    eng.warmup()
    yield eng
    eng.close()


def speech(stem: str) -> bytes:
    audio = read_audio(LIBRIVOX / f"{stem}.wav", RATE)
    return float_to_pcm16(np.concatenate([np.zeros(RATE // 2, np.float32), audio, np.zeros(RATE, np.float32)]))


async def finals_of(session: Session) -> list[TextFinal]:
    """Finalize and collect the live finals (the outbox read like a client would)."""
    out: list[TextFinal] = []

    async def read() -> None:
        while True:
            item = await session.outbox.get()
            if isinstance(item, Barrier):
                item.done.set_result(None)
            elif isinstance(item, SourceEvent) and isinstance(item.event, TextFinal) and item.event.text:
                out.append(item.event)

    reader = asyncio.create_task(read())
    try:
        await finalize(session, "completed")
    finally:
        reader.cancel()
    return out


def new_session(engine: WhisperEngine, tmp: Path) -> Session:
    settings = Settings(data_dir=tmp, speakers=False, mic_queue_ms=30_000)  # the whole sentence fits
    session = Session(engine=engine, settings=settings, sources=["mic"], sample_rate=RATE)
    session.start()
    return session


async def test_item_times_after_a_clear_match_the_recording(engine: WhisperEngine, tmp_path: Path) -> None:
    cleared = speech("sense_and_sensibility_01_austen_64kb-0870")  # queued, then cleared before it is heard
    kept = speech("sense_and_sensibility_01_austen_64kb-0880")

    # The same sentence alone: where its item lies in its own clock.
    alone = new_session(engine, tmp_path / "alone")
    try:
        for i in range(0, len(kept), 2 * CHUNK):
            await alone.append("mic", kept[i : i + 2 * CHUNK])
        (reference,) = await finals_of(alone)
    finally:
        await alone.aclose()

    session = new_session(engine, tmp_path / "cleared")
    try:
        # Appending without yielding keeps every chunk in the source's queue (the feeder has not run yet), as when
        # the recognizer lags behind a client; then the client clears.
        for i in range(0, len(cleared), 2 * CHUNK):
            await session.append("mic", cleared[i : i + 2 * CHUNK])
        state = session.sources["mic"]
        assert state.queue.queued_samples == len(cleared) // 2  # all of it still queued
        await session.clear("mic")
        assert state.queue.queued_samples == 0
        offset_ms = len(cleared) // 2 * 1000 // RATE  # where the kept sentence starts in the recording
        for i in range(0, len(kept), 2 * CHUNK):
            await session.append("mic", kept[i : i + 2 * CHUNK])
        finals = await finals_of(session)
        assert state.recording.samples * 2 == len(cleared) + len(kept)  # the recording keeps the cleared audio
    finally:
        await session.aclose()
    assert [f.text for f in finals] == [reference.text]  # the cleared sentence was never transcribed
    (final,) = finals
    # On the recording's clock: shifted by exactly the cleared audio (within a resampler window), not earlier.
    assert abs(final.start_ms - (reference.start_ms + offset_ms)) <= 40, (final.start_ms, reference.start_ms, offset_ms)
    assert abs(final.end_ms - (reference.end_ms + offset_ms)) <= 40
    for word, ref in zip(final.words, reference.words, strict=True):
        assert abs(word.start_ms - (ref.start_ms + offset_ms)) <= 40
