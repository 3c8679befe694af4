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
    def __init__(self) -> None:
        self.stable: list[str] = []
        self._previous: list[str] | None = None
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
        self._previous = None

    def update(self, hypothesis: list[str]) -> str:
        """Feed the words the decoder produced after the stable prefix; return the newly stable text."""
        hypothesis = [w for w in hypothesis if _key(w)]
        previous = self._previous
        self._previous = hypothesis
        n = 0
        if previous is not None:
            limit = min(len(previous), len(hypothesis) - 1)
            while n < limit and _key(previous[n]) == _key(hypothesis[n]):
                n += 1
        new = hypothesis[:n]
        before = self.stable_text
        self.stable.extend(new)
        self._previous = hypothesis[n:]
        self.tentative = hypothesis[n:]
        return self.stable_text[len(before) :]
