"""Named entities and topics, rule-based (no model download; see docs/architecture.md for why).

Entities: Whisper capitalises proper nouns, so runs of capitalised words that are not at a sentence start (or that
also appear capitalised mid-sentence elsewhere) are names; acronyms (API, Q3) too. Dates, times, money, percents
and numbers with units are found by pattern. Types: ``DATE``, ``TIME``, ``MONEY``, ``PERCENT``, ``QUANTITY``,
``ORG`` (names ending in Inc, Corp, ...), ``PERSON`` (after a title, or a single capitalised word that is the
subject of a verb of speech or action), and ``NAME`` (a proper noun of unknown kind).

Topics: candidate key phrases are runs of up to three content words between stopwords (as RAKE does), counted
over the whole session; a topic must come back in at least two items. Phrases are scored by frequency times
length, and a phrase contained in a better one is dropped. Each topic lists the items it appears in and its first
and last time.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from echopanel.analysis.text import STOPWORDS, Sentence, stem

_DAYS = r"Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTHS = r"January|February|March|April|May|June|July|August|September|October|November|December"
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "MONEY",
        re.compile(
            r"[$€£]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:k|m|bn|million|billion|thousand))?|"
            r"\b\d[\d,]*(?:\.\d+)?\s?(?:million|billion|thousand)?\s?(?:dollars|euros|pounds|bucks)\b",
            re.IGNORECASE,
        ),
    ),
    ("PERCENT", re.compile(r"\b\d+(?:\.\d+)?\s?(?:%|percent\b)", re.IGNORECASE)),
    (
        "DATE",
        re.compile(
            rf"\b(?:(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,\s*\d{{4}})?|"
            rf"(?:next|last|this)\s+(?:{_DAYS}|week|month|quarter|year)|(?:{_DAYS})|Q[1-4](?:\s+\d{{4}})?|"
            rf"(?:{_MONTHS})(?:\s+\d{{4}})?|tomorrow|yesterday|\d{{4}}-\d{{2}}-\d{{2}})\b"
        ),
    ),
    ("TIME", re.compile(r"\b\d{1,2}(?::\d{2})?\s?(?:a\.?m\.?|p\.?m\.?|o'clock)|\bnoon\b|\bmidnight\b", re.IGNORECASE)),
    (
        "QUANTITY",
        re.compile(
            r"\b\d[\d,]*(?:\.\d+)?\s?(?:hours?|minutes?|days?|weeks?|months?|years?|users?|people|"
            r"customers?|servers?|tickets?|items?|points?|gb|mb|tb|ms|seconds?)\b",
            re.IGNORECASE,
        ),
    ),
]
_CAP_RUN = re.compile(
    r"\b(?:[A-Z][a-zA-Z'’\-]*|[A-Z]{2,}\d*)(?:\s+(?:of\s+|the\s+|&\s+)?(?:[A-Z][a-zA-Z'’\-]*|[A-Z]{2,}\d*))*"
)
_ORG_SUFFIX = re.compile(r"\b(?:Inc|Corp|Corporation|Ltd|LLC|GmbH|Company|Group|Labs|Bank|University|Team)\.?$")
_TITLES = frozenset({"Mr", "Mrs", "Ms", "Dr", "Prof", "Mister", "Miss", "Doctor"})
_NOT_NAMES = frozenset(
    {
        "I",
        "I'm",
        "I'll",
        "I've",
        "I'd",
        "OK",
        "Okay",
        "Oh",
        "Yeah",
        "Yes",
        "No",
        "So",
        "And",
        "But",
        "Well",
        "Hi",
        "Hello",
        "Thanks",
        "Thank",
        "Right",
        "Um",
        "Uh",
        "Hmm",
        "Alright",
        "Sure",
        "Please",
        "Let's",
    }
)
_DAY_MONTH = re.compile(rf"^(?:{_DAYS}|{_MONTHS})$")
_PERSON_VERBS = re.compile(
    r"^\s*(?:said|says|will|'ll|’ll|can|could|should|thinks|mentioned|asked|told|wants|needs|is going to|has|had)\b"
)


@dataclass(frozen=True, slots=True)
class Entity:
    text: str
    type: str
    count: int
    item_ids: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "type": self.type, "count": self.count, "item_ids": list(self.item_ids)}


@dataclass(frozen=True, slots=True)
class Topic:
    text: str
    count: int
    item_ids: tuple[str, ...]
    start_ms: int
    end_ms: int

    def as_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "count": self.count,
            "item_ids": list(self.item_ids),
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
        }


def entities(sentences: list[Sentence], limit: int = 40) -> list[Entity]:
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    names: dict[str, str] = {}  # lowercase -> surface form first seen
    mid_sentence: set[str] = set()
    candidates: list[tuple[str, str, bool, str]] = []  # (surface, item, at sentence start, rest of sentence)
    for s in sentences:
        taken: list[tuple[int, int]] = []
        for kind, pattern in _PATTERNS:
            for m in pattern.finditer(s.text):
                if any(a < m.end() and m.start() < b for a, b in taken):
                    continue
                taken.append((m.start(), m.end()))
                found[(_clean(m.group(0)), kind)].append(s.item_id)
        for m in _CAP_RUN.finditer(s.text):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue
            surface = _trim(m.group(0))
            if not surface:
                continue
            at_start = s.text[: m.start()].strip(" \"'(") == "" or s.text[: m.start()].rstrip().endswith(
                (".", "!", "?")
            )
            if not at_start:
                mid_sentence.add(surface.lower())
            candidates.append((surface, s.item_id, at_start, s.text[m.end() :]))
    for surface, item, at_start, rest in candidates:
        key = surface.lower()
        person = _name_type(surface, rest) == "PERSON" and key not in STOPWORDS
        if at_start and key not in mid_sentence and not surface.isupper() and not person:
            continue  # only ever capitalised because it starts a sentence
        names.setdefault(key, surface)
        found[(names[key], _name_type(surface, rest))].append(item)
    merged: dict[str, tuple[str, list[str]]] = {}
    for (text, kind), items in found.items():
        key = text.lower()
        if key in merged:
            prev_kind, prev_items = merged[key]
            better = kind if kind != "NAME" else prev_kind
            merged[key] = (better, prev_items + items)
        else:
            merged[key] = (kind, list(items))
    out = [
        Entity(names.get(key, _surface(found, key)), kind, len(items), tuple(dict.fromkeys(items)))
        for key, (kind, items) in merged.items()
    ]
    out.sort(key=lambda e: (-e.count, e.text.lower()))
    return out[:limit]


def _surface(found: dict[tuple[str, str], list[str]], key: str) -> str:
    return next(text for text, _ in found if text.lower() == key)


def _clean(text: str) -> str:
    return " ".join(text.split()).strip(" ,.")


def _trim(surface: str) -> str:
    parts = surface.split()
    while parts and (parts[0] in _NOT_NAMES or parts[0].rstrip("'’s") in _NOT_NAMES):
        parts.pop(0)
    while parts and parts[-1] in ("of", "the", "&"):
        parts.pop()
    text = " ".join(parts).rstrip("'’")
    if text.endswith(("'s", "’s")):
        text = text[:-2]
    if not text or text in _NOT_NAMES or _DAY_MONTH.match(text) or len(text) < 2:
        return ""
    return text


def _name_type(surface: str, rest: str) -> str:
    first = surface.split()[0]
    if _ORG_SUFFIX.search(surface):
        return "ORG"
    if first.rstrip(".") in _TITLES:
        return "PERSON"
    if " " not in surface and not surface.isupper() and _PERSON_VERBS.match(rest):
        return "PERSON"
    return "NAME"


_SPLIT = re.compile(r"[^A-Za-z0-9'’\-]+")


def topics(sentences: list[Sentence], limit: int = 10, min_items: int = 2) -> list[Topic]:
    phrase_items: dict[str, list[str]] = defaultdict(list)
    phrase_times: dict[str, list[int]] = defaultdict(list)
    surface: dict[str, Counter[str]] = defaultdict(Counter)
    for s in sentences:
        tokens = [t for t in _SPLIT.split(s.text) if t]
        run: list[str] = []
        for tok in [*tokens, ""]:
            low = tok.lower().replace("’", "'")
            if tok and low not in STOPWORDS and low[0].isalpha() and len(low) >= 3:
                run.append(tok)
                continue
            for n in (1, 2, 3):
                for i in range(len(run) - n + 1):
                    words = run[i : i + n]
                    key = " ".join(stem(w) for w in words)
                    phrase_items[key].append(s.item_id)
                    phrase_times[key].append(s.start_ms)
                    surface[key][" ".join(w.lower() for w in words)] += 1
            run = []
    scored = []
    for key, items in phrase_items.items():
        distinct = list(dict.fromkeys(items))
        if len(distinct) < min_items:
            continue
        n = key.count(" ") + 1
        scored.append((len(items) * (1 + 0.5 * (n - 1)), key, distinct))
    scored.sort(key=lambda x: (-x[0], x[1]))
    out: list[Topic] = []
    kept: list[str] = []
    for _, key, distinct in scored:
        if any(_contains(k, key) or _contains(key, k) for k in kept):
            continue
        kept.append(key)
        times = phrase_times[key]
        out.append(
            Topic(surface[key].most_common(1)[0][0], len(phrase_items[key]), tuple(distinct), min(times), max(times))
        )
        if len(out) >= limit:
            break
    return out


def _contains(big: str, small: str) -> bool:
    return f" {small} " in f" {big} "
