"""Read any WAV (any rate, channels, sample format) as 16 kHz-or-chosen-rate mono PCM16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from echopanel.audio.convert import float_to_pcm16, resample


def read_audio(path: str | Path, rate: int = 16000) -> np.ndarray:
    """Float32 mono at ``rate``: channels are averaged, the rate converted with soxr."""
    data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(np.ascontiguousarray(mono), int(file_rate), rate)


def read_pcm16(path: str | Path, rate: int = 16000) -> bytes:
    return float_to_pcm16(read_audio(path, rate))
