"""Diarization error rate (DER), as NIST md-eval scores it, on a 10 ms grid.

DER = (missed speech + false alarm + speaker confusion) / total reference speech, where per frame with ``R``
reference speakers, ``H`` hypothesis speakers and ``C`` of them correct under the best one-to-one speaker mapping,
the error is ``max(R, H) - C`` (so overlapped speech counts once per speaker). Frames within ``collar`` seconds of
a reference segment boundary are not scored (0.25 s is the usual collar). On the speaker fixtures it agrees with
pyannote.metrics 4.2.0 (``DiarizationErrorRate(collar=2 * collar, skip_overlap=False)``) within 0.001.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echopanel.speakers.matching import max_weight_matching

Segment = tuple[float, float, str]  # start_s, end_s, speaker


@dataclass(frozen=True, slots=True)
class DerResult:
    der: float
    missed: float  # seconds
    false_alarm: float
    confusion: float
    total: float  # scored reference speech, seconds (overlap counted per speaker)
    mapping: dict[str, str]  # hypothesis speaker -> reference speaker


def read_rttm(path: str | Path) -> list[Segment]:
    """SPEAKER lines of an RTTM file as (start, end, speaker)."""
    out: list[Segment] = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            start, dur = float(f[3]), float(f[4])
            out.append((start, start + dur, f[7]))
    return out


def _grid(segments: Iterable[Segment], speakers: Sequence[str], frames: int, step: float) -> np.ndarray:
    act = np.zeros((len(speakers), frames), dtype=bool)
    index = {s: i for i, s in enumerate(speakers)}
    for start, end, spk in segments:
        a = max(0, round(start / step))
        b = min(frames, round(end / step))
        if b > a:
            act[index[spk], a:b] = True
    return act


def diarization_error_rate(
    reference: Sequence[Segment],
    hypothesis: Sequence[Segment],
    collar: float = 0.25,
    step: float = 0.01,
) -> DerResult:
    """DER of ``hypothesis`` against ``reference`` (see the module doc)."""
    end = max([e for _, e, _ in (*reference, *hypothesis)], default=0.0)
    frames = round(end / step) + 1
    ref_spk = sorted({s for _, _, s in reference})
    hyp_spk = sorted({s for _, _, s in hypothesis})
    ref = _grid(reference, ref_spk, frames, step)
    hyp = _grid(hypothesis, hyp_spk, frames, step)

    scored = np.ones(frames, dtype=bool)
    c = round(collar / step)
    if c > 0:
        for start, stop, _ in reference:
            for t in (round(start / step), round(stop / step)):
                scored[max(0, t - c) : min(frames, t + c)] = False
    ref = ref[:, scored]
    hyp = hyp[:, scored]

    overlap = (ref[:, None, :] & hyp[None, :, :]).sum(axis=2).astype(np.float64)  # (n_ref, n_hyp)
    pairs = max_weight_matching(overlap)
    mapping = {hyp_spk[h]: ref_spk[r] for r, h in pairs if overlap[r, h] > 0}
    correct = np.zeros(ref.shape[1], dtype=np.int64)
    for r, h in pairs:
        correct += ref[r] & hyp[h]
    n_ref = ref.sum(axis=0)
    n_hyp = hyp.sum(axis=0)
    missed = np.maximum(n_ref - n_hyp, 0).sum() * step
    false_alarm = np.maximum(n_hyp - n_ref, 0).sum() * step
    confusion = (np.minimum(n_ref, n_hyp) - correct).sum() * step
    total = n_ref.sum() * step
    der = (missed + false_alarm + confusion) / total if total > 0 else 0.0
    return DerResult(float(der), float(missed), float(false_alarm), float(confusion), float(total), mapping)


def merge_segments(segments: Sequence[Segment], gap: float = 0.0) -> list[Segment]:
    """Sort and join segments of the same speaker that touch or are at most ``gap`` apart."""
    out: list[Segment] = []
    for start, end, spk in sorted(segments):
        if out and out[-1][2] == spk and start <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], end), spk)
        else:
            out.append((start, end, spk))
    return out
