"""Local agreement: words that two consecutive decodes agree on become stable.

Pure and deterministic. Words keep their leading space as Whisper emits it, so joining them rebuilds the text.
The newest hypothesis' last word is never committed (it may be cut mid-word or carry end-of-clip punctuation).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\s*\S+")
_NORM = re.compile(r"[^\w']+")


def split_words(text: str) -> list[str]:
    return _WORD.findall(text)


def _key(word: str) -> str:
    return _NORM.sub("", word.lower())


class LocalAgreement:
    """``agree`` consecutive decodes must agree on a word before it is stable (2 by default; 1 commits each
    hypothesis but its last word at once, larger waits for more decodes)."""

    def __init__(self, agree: int = 2) -> None:
        if agree < 1:
            raise ValueError("agree must be >= 1")
        self.agree = agree
        self.stable: list[str] = []
        self._history: list[list[str]] = []  # the last agree - 1 hypotheses, each after the stable text
        self.tentative: list[str] = []

    @property
    def stable_text(self) -> str:
        return "".join(self.stable).lstrip()

    @property
    def tentative_text(self) -> str:
        text = "".join(self.tentative)
        return text.lstrip() if not self.stable else text

    def observe(self, hypothesis: list[str]) -> None:
        """Show a hypothesis as tentative without letting it take part in agreement (too early to trust)."""
        self.tentative = [w for w in hypothesis if _key(w)]
        self._history = []

    def update(self, hypothesis: list[str]) -> str:
        """Feed the words the decoder produced after the stable prefix; return the newly stable text."""
        hypothesis = [w for w in hypothesis if _key(w)]
        others = self._history[-(self.agree - 1) :] if self.agree > 1 else []
        n = 0
        if len(others) == self.agree - 1:
            limit = min([len(hypothesis) - 1, *(len(h) for h in others)])
            while n < limit and all(_key(h[n]) == _key(hypothesis[n]) for h in others):
                n += 1
        new = hypothesis[:n]
        before = self.stable_text
        self.stable.extend(new)
        keep = self.agree - 2  # earlier hypotheses still needed next time, besides this one
        self._history = [h[n:] for h in (others[-keep:] if keep > 0 else [])] + [hypothesis[n:]]
        self.tentative = hypothesis[n:]
        return self.stable_text[len(before) :]
