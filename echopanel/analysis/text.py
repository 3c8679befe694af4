"""Text helpers for the analysis: sentences, tokens, stopwords, a light stemmer. Pure, no models."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A compact English stopword list plus spoken-language fillers (meetings are speech, not prose).
STOPWORDS = frozenset(
    """
a about above after again against all also am an and any are aren't as at be because been before being below
between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few for
from further had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his
how how's i i'd i'll i'm i've if in into is isn't it it's its itself let's me more most mustn't my myself no nor not of
off on once only or other ought our ours ourselves out over own same shan't she she'd she'll she's should shouldn't so
some such than that that's the their theirs them themselves then there there's these they they'd they'll they're
they've this those through to too under until up very was wasn't we we'd we'll we're we've were weren't what what's
when when's where where's which while who who's whom why why's will with won't would wouldn't you you'd you'll you're
you've your yours yourself yourselves
um uh uhm er ah oh okay ok yeah yes yep no nope hmm mm mhm like just really right well actually basically kind sort
gonna wanna gotta got get gets getting go goes going went thing things stuff lot lots think thought know knew mean
say said says see saw look looks way much many one two three also maybe sure thank thanks please could would might
must shall need needs let us still even now then there here something anything everything nothing someone anyone
everyone good great fine new make made come came take took want wanted put yet ever every around another back since
""".split()
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*|\d[\d,.:]*%?")


@dataclass(frozen=True, slots=True)
class Utterance:
    """One final of the transcript, as the analysis sees it."""

    item_id: str
    source: str
    speaker: str | None
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    item_id: str
    speaker: str | None
    start_ms: int
    end_ms: int
    index: int  # position in the whole transcript (time order)


def split_sentences(text: str) -> list[str]:
    """Sentences of one utterance (Whisper punctuates; an unpunctuated utterance is one sentence)."""
    parts = [p.strip() for p in _SENTENCE_END.split(text.strip())]
    return [p for p in parts if p]


def sentences_of(utterances: list[Utterance]) -> list[Sentence]:
    """Every sentence of the transcript in time order, each pointing at its item. Times: the item's, split evenly
    by character count across its sentences."""
    out: list[Sentence] = []
    for u in sorted(utterances, key=lambda u: (u.start_ms, u.source, u.item_id)):
        parts = split_sentences(u.text)
        total = sum(len(p) for p in parts) or 1
        t = u.start_ms
        span = max(0, u.end_ms - u.start_ms)
        for p in parts:
            dt = span * len(p) // total
            out.append(Sentence(p, u.item_id, u.speaker, t, t + dt, len(out)))
            t += dt
    return out


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def stem(word: str) -> str:
    """A light suffix stripper so 'budgets' / 'budget', 'deploying' / 'deploy' count as one term."""
    w = word.lower().replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, min_len in (("ies", 5), ("ing", 6), ("ed", 5), ("es", 5), ("s", 4)):
        if w.endswith(suffix) and len(w) >= min_len and not w.endswith("ss"):
            w = w[: -len(suffix)] + ("y" if suffix == "ies" else "")
            break
    return w


def content_terms(text: str) -> list[str]:
    """Stemmed content words (no stopwords, no numbers, at least 3 letters)."""
    out = []
    for w in words(text):
        lw = w.lower().replace("’", "'")
        if lw in STOPWORDS or not lw[0].isalpha() or len(lw) < 3:
            continue
        out.append(stem(lw))
    return out
