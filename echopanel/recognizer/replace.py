"""A client's replacement list (``{"post gress": "Postgres"}``), applied to an item's stable text and to its final.

Keys match whole words, case-insensitively, ignoring punctuation at the words' edges; at each word the longest key
that starts there wins, left to right, and the punctuation around the matched words is kept ("post gress," ->
"Postgres,"). Deltas stay append-only and still concatenate to the final: the stable words that could yet become the
start of a key ("post", while "gress" may follow) are held back from the deltas until the next stable words or the
final settle them (they are shown in the tentative text meanwhile). A word the parse has passed can no longer change:
a longer key could only change it if the words from there on were the start of that key, and such words are held.

Each item keeps the list that was in effect when its first words were decoded, so a ``session.update`` changes the
replacements from the next utterance on and never the middle of one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from echopanel.events import Word

MAX_REPLACEMENTS = 100
MAX_REPLACE_CHARS = 100  # per key and per value
MAX_KEY_WORDS = 8

_WORD = re.compile(r"\s*\S+")
_NORM = re.compile(r"[^\w']+")
_EDGES = re.compile(r"^(\s*[^\w\s]*)(.*?)([^\w\s]*)$", re.S)


def _norm(word: str) -> str:
    return _NORM.sub("", word.lower()).strip("'")


def key_words(key: str) -> tuple[str, ...]:
    """A key as the words it matches (empty if it has none)."""
    return tuple(w for w in (_norm(x) for x in key.split()) if w)


@dataclass(frozen=True)
class Replacements:
    """The rules, as given (``pairs``) and indexed by their normalized words."""

    pairs: tuple[tuple[str, str], ...] = ()
    _table: dict[tuple[str, ...], str] = field(default_factory=dict, compare=False, repr=False)
    _prefixes: frozenset[tuple[str, ...]] = field(default=frozenset(), compare=False, repr=False)
    _longest: int = field(default=0, compare=False, repr=False)

    @classmethod
    def of(cls, rules: Mapping[str, str]) -> Replacements:
        table: dict[tuple[str, ...], str] = {}
        for key, value in rules.items():
            words = key_words(key)
            if words:
                table[words] = value.strip()
        prefixes = frozenset(k[:n] for k in table for n in range(1, len(k)))
        longest = max((len(k) for k in table), default=0)
        return cls(tuple(rules.items()), table, prefixes, longest)

    def __bool__(self) -> bool:
        return bool(self._table)

    def parse(self, keys: Sequence[str]) -> list[tuple[int, int, str | None]]:
        """Pieces ``(start, end, replacement)`` covering ``keys`` (normalized words) in order; None: a word kept."""
        pieces: list[tuple[int, int, str | None]] = []
        i = 0
        while i < len(keys):
            for n in range(min(self._longest, len(keys) - i), 0, -1):
                value = self._table.get(tuple(keys[i : i + n]))
                if value is not None:
                    pieces.append((i, i + n, value))
                    i += n
                    break
            else:
                pieces.append((i, i + 1, None))
                i += 1
        return pieces

    def held_from(self, keys: Sequence[str]) -> int:
        """The first word from which the words to the end could still grow into a key (len(keys): none)."""
        for k in range(max(0, len(keys) - self._longest + 1), len(keys)):
            if tuple(keys[k:]) in self._prefixes:
                return k
        return len(keys)

    def apply(self, text: str) -> str:
        words = _WORD.findall(text)
        return "".join(_render(words, p) for p in self.parse([_norm(w) for w in words]))

    def apply_words(self, words: Sequence[Word]) -> tuple[Word, ...]:
        out: list[Word] = []
        for s, e, value in self.parse([_norm(w.text) for w in words]):
            if value is None:
                out.append(words[s])
                continue
            first, last = words[s], words[e - 1]
            text = _EDGES.match(first.text).group(1) + value + _EDGES.match(last.text).group(3)  # type: ignore[union-attr]
            confidence = min(w.confidence for w in words[s:e])
            out.append(Word(text, first.start_ms, last.end_ms, confidence))
        return tuple(out)


NO_REPLACEMENTS = Replacements()


def _render(words: Sequence[str], piece: tuple[int, int, str | None]) -> str:
    s, e, value = piece
    if value is None:
        return words[s]
    lead = _EDGES.match(words[s]).group(1)  # type: ignore[union-attr]
    trail = _EDGES.match(words[e - 1]).group(3)  # type: ignore[union-attr]
    return lead + value + trail


class Rewriter:
    """One item's text through the replacement list: stable deltas in, the deltas to send out."""

    def __init__(self, rules: Replacements = NO_REPLACEMENTS) -> None:
        self.rules = rules
        self.raw = ""  # the stable text as decoded
        self.sent = ""  # the stable text as sent (replacements applied)
        self._held = 0  # where in ``raw`` the words held back begin

    def stable(self, delta: str) -> str:
        """``delta``, newly stable text as decoded: the text to send now (maybe empty, maybe more than ``delta``)."""
        self.raw += delta
        if not self.rules:
            self.sent += delta
            return delta
        words = _WORD.findall(self.raw)
        keys = [_norm(w) for w in words]
        held = self.rules.held_from(keys)
        out, end = [], 0
        for piece in self.rules.parse(keys):
            if piece[0] >= held:
                break
            out.append(_render(words, piece))
            end = piece[1]
        settled = "".join(out)
        self._held = len("".join(words[:end]))
        new = settled[len(self.sent) :] if settled.startswith(self.sent) else ""
        self.sent += new
        return new

    def tentative(self, text: str) -> str:
        """The unstable tail to show: the words held back, then ``text``, with the replacements applied."""
        if not self.rules:
            return text
        return self.rules.apply(self.raw[self._held :] + text)

    def final(self, text: str, words: Sequence[Word]) -> tuple[str, tuple[Word, ...]]:
        """The final text (starting with everything sent) and its words, replacements applied."""
        if not self.rules:
            return text, tuple(words)
        out = self.rules.apply(text)
        if not out.startswith(self.sent):  # the decoder changed a word already sent: keep what was sent
            out = self.sent + (text[len(self.raw) :] if text.startswith(self.raw) else "")
        return out, self.rules.apply_words(words)
