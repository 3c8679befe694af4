"""The transcript ledger of one session: every final recorded, persisted before the client sees it, relabelled.

The ledger is the session's public record of what was said:

- ``record(source, final, speaker)`` keeps a final (a superseded one only as the span it cut, for repair), and
  the per-source book: items decoded by a fallback engine, items no engine could decode (``failed``), the highest
  item number given out, counts.
- ``persist`` writes a final to the store before its event is queued to the client, so a killed server keeps
  everything a client already received. ``write`` runs any store call on the store's writer thread and never
  takes the session down (a failing disk is logged; the session goes on).
- ``relabel`` gives an item a new speaker label and returns the ``SpeakerUpdated`` event to send.
- ``replace`` removes items that re-decoded items replace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from echopanel.events import ItemFailed, SpeakerUpdated, TextFinal, item_id
from echopanel.storage.store import AsyncStore, StaleOwner, StoredItem

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class TranscriptItem:
    item_id: str
    source: str
    text: str
    start_ms: int
    end_ms: int
    speaker: str | None
    repaired: bool = False
    number: int = 0  # the recognizer's item number within its source


@dataclass(slots=True)
class SourceBook:
    """What the ledger knows of one source's items beyond the transcript."""

    finals: int = 0
    repaired: int = 0
    max_item: int = 0  # the highest item number given out so far (live or repaired)
    superseded: list[tuple[int, int]] = field(default_factory=list)  # (start, end) ms of items cut by shed gaps
    # Items decoded by a fallback engine, and items no engine could decode: (item, start_ms, end_ms). Both are
    # decoded again from the recording at finalization (echopanel/session/repair.py).
    fallback_items: list[tuple[int, int, int]] = field(default_factory=list)
    failed_items: list[tuple[int, int, int]] = field(default_factory=list)


class Ledger:
    def __init__(self, session_id: str, primary_engine: str, sources: Iterable[str], store: AsyncStore | None) -> None:
        self.session_id = session_id
        self.primary_engine = primary_engine
        self.store = store
        self.items: list[TranscriptItem] = []
        self.lost = False  # another node took the session over: this node's writes are refused (StaleOwner)
        self.books: dict[str, SourceBook] = {name: SourceBook() for name in sources}

    # -- recording finals ---------------------------------------------------------------------------------------

    def record(self, source: str, ev: TextFinal, speaker: str | None = None) -> None:
        book = self.books[source]
        book.max_item = max(book.max_item, ev.item)
        if not (ev.superseded or ev.repaired) and ev.engine != self.primary_engine:
            book.fallback_items.append((ev.item, ev.start_ms, ev.end_ms))
        if ev.superseded:
            book.superseded.append((ev.start_ms, ev.end_ms))
            return
        book.finals += 1
        if ev.repaired:
            book.repaired += 1
        if ev.text:
            self.items.append(
                TranscriptItem(
                    item_id(source, ev.item), source, ev.text, ev.start_ms, ev.end_ms, speaker, ev.repaired, ev.item
                )
            )

    def failed(self, source: str, ev: ItemFailed) -> None:
        book = self.books[source]
        book.max_item = max(book.max_item, ev.item)
        if ev.start_ms is not None and ev.end_ms is not None:
            book.failed_items.append((ev.item, ev.start_ms, ev.end_ms))  # its audio is in the recording

    def of(self, source: str) -> list[TranscriptItem]:
        return [t for t in self.items if t.source == source]

    def in_time_order(self) -> list[TranscriptItem]:
        return sorted(self.items, key=lambda t: (t.start_ms, t.source, t.item_id))

    def replace(self, source: str, numbers: Iterable[int]) -> None:
        """Items re-decoded at finalization are gone from the transcript (their replacements are recorded)."""
        gone = {item_id(source, n) for n in numbers}
        self.items[:] = [t for t in self.items if t.item_id not in gone]
        book = self.books[source]
        book.fallback_items = [t for t in book.fallback_items if item_id(source, t[0]) not in gone]
        book.failed_items = [t for t in book.failed_items if item_id(source, t[0]) not in gone]

    # -- speakers ------------------------------------------------------------------------------------------------

    def relabel(self, iid: str, label: str | None) -> SpeakerUpdated | None:
        """Give a transcript item a new speaker label; the event to send, or None if unchanged or unknown."""
        for n, t in enumerate(self.items):
            if t.item_id == iid:
                if t.speaker == label:
                    return None
                self.items[n] = replace(t, speaker=label)
                return SpeakerUpdated(iid, t.source, label, t.speaker)
        return None

    # -- the store -----------------------------------------------------------------------------------------------

    async def persist(self, source: str, ev: TextFinal, speaker: str | None) -> None:
        if self.store is None or not ev.text:
            return
        item = StoredItem(
            self.session_id,
            item_id(source, ev.item),
            source,
            ev.text,
            ev.start_ms,
            ev.end_ms,
            speaker,
            tuple(
                {"word": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms, "confidence": w.confidence}
                for w in ev.words
            ),
            ev.engine,
            ev.repaired,
            ev.superseded,
            ev.compute_ms,
        )
        await self.write(self.store.store.add_item, item)

    async def write(self, fn: Callable[..., Any], *args: Any) -> None:
        """A store write that never takes the session down: a failing disk is logged, the session goes on."""
        if self.store is None:
            return
        try:
            await self.store.write(fn, *args)
        except StaleOwner:
            if not self.lost:
                log.info("session %s: taken over by another node; this node writes nothing more", self.session_id)
            self.lost = True
        except Exception:
            log.exception("session %s: store write failed", self.session_id)
