"""A session carried over from the node that ran it before (docs/deployment.md "Resume on any node").

When a node dies, or its client drops and comes back through the balancer to another node, the new node goes on with
the session from what the shared store and the shared recordings hold: the stored finals (never decoded again, item
numbering continues after the highest), the recording of each source up to its durable end, and the session's
settings. Each source's recognizer starts again at the end of its last stored final and is fed the recording from
there to its end before any new audio: the utterance that was open on the old node (its partials lost with it) is
transcribed again under the next item number. Nothing here touches the event loop or the network.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from echopanel.audio.convert import pcm16_to_float
from echopanel.events import Replayed, SourceEvent, TextFinal, Word
from echopanel.session.ledger import Ledger, TranscriptItem
from echopanel.session.source import SourceState
from echopanel.storage.store import Handoff, StoredItem

_ITEM_NUMBER = re.compile(r"_(\d+)$")


def token_hash(token: str) -> str:
    """What the store keeps of a resume token (SHA-256, hex): enough to check one, useless to forge one."""
    return hashlib.sha256(token.encode()).hexdigest()


def number_of(item_id: str) -> int:
    m = _ITEM_NUMBER.search(item_id)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class Carried:
    """What a session brings from its previous node."""

    session_id: str
    resume_token: str
    created: float
    epoch: int  # the ownership epoch this node took the session over at
    items: tuple[StoredItem, ...]  # stored items, superseded ones included
    handoff: Handoff  # the session's settings as its first node stored them

    def finals(self, source: str) -> list[StoredItem]:
        return [i for i in self.items if i.source == source and not i.superseded]

    def next_item(self, source: str) -> int:
        """The item number this node gives out first for ``source`` (after every stored one)."""
        return max((number_of(i.item_id) for i in self.items if i.source == source), default=0) + 1

    def restart_ms(self, source: str) -> int:
        """Where the recognizer of ``source`` starts again: the end of its last stored final (0 if none)."""
        return max((i.end_ms for i in self.finals(source)), default=0)

    def seed(self, ledger: Ledger) -> None:
        """The ledger starts with the stored transcript (finalization builds the summary over all of it)."""
        for i in self.items:
            book = ledger.books.get(i.source)
            if book is None:
                continue
            n = number_of(i.item_id)
            book.max_item = max(book.max_item, n)
            if i.superseded:
                book.superseded.append((i.start_ms, i.end_ms))
                continue
            book.finals += 1
            book.repaired += int(i.repaired)
            ledger.items.append(
                TranscriptItem(i.item_id, i.source, i.text, i.start_ms, i.end_ms, i.speaker, i.repaired, n)
            )

    def replay(self, since: float, limit: int) -> list[Replayed]:
        """Stored finals written since ``since`` (unix s), oldest first, at most ``limit``: the ones a client cut
        off around the node loss may not have (it drops those it has by ``item_id``)."""
        recent = sorted((i for i in self.items if not i.superseded and i.created_at >= since), key=_written)
        return [Replayed(_event(i)) for i in recent[-limit:]]


async def catch_up(state: SourceState, start: int, rate: int, engine_rate: int) -> None:
    """Feed the recording of one source from sample ``start`` to where it ended when this node took over
    (``state.fed_samples``), a second at a time; the recognizer's clock moves over what is before ``start``."""
    await state.stream.clear(start * engine_rate // rate)
    for at in range(start, state.fed_samples, rate):
        pcm = state.recording.read(at, min(at + rate, state.fed_samples))
        await state.stream.push(state.resampler.process(pcm16_to_float(pcm)))
    state.catch_up = None


def _written(i: StoredItem) -> tuple[float, str]:
    return (i.created_at, i.item_id)


def _event(i: StoredItem) -> SourceEvent:
    words = tuple(
        Word(str(w["word"]), int(w["start_ms"]), int(w["end_ms"]), float(w.get("confidence") or 0.0)) for w in i.words
    )
    final = TextFinal(number_of(i.item_id), i.text, i.start_ms, i.end_ms, words, i.engine, i.compute_ms)
    return SourceEvent(i.source, final, i.speaker)
