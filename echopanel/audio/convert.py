"""PCM16 <-> float32 and streaming resampling (soxr) to the engine's rate."""

from __future__ import annotations

import numpy as np
import soxr

SUPPORTED_RATES = (16000, 24000, 48000)


def pcm16_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class StreamResampler:
    """Resamples one continuous stream chunk by chunk (keeps filter state across chunks)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def process(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return audio
        return self._stream.resample_chunk(audio, last=last)


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    if in_rate == out_rate:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, in_rate, out_rate).astype(np.float32, copy=False)
