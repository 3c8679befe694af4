"""Word error rate with one text normalization, shared by the tests and the benchmarks."""

from __future__ import annotations

import re


def normalize(text: str) -> str:
    """Lowercase; mr./mrs. spelled out; hyphens to spaces; punctuation except apostrophes removed; spaces collapsed."""
    t = text.lower()
    t = re.sub(r"\bmr\.", "mister", t)
    t = re.sub(r"\bmrs\.", "missus", t)
    t = t.replace("-", " ")
    t = re.sub(r"[^\w' ]+", " ", t)
    t = t.replace("_", " ")
    return re.sub(r"\s+", " ", t).strip()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after ``normalize`` (jiwer, a test and bench dependency, is imported here only)."""
    import jiwer

    ref = normalize(reference)
    hyp = normalize(hypothesis)
    if not hyp:
        return 1.0 if ref else 0.0
    return float(jiwer.wer(ref, hyp))
