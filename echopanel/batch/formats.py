"""A file's finals in the response formats of OpenAI's ``/v1/audio/transcriptions``: json, text, srt, vtt and
verbose_json (segments; words with ``timestamp_granularities[]=word``).

One segment per utterance (at most 15 s, the live cap). Whisper's per-segment figures are filled from what the
engine gives: ``avg_logprob`` is the mean ln(word confidence), ``compression_ratio`` that of the segment's text
(zlib, as Whisper computes it); ``tokens`` is empty and ``no_speech_prob`` 0 (the engine does not expose them;
segments are voiced by construction, the VAD cut them).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

from echopanel.events import TextFinal

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
LANGUAGE_NAMES = {"en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian"}


def full_text(finals: Sequence[TextFinal]) -> str:
    return " ".join(f.text.strip() for f in finals if f.text.strip())


def usage(duration_s: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(duration_s)}


def _clock(ms: int, sep: str) -> str:
    h, rest = divmod(max(0, ms), 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms_ = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms_:03d}"


def srt(finals: Sequence[TextFinal]) -> str:
    blocks = [
        f"{n}\n{_clock(f.start_ms, ',')} --> {_clock(f.end_ms, ',')}\n{f.text.strip()}\n"
        for n, f in enumerate(finals, 1)
    ]
    return "\n".join(blocks)


def vtt(finals: Sequence[TextFinal]) -> str:
    cues = [f"{_clock(f.start_ms, '.')} --> {_clock(f.end_ms, '.')}\n{f.text.strip()}\n" for f in finals]
    return "WEBVTT\n\n" + "\n".join(cues)


def _compression_ratio(text: str) -> float:
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 3) if data else 0.0


def _avg_logprob(final: TextFinal) -> float:
    if not final.words:
        return 0.0
    return round(sum(math.log(max(w.confidence, 1e-6)) for w in final.words) / len(final.words), 4)


def verbose(
    finals: Sequence[TextFinal], duration_s: float, language: str, *, segments: bool, words: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get(language, language),
        "duration": round(duration_s, 3),
        "text": full_text(finals),
        "usage": usage(duration_s),
    }
    if segments:
        out["segments"] = [
            {
                "id": n,
                "seek": 0,
                "start": f.start_ms / 1000,
                "end": f.end_ms / 1000,
                "text": " " + f.text.strip(),
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": _avg_logprob(f),
                "compression_ratio": _compression_ratio(f.text),
                "no_speech_prob": 0.0,
            }
            for n, f in enumerate(finals)
        ]
    if words:
        out["words"] = [
            {"word": w.text.strip(), "start": w.start_ms / 1000, "end": w.end_ms / 1000}
            for f in finals
            for w in f.words
            if w.text.strip()
        ]
    return out
