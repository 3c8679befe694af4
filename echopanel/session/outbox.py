"""A session's outbox: the bounded, ordered queue of server events, which outlives a dropped connection.

Attached (a connection's sender reads it), it behaves like ``asyncio.Queue(maxsize)``: producers wait at the bound,
so a slow client pushes back on the session. Detached (the connection dropped; the session waits for a resume),
producers never wait, and the bound is kept by dropping, oldest first:

- metrics ticks and backpressure notices are not kept at all (stale by the time anyone reads them);
- at the bound, the oldest partial results (``response.text.delta``) are dropped to make room;
- finals, errors and everything else are never dropped: they may take the outbox past its bound. They are bounded
  by the work the session still has while nobody sends audio (its queues: seconds of audio), and by the grace.

A sender that fails to write an item puts it back at the front (``put_front``), so it is sent after a resume.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from echopanel.events import SourceEvent, TextDelta

log = logging.getLogger(__name__)


def droppable(item: Any) -> bool:
    """Partial results: superseded by the item's final anyway."""
    return isinstance(item, SourceEvent) and isinstance(item.event, TextDelta)


def transient(item: Any) -> bool:
    """Live status that nobody will read in time: metrics ticks and backpressure notices."""
    from echopanel.session.session import Backpressure, SessionMetrics

    return isinstance(item, SessionMetrics | Backpressure)


class Outbox:
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.detached = False
        self.dropped_deltas = 0  # partial results dropped at the bound while detached
        self.dropped_transient = 0  # metrics and backpressure notices not kept while detached
        self.max_size_seen = 0

    # -- asyncio.Queue's interface (the part the server uses) -----------------------------------------------------

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put_nowait(self, item: Any) -> None:
        if self.detached:
            self._put_detached(item)
            return
        if self.full():
            raise asyncio.QueueFull
        self._append(item)

    async def put(self, item: Any) -> None:
        while not self.detached and self.full():
            self._space.clear()
            await self._space.wait()
        if self.detached:
            self._put_detached(item)
        else:
            self._append(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if len(self._items) < self.maxsize:
            self._space.set()
        return item

    async def get(self) -> Any:
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        return self.get_nowait()

    # -- resume ------------------------------------------------------------------------------------------------------

    def put_front(self, item: Any) -> None:
        """An item taken but not written (the socket failed): it goes out first after a resume."""
        self._items.appendleft(item)
        self._readable.set()

    def detach(self) -> None:
        """Nobody reads any more: producers stop waiting; the detached bound policy applies."""
        self.detached = True
        for item in [i for i in self._items if transient(i)]:
            self._items.remove(item)
            self.dropped_transient += 1
        self._trim()
        self._space.set()  # producers waiting for space go on under the detached policy

    def attach(self) -> None:
        self.detached = False

    def items(self) -> list[Any]:
        return list(self._items)

    # -- internals -------------------------------------------------------------------------------------------------

    def _append(self, item: Any) -> None:
        self._items.append(item)
        self.max_size_seen = max(self.max_size_seen, len(self._items))
        self._readable.set()

    def _put_detached(self, item: Any) -> None:
        if transient(item):
            self.dropped_transient += 1
            return
        self._append(item)
        self._trim()

    def _trim(self) -> None:
        while len(self._items) > self.maxsize:
            for i, queued in enumerate(self._items):
                if droppable(queued):
                    del self._items[i]
                    self.dropped_deltas += 1
                    break
            else:
                return  # only finals and other events that are never dropped: over the bound for now
