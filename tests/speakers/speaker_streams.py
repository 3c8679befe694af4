"""Shared pieces of the speaker tests: our own VAD segmentation and real multi-speaker streams."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from echopanel.recognizer.segmenter import Closed, UtteranceSegmenter
from echopanel.recognizer.vad import WINDOW, SileroVoiceDetector
from echopanel.speakers.embedding import SpeakerEncoder
from echopanel.speakers.metrics import Segment
from echopanel.speakers.tracker import SpeakerTracker

SR = 16000
AUDIO = Path(__file__).resolve().parents[1] / "fixtures" / "audio"
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "speakers" / "reference_embeddings.npz"
LIBRIVOX = "librivox/sense_and_sensibility_01_austen_64kb-{}.wav"


def read(rel: str) -> np.ndarray:
    data, rate = sf.read(str(AUDIO / rel), dtype="float32")
    assert rate == SR and data.ndim == 1
    return np.ascontiguousarray(data)


def vad_utterances(audio: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Utterances as the recognizer cuts them (Silero VAD + our segmenter, default settings): (start, audio)."""
    detector = SileroVoiceDetector()
    segmenter = UtteranceSegmenter()
    n = len(audio) // WINDOW
    windows = audio[: n * WINDOW].reshape(n, WINDOW)
    out = []
    for window, prob in zip(windows, detector.probabilities(windows), strict=True):
        for ev in segmenter.feed(window, prob):
            if isinstance(ev, Closed):
                out.append((ev.utterance.audio_start, ev.utterance.audio()))
    last = segmenter.force_close("flush")
    if last is not None:
        out.append((last.audio_start, last.audio()))
    return out


def track(audio: np.ndarray, encoder: SpeakerEncoder) -> SpeakerTracker:
    tracker = SpeakerTracker(encoder)
    for start, utt in vad_utterances(audio):
        tracker.add_utterance(utt, start / SR)
    return tracker


@dataclass(frozen=True)
class Stream:
    audio: np.ndarray
    truth: list[Segment]  # (start s, end s, speaker), one per turn


def concatenate(turns: list[tuple[str, np.ndarray]], gap_s: float = 1.0) -> Stream:
    """Turns one after the other with ``gap_s`` of silence between them (and 0.5 s before the first)."""
    parts = [np.zeros(SR // 2, np.float32)]
    truth: list[Segment] = []
    t = len(parts[0])
    for speaker, audio in turns:
        parts.append(audio)
        truth.append((t / SR, (t + len(audio)) / SR, speaker))
        t += len(audio)
        parts.append(np.zeros(round(gap_s * SR), np.float32))
        t += len(parts[-1])
    return Stream(np.concatenate(parts), truth)


def phone_cut(start_s: float, end_s: float) -> np.ndarray:
    return read("phone/sample.wav")[round(start_s * SR) : round(end_s * SR)]


def four_speaker_stream() -> Stream:
    """LibriVox reader, cards speaker, and Diane and Sheila cut from the phone call where only one talks."""
    lib = {n: read(LIBRIVOX.format(n)) for n in ("0870", "0880", "0890", "0920")}
    cards = {n: read(f"cards/{n}.wav") for n in ("001", "002", "003", "005")}
    diane = [phone_cut(10.78, 14.18), phone_cut(18.60, 21.47), phone_cut(28.50, 29.99)]
    sheila = [phone_cut(14.70, 17.77), phone_cut(21.93, 24.00), phone_cut(24.06, 27.85)]
    return concatenate(
        [
            ("librivox", lib["0870"]),
            ("cards", cards["001"]),
            ("diane", diane[0]),
            ("sheila", sheila[0]),
            ("librivox", lib["0880"]),
            ("cards", cards["005"]),
            ("sheila", sheila[2]),
            ("diane", diane[1]),
            ("cards", cards["003"]),
            ("librivox", lib["0890"]),
            ("sheila", sheila[1]),
            ("diane", diane[2]),
            ("cards", cards["002"]),
            ("librivox", lib["0920"]),
        ]
    )
