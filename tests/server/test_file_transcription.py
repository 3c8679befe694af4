"""``POST /v1/audio/transcriptions`` through the official ``openai`` SDK, on real speech in several containers,
against a real server; ``GET /v1/models``; the size bound."""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import openai
import pytest
import soundfile
import soxr
import srt
import webvtt
from openai import AsyncOpenAI

from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient
from echopanel.client.stream import transcribe

from support import LIBRIVOX, ServerProcess, librivox_refs, run_server, wer

CLIPS = [
    "sense_and_sensibility_01_austen_64kb-0870",
    "sense_and_sensibility_01_austen_64kb-0880",
    "sense_and_sensibility_01_austen_64kb-0930",
]
RATE = 16000
LIMIT_MB = 1.0
# container, codec, PyAV format name, encoder rate
ENCODINGS = {
    "mp3": ("libmp3lame", "mp3", 16000),
    "webm": ("libopus", "webm", 48000),
    "ogg": ("libopus", "ogg", 48000),
    "flac": ("flac", "flac", 16000),
    "m4a": ("aac", "ipod", 16000),
}


def speech() -> np.ndarray:
    gap = np.zeros(RATE // 2, np.float32)
    parts = [np.concatenate([read_audio(LIBRIVOX / f"{n}.wav", RATE), gap]) for n in CLIPS]
    return np.concatenate([gap, *parts])


def reference() -> str:
    refs = librivox_refs()
    return " ".join(refs[n] for n in CLIPS)


def encode(audio: np.ndarray, path: Path, codec: str, fmt: str, rate: int) -> Path:
    data = soxr.resample(audio, RATE, rate).astype(np.float32) if rate != RATE else audio
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")  # type: ignore[call-overload]
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("files")
    audio = speech()
    wav = tmp / "speech.wav"
    soundfile.write(wav, audio, RATE, subtype="PCM_16")
    out = {"wav": wav}
    for ext, (codec, fmt, rate) in ENCODINGS.items():
        out[ext] = encode(audio, tmp / f"speech.{ext}", codec, fmt, rate)
    return out


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("filesrv"), env={"ECHOPANEL_MAX_UPLOAD_MB": str(LIMIT_MB)}) as srv:
        yield srv


def client_for(server: ServerProcess) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{server.http}/v1", api_key="anything", max_retries=0, timeout=120)


@pytest.mark.parametrize("ext", ["wav", "mp3", "webm", "ogg", "flac", "m4a"])
async def test_real_speech_in_each_container(bounded_server: ServerProcess, files: dict[str, Path], ext: str) -> None:
    with files[ext].open("rb") as f:
        got = await client_for(bounded_server).audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(reference(), got.text) <= 0.10, (ext, got.text)


async def test_every_response_format(bounded_server: ServerProcess, files: dict[str, Path]) -> None:
    client = client_for(bounded_server)
    ref = reference()
    wav = files["wav"].read_bytes()

    async def create(**kw: object) -> object:
        return await client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav), **kw)  # type: ignore[call-overload]

    text = await create(response_format="text")
    assert isinstance(text, str) and wer(ref, text) <= 0.10
    subs = list(srt.parse(str(await create(response_format="srt"))))
    assert len(subs) >= len(CLIPS) and wer(ref, " ".join(s.content for s in subs)) <= 0.10
    assert all(a.end <= b.start for a, b in itertools.pairwise(subs))
    cues = webvtt.from_string(str(await create(response_format="vtt")))
    assert wer(ref, " ".join(c.text for c in cues)) <= 0.10
    verbose = await create(response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and verbose.duration == pytest.approx(len(speech()) / RATE, abs=0.05)  # type: ignore[attr-defined]
    assert verbose.segments and verbose.words  # type: ignore[attr-defined]
    assert all(s.start < s.end and s.avg_logprob <= 0 for s in verbose.segments)  # type: ignore[attr-defined]
    assert wer(ref, " ".join(w.word for w in verbose.words)) <= 0.10  # type: ignore[attr-defined]
    only_words = await create(response_format="verbose_json", timestamp_granularities=["word"])
    assert only_words.words and not only_words.segments  # type: ignore[attr-defined]
    json_ = await create(response_format="json")
    assert wer(ref, json_.text) <= 0.10  # type: ignore[attr-defined]

    streamed = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("speech.wav", wav), stream=True
    )
    deltas, done = [], None
    async for ev in streamed:
        if ev.type == "transcript.text.delta":
            deltas.append(ev.delta)
        elif ev.type == "transcript.text.done":
            done = ev.text
    assert done is not None and "".join(deltas) == done and wer(ref, done) <= 0.10


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


async def test_word_times_agree_with_the_native_protocol(bounded_server: ServerProcess, files: dict[str, Path]) -> None:
    with files["wav"].open("rb") as f:
        got = await client_for(bounded_server).audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    file_words = [(_norm(w.word), w.start * 1000) for w in got.words or []]
    async with LiveClient(bounded_server.url, sources=["mic"]) as live:
        view = await transcribe(live, {"mic": float_to_pcm16(speech())}, realtime=False)
    live_words = [(_norm(w["word"]), float(w["start_ms"])) for i in view.finals() for w in i.words]
    matcher = difflib.SequenceMatcher(a=[w for w, _ in file_words], b=[w for w, _ in live_words], autojunk=False)
    pairs = [
        (file_words[m.a + k][1], live_words[m.b + k][1]) for m in matcher.get_matching_blocks() for k in range(m.size)
    ]
    assert len(pairs) >= 0.9 * len(live_words), (len(pairs), len(live_words))
    off = sorted(abs(a - b) for a, b in pairs)
    assert off[int(0.95 * (len(off) - 1))] <= 150, off[-10:]  # 95 % of the words within 150 ms


async def test_models_and_bounds(bounded_server: ServerProcess, files: dict[str, Path], tmp_path: Path) -> None:
    client = client_for(bounded_server)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["whisper-tiny.en"]
    big = tmp_path / "big.wav"
    soundfile.write(big, np.tile(speech(), 3), RATE, subtype="PCM_16")  # > 1 MB
    assert big.stat().st_size > LIMIT_MB * 1024 * 1024
    with pytest.raises(openai.APIStatusError) as info, big.open("rb") as f:
        await client.audio.transcriptions.create(model="whisper-1", file=f)
    assert info.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.transcriptions.create(model="whisper-1", file=("noise.mp3", b"not audio at all" * 100))
    assert bad.value.status_code == 400 and "decodable" in str(bad.value)
    with pytest.raises(openai.BadRequestError):
        await client.audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", files["wav"].read_bytes()), language="tlh"
        )
    # the server lives on after all of it
    with files["mp3"].open("rb") as f:
        assert wer(reference(), (await client.audio.transcriptions.create(model="whisper-1", file=f)).text) <= 0.10
