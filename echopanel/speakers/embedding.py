"""Speaker embeddings: resemblyzer's GE2E d-vector encoder, run in numpy (no torch).

The weights are resemblyzer's (``resemblyzer/pretrained.pt`` of the PyPI package ``resemblyzer==0.1.4``,
Apache-2.0), shipped inside this package as ``echopanel/speakers/data/ge2e.npz`` (float32, the same values; made once
by ``scripts/convert_speaker_weights.py``; licence and notice beside it): a plain install has them. The network:
3-layer LSTM 40->256, the last layer's final hidden state through Linear 256->256 and ReLU, L2-normalised. Input:
40-band slaney mel power frames (not log) of 16 kHz audio, 25 ms Hann window, 10 ms step, as librosa computes them
(same filters as faster-whisper's).

``SpeakerEncoder.embed`` follows resemblyzer's ``embed_utterance``: raise the volume to -30 dBFS if quieter, cut the
utterance into 1.6 s partial windows at 1.3 per second, embed each and L2-normalise their mean. It skips
resemblyzer's webrtcvad silence trimming: our utterances come already voice-segmented. On 16 real utterances the
result matches the original (PyTorch + librosa) with cosine >= 0.99999 (tests/speakers/test_embedding.py).

Cost on one core here: 20 ms for up to 1.6 s of audio (one window), ~50 ms for 3 s (three windows), ~13 ms per
second for long audio or for many 1 s pieces in one ``embed_batch``. The recurrent matrix products dominate; they
run one sequence at a time (gemv) for small batches because OpenBLAS repacks the matrix on every small gemm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from faster_whisper.feature_extractor import FeatureExtractor

from echopanel.speakers.blas import single_thread_blas
from echopanel.speakers.weights import encoder_arrays_of_checkpoint, load_encoder_arrays

F32 = npt.NDArray[np.float32]

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial window
PARTIAL_RATE = 1.3  # partial windows per second of audio
MIN_COVERAGE = 0.75  # a last partial window needs this share of real audio, else it is dropped
TARGET_DBFS = -30.0
EMBEDDING_SIZE = 256
_INT16_MAX = 2**15 - 1
_MAX_ROWWISE = 4  # batch size up to which the recurrent product is done one sequence at a time

_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann
_MEL_FILTERS = FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels=N_MELS).astype(np.float32)  # (40, 201)


WEIGHTS = Path(__file__).resolve().parent / "data" / "ge2e.npz"  # package data (pyproject.toml)


def default_weights_path() -> Path:
    """The packaged encoder weights, ``echopanel/speakers/data/ge2e.npz``; FileNotFoundError if the install lacks it."""
    if not WEIGHTS.is_file():
        raise FileNotFoundError(
            f"the speaker encoder weights are missing from this install of echopanel ({WEIGHTS}): reinstall it"
        )
    return WEIGHTS


def normalize_volume(audio: F32, target_dbfs: float = TARGET_DBFS) -> F32:
    """Raise the level to ``target_dbfs`` if it is below (never lowers it), as resemblyzer's preprocessing does."""
    rms = float(np.sqrt(np.mean(np.square(audio * _INT16_MAX, dtype=np.float64)))) if len(audio) else 0.0
    if rms <= 0.0:
        return audio
    change_db = target_dbfs - 20.0 * np.log10(rms / _INT16_MAX)
    if change_db <= 0:
        return audio
    return (audio * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)


def mel_frames(audio: F32) -> F32:
    """Mel power spectrogram, (n_frames, 40) float32, n_frames = 1 + len // 160 (centred frames, zero padded)."""
    x = np.ascontiguousarray(audio, dtype=np.float32)
    spec = FeatureExtractor.stft(x, N_FFT, HOP, window=_WINDOW, center=True, mode="constant", return_complex=True)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)  # (201, n_frames)
    with single_thread_blas():
        return np.ascontiguousarray((_MEL_FILTERS @ power).T)


