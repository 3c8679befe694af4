"""The text of a recognizer's results: the decoder's words after a forced prefix, and an item's final text.

``assemble_final`` guarantees an item's final text starts with the stable text already sent as deltas (so the
deltas of an item always concatenate to its final), and drops trailing words Whisper invents after the voice
ended ("Thank you.").
"""

from __future__ import annotations

from echopanel.events import Word
from echopanel.inference.jobs import Decoded
from echopanel.recognizer.agreement import split_words


def after_prefix(text: str, prefix: str, prefix_words: int) -> list[str]:
    """The decoder's words after the forced prefix."""
    stripped = text.lstrip()
    if prefix and stripped.startswith(prefix):
        return split_words(stripped[len(prefix) :])
    return split_words(text)[prefix_words:]


HALLUCINATION_MARGIN_MS = 150
# With a prompt (keyterms, a client's prompt) Whisper adds a sign-off after short clips ("10 of clubs. Thanks.",
# "Seven of clubs. We'll see you next time.") at the speech's very end, timed as a real word. Measured on the cards
# clips and the names speech (tuned there, tests/server/test_keyterms.py): such a first invented word scored
# 0.003-0.26 and began 50-125 ms before the voice ended, or ended after it; the real last words began >= 380 ms
# before it (they end where it ends), scored >= 0.35 when they began in its last 200 ms and >= 0.24 elsewhere.
PROMPTED_UNLIKELY = 0.1  # ... and ending in the last 300 ms
PROMPTED_DOUBTFUL = 0.35  # ... and beginning in the last 200 ms


def _invented(word: Word, voiced_end_ms: int, prompted: bool = False) -> bool:
    if not _has_letters(word.text):
        return True  # a lone " ." or "..."
    if word.start_ms >= voiced_end_ms + HALLUCINATION_MARGIN_MS:
        return True
    if prompted and (
        (word.confidence < PROMPTED_UNLIKELY and word.end_ms >= voiced_end_ms - 300)
        or (word.confidence < PROMPTED_DOUBTFUL and word.start_ms >= voiced_end_ms - 200)
    ):
        return True
    # Whisper squeezes words it invents after the speech into zero length at the clip end.
    return word.end_ms - word.start_ms <= 20 and word.start_ms >= voiced_end_ms - 300


def _has_letters(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def assemble_final(
    decoded: Decoded, prefix: str, prefix_words: int, voiced_end_ms: int, *, prompted: bool = False
) -> tuple[str, list[Word]]:
    """The final text of an item, guaranteed to start with the stable ``prefix`` already sent.

    Trailing words that begin after the voice ended (Whisper's end-of-clip inventions, e.g. "Thank you.") are
    dropped, and with a prompt the unlikely words at the speech's very end too; they can never remove text that was
    already sent as stable.
    """
    words = list(decoded.words)
    cut = len(words)
    while cut > 0 and _invented(words[cut - 1], voiced_end_ms, prompted):
        cut -= 1
    words = words[:cut]
    full = ("".join(w.text for w in words) if decoded.words else decoded.text).lstrip()
    if not prefix:
        return full.rstrip(), words
    if full.startswith(prefix):
        return prefix + full[len(prefix) :].rstrip(), words
    if prefix.startswith(full):
        return prefix, words
    return prefix + "".join(after_prefix(full, prefix, prefix_words)).rstrip(), words
