"""Extractive summary over the whole session.

Each sentence is scored by the TF-IDF weight of its content terms (term frequency over the whole transcript, inverse
document frequency over items), normalised by its length, so sentences about what the meeting kept returning to
score high. The session's time line is cut into slices (the first minute, the last minute, and the time between in
slices of about a minute and a half; 3-12 in all) and the best sentence of each slice is taken first, so the summary
covers the whole meeting, how it opened and how it closed, and not only its busiest stretch; then the best remaining
sentences fill up to the target length, skipping near-duplicates of sentences already taken (cosine of term vectors
>= 0.6). The result is in time order, each sentence pointing at its item.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

from echopanel.analysis.text import Sentence, Utterance, content_terms, sentences_of

MIN_TERMS = 3  # shorter sentences ("Okay, sounds good.") are never summary material
SLICE_MS = 90_000
OPENING_MS = 60_000  # how the meeting opened and how it closed each get a slice of their own
MIN_SLICES, MAX_SLICES = 3, 12
DUPLICATE_COSINE = 0.6


def target_length(n_sentences: int) -> int:
    """How many sentences the summary keeps: about the square root of the transcript's, 3 to 15."""
    if n_sentences <= 0:
        return 0
    return max(1, min(n_sentences, max(3, min(15, round(math.sqrt(n_sentences))))))


def summarize(utterances: list[Utterance], max_sentences: int | None = None) -> list[Sentence]:
    sentences = sentences_of(utterances)
    terms = [content_terms(s.text) for s in sentences]
    candidates = [i for i, t in enumerate(terms) if len(t) >= MIN_TERMS]
    if not candidates:
        return []
    n_docs = len({u.item_id for u in utterances}) or 1
    df: Counter[str] = Counter()
    for u in utterances:
        df.update(set(content_terms(u.text)))
    tf: Counter[str] = Counter(t for ts in terms for t in ts)
    weight = {t: (1 + math.log(tf[t])) * math.log(1 + n_docs / df[t]) if df[t] else 0.0 for t in tf}
    score = {i: sum(weight[t] for t in set(terms[i])) / math.sqrt(len(terms[i])) for i in candidates}

    start = min(sentences[i].start_ms for i in candidates)
    end = max(sentences[i].start_ms for i in candidates) + 1
    edges = time_slices(start, end)
    want = max_sentences or min(len(candidates), max(target_length(len(candidates)), len(edges) - 1))
    chosen: list[int] = []
    vectors = {i: Counter(terms[i]) for i in candidates}

    def distinct(i: int) -> bool:
        return all(_cosine(vectors[i], vectors[j]) < DUPLICATE_COSINE for j in chosen)

    for lo, hi in itertools.pairwise(edges):
        if len(chosen) >= want:
            break
        inside = [i for i in candidates if lo <= sentences[i].start_ms < hi]
        for i in sorted(inside, key=lambda i: (-score[i], i)):
            if distinct(i):
                chosen.append(i)
                break
    for i in sorted(candidates, key=lambda i: (-score[i], i)):
        if len(chosen) >= want:
            break
        if i not in chosen and distinct(i):
            chosen.append(i)
    return [sentences[i] for i in sorted(chosen)]


def time_slices(start: int, end: int) -> list[int]:
    """Slice edges over [start, end): the opening minute, the closing minute, and the time between cut into slices
    of about ``SLICE_MS``, ``MIN_SLICES`` to ``MAX_SLICES`` in all (equal thirds when the meeting is short)."""
    span = end - start
    if span < 3 * OPENING_MS:
        return [start + span * k // MIN_SLICES for k in range(MIN_SLICES)] + [end]
    middle = max(1, min(MAX_SLICES - 2, math.ceil((span - 2 * OPENING_MS) / SLICE_MS)))
    lo, hi = start + OPENING_MS, end - OPENING_MS
    return [start, *(lo + (hi - lo) * k // middle for k in range(middle)), hi, end]


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(v * b[k] for k, v in a.items() if k in b)
    if not dot:
        return 0.0
    return dot / math.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))