def partial_starts(n_samples: int, rate: float = PARTIAL_RATE, min_coverage: float = MIN_COVERAGE) -> list[int]:
    """First mel frame of each partial window, as resemblyzer's ``compute_partial_slices`` (at least one)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / rate) / HOP))
    if not 0 < step <= PARTIAL_FRAMES:
        raise ValueError(f"partial rate {rate} out of range")
    starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step))
    last = starts[-1] * HOP
    coverage = (n_samples - last) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


@dataclass(frozen=True, slots=True)
class _LstmLayer:
    w_ih: F32  # (in, 4H), gate columns reordered to i, f, o, g; sigmoid gates pre-scaled by 1/2
    w_hh: F32  # (H, 4H), same
    w_hh_t: F32  # (4H, H), its transpose (contiguous), for gemv
    bias: F32  # (4H,), b_ih + b_hh, same


class SpeakerEncoder:
    """The d-vector network in numpy. Stateless after loading, so one instance may serve many threads."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        hidden = EMBEDDING_SIZE
        # torch gate order is i, f, g, o; put the three sigmoid gates first so one slice covers them, and fold the
        # 1/2 of sigmoid(x) = (1 + tanh(x/2)) / 2 into their weights so a step needs one tanh over all gates.
        order = np.concatenate(
            [np.arange(0, 2 * hidden), np.arange(3 * hidden, 4 * hidden), np.arange(2 * hidden, 3 * hidden)]
        )
        scale = np.ones(4 * hidden, np.float32)
        scale[: 3 * hidden] = 0.5
        layers = []
        for n in range(3):
            w_ih = state[f"lstm.weight_ih_l{n}"][order] * scale[:, None]
            w_hh = state[f"lstm.weight_hh_l{n}"][order] * scale[:, None]
            bias = (state[f"lstm.bias_ih_l{n}"] + state[f"lstm.bias_hh_l{n}"])[order] * scale
            layers.append(
                _LstmLayer(
                    np.ascontiguousarray(w_ih.T, np.float32),
                    np.ascontiguousarray(w_hh.T, np.float32),
                    np.ascontiguousarray(w_hh, np.float32),
                    bias.astype(np.float32),
                )
            )
        if layers[0].w_ih.shape != (N_MELS, 4 * hidden):
            raise ValueError(f"unexpected LSTM input weights {layers[0].w_ih.shape}")
        self._layers = tuple(layers)
        self._linear_w = np.ascontiguousarray(state["linear.weight"].T, np.float32)  # (256, 256)
        self._linear_b = state["linear.bias"].astype(np.float32)

    @classmethod
    def load(cls, path: str | Path | None = None) -> SpeakerEncoder:
        """Load the packaged weights (or ``path``: a ``.npz`` like them, or resemblyzer's original ``.pt``); ~20 ms."""
        path = Path(path) if path is not None else default_weights_path()
        if path.suffix == ".pt":
            return cls(encoder_arrays_of_checkpoint(path))
        return cls(load_encoder_arrays(path))

    def forward(self, mels: F32) -> F32:
        """Embeddings (batch, 256), L2-normalised, of a batch of mel windows (batch, frames, 40)."""
        x = np.ascontiguousarray(np.transpose(mels, (1, 0, 2)), dtype=np.float32)  # time-major (T, B, 40)
        h = np.zeros((x.shape[1], EMBEDDING_SIZE), np.float32)
        with single_thread_blas():
            for n, layer in enumerate(self._layers):
                x, h = _run_lstm(x, layer, keep_outputs=n < len(self._layers) - 1)
            raw = np.maximum(h @ self._linear_w + self._linear_b, 0.0)
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        return (raw / np.maximum(norm, 1e-12)).astype(np.float32)

    def embed(self, audio: F32) -> F32:
        """The (256,) embedding of one utterance: float32 mono 16 kHz audio, already cut to the speech."""
        return self.embed_batch([audio])[0]

    def embed_batch(self, clips: Sequence[F32]) -> F32:
        """Embeddings (n, 256) of several utterances, with one pass through the network for all their windows."""
        with single_thread_blas():
            return self._embed_batch(clips)

    def _embed_batch(self, clips: Sequence[F32]) -> F32:
        windows: list[F32] = []
        owner: list[int] = []
        for i, clip in enumerate(clips):
            wav = normalize_volume(np.asarray(clip, dtype=np.float32))
            starts = partial_starts(len(wav))
            padded = (starts[-1] + PARTIAL_FRAMES) * HOP
            if padded >= len(wav):
                wav = np.pad(wav, (0, padded - len(wav)))
            mel = mel_frames(wav)
            windows.extend(mel[s : s + PARTIAL_FRAMES] for s in starts)
            owner.extend([i] * len(starts))
        if not windows:
            return np.zeros((0, EMBEDDING_SIZE), np.float32)
        partial = self.forward(np.stack(windows))
        sums = np.zeros((len(clips), EMBEDDING_SIZE), np.float32)
        np.add.at(sums, np.asarray(owner), partial)
        norms = np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return (sums / norms).astype(np.float32)


def _run_lstm(x: F32, layer: _LstmLayer, keep_outputs: bool) -> tuple[F32, F32]:
    """One LSTM layer over time-major input (T, B, in): its outputs (T, B, H) (if kept) and final hidden (B, H)."""
    steps, batch, _ = x.shape
    hidden = layer.w_hh.shape[0]
    proj = (x.reshape(steps * batch, -1) @ layer.w_ih + layer.bias).reshape(steps, batch, 4 * hidden)
    outputs = np.empty((steps, batch, hidden), np.float32) if keep_outputs else np.empty((0,), np.float32)
    h = np.zeros((batch, hidden), np.float32)
    c = np.zeros((batch, hidden), np.float32)
    gates = np.empty((batch, 4 * hidden), np.float32)
    tmp = np.empty((batch, hidden), np.float32)
    sig = slice(0, 3 * hidden)
    i_g, f_g, o_g, g_g = (slice(k * hidden, (k + 1) * hidden) for k in range(4))
    # OpenBLAS repacks the 1 MB recurrent matrix on every small gemm (~70 us here), while a gemv costs ~20 us: so
    # one gemv per sequence for small batches, one gemm for large ones.
    rowwise = batch <= _MAX_ROWWISE
    w_hh_t = layer.w_hh_t
    for t in range(steps):
        if rowwise:
            for b in range(batch):
                np.dot(w_hh_t, h[b], out=gates[b])
        else:
            np.matmul(h, layer.w_hh, out=gates)
        gates += proj[t]
        np.tanh(gates, out=gates)
        s = gates[:, sig]
        s *= 0.5
        s += 0.5
        c *= gates[:, f_g]
        np.multiply(gates[:, i_g], gates[:, g_g], out=tmp)
        c += tmp
        np.tanh(c, out=tmp)
        h = np.multiply(gates[:, o_g], tmp, out=outputs[t] if keep_outputs else h)
    return outputs, h
