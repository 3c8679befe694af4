"""The pocketsphinx fallback engine: real decoders in worker processes, on real speech; deaths and hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import psutil
import pytest

from echopanel.audio.wav import read_audio
from echopanel.engines.base import StreamOptions
from echopanel.engines.sphinx import PocketsphinxEngine, SphinxPool
from echopanel.events import TextDelta, TextFinal
from echopanel.inference.jobs import DecodeRequest, WorkerDied
from echopanel.inference.scheduler import DecodeTimeout

from support import LIBRIVOX, librivox_refs, wer

NAME = "sense_and_sensibility_01_austen_64kb-0870"


@pytest.fixture(scope="module")
def pool() -> Iterator[SphinxPool]:
    p = SphinxPool(1, timeout_s=5.0)
    p.start()
    yield p
    p.close()


def speech() -> np.ndarray:
    return read_audio(LIBRIVOX / f"{NAME}.wav", 16000)


async def test_decodes_real_speech_with_word_times(pool: SphinxPool) -> None:
    audio = speech()
    result = await pool.submit(DecodeRequest(audio, final=True, key="a:1"))
    decoded = result.value
    assert decoded.engine == "pocketsphinx"
    # pocketsphinx is the weak fallback: WER 25-85 % on our fixtures (Whisper: ~5 %); it must still be speech.
    assert wer(librivox_refs()[NAME], decoded.text) <= 0.6, decoded.text
    assert decoded.words and decoded.text == "".join(w.text for w in decoded.words)
    assert all(0 <= w.start_ms < w.end_ms <= len(audio) / 16 + 20 for w in decoded.words)
    assert all(0.0 <= w.confidence <= 1.0 for w in decoded.words)


async def test_partials_are_incremental(pool: SphinxPool) -> None:
    audio = speech()
    restarted = pool.restarted_utterances
    texts = []
    for end in range(8000, len(audio), 8000):  # a partial every 0.5 s of the same item
        texts.append((await pool.submit(DecodeRequest(audio[:end], final=False, key="b:1"))).value.text)
    final = (await pool.submit(DecodeRequest(audio, final=True, key="b:1"))).value
    # Each request only sent the audio since the previous one: the process kept the utterance open.
    assert pool.restarted_utterances == restarted
    assert len([t for t in texts if t.strip()]) >= len(texts) - 2
    assert len(texts[-1].split()) >= 10 and final.words


async def test_a_dead_worker_fails_its_decode_and_is_replaced(pool: SphinxPool) -> None:
    old = pool.pids()
    restarts = pool.restarts
    with pytest.raises(WorkerDied):
        await pool.submit(DecodeRequest(speech()[:16000], final=True, key="c:1", fault="die"))
    assert pool.restarts == restarts + 1 and pool.pids() != old
    assert not psutil.pid_exists(old[0]) or psutil.Process(old[0]).status() == psutil.STATUS_ZOMBIE
    result = await pool.submit(DecodeRequest(speech(), final=True, key="c:2"))
    assert wer(librivox_refs()[NAME], result.value.text) <= 0.6


async def test_a_hung_decode_is_abandoned_and_its_process_killed(pool: SphinxPool) -> None:
    pool.timeout_s = 1.0
    try:
        old = pool.pids()
        with pytest.raises(DecodeTimeout):
            await asyncio.wait_for(pool.submit(DecodeRequest(speech()[:16000], final=True, fault="hang")), 10)
        assert pool.pids() != old and not psutil.pid_exists(old[0])
    finally:
        pool.timeout_s = 5.0
    result = await pool.submit(DecodeRequest(speech(), final=True, key="d:1"))
    assert result.value.words


def test_memory_per_worker_is_about_110_mb(pool: SphinxPool) -> None:
    rss = [psutil.Process(pid).memory_info().rss for pid in pool.pids()]
    assert rss and all(60e6 < r < 200e6 for r in rss), rss


async def test_engine_streams_partials_then_a_final_with_the_delta_contract() -> None:
    engine = PocketsphinxEngine(workers=1)
    engine.warmup()
    try:
        stream = engine.open_stream(StreamOptions(source="mic"))
        events: list[object] = []

        async def collect() -> None:
            async for ev in stream.events():
                events.append(ev)

        reader = asyncio.create_task(collect())
        audio = np.concatenate([speech(), np.zeros(16000, np.float32)])
        for i in range(0, len(audio), 1600):  # 100 ms pushes, as fast as accepted
            await stream.push(audio[i : i + 1600])
            await asyncio.sleep(0.01)
        await stream.flush()
        await stream.aclose()
        await reader
    finally:
        engine.close()
    finals = [e for e in events if isinstance(e, TextFinal)]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert finals and all(f.engine == "pocketsphinx" for f in finals)
    assert any(d.tentative or d.delta for d in deltas if d.item == finals[0].item)  # partial text before the final
    for f in finals:
        assert "".join(d.delta for d in deltas if d.item == f.item) == f.text
    assert wer(librivox_refs()[NAME], " ".join(f.text for f in finals)) <= 0.6
