"""A session's outbox: the ordered queue of typed server events, which outlives a dropped connection.

Two lanes:

- **Control** (``session.degraded``, ``session.metrics``, ``input_audio_buffer.backpressure``): status the client
  must see promptly. It overtakes the data lane (the sender takes control events first), is never refused and
  never waits. It stays small by itself: a newer metrics tick, or a newer backpressure notice of the same source,
  replaces an older one not yet sent; degrade notices are all kept, in order, up to ``MAX_NOTICES`` unsent (past
  it the oldest goes: the client sees the current state). So the lane holds at most 1 + sources + 16 events.
- **Data** (everything else, in order: partials, finals, speaker updates, replies, errors, the summary). Attached
  (a connection's sender reads it), it behaves like ``asyncio.Queue(maxsize)``: producers wait at the bound, so a
  slow client pushes back on the session. Detached (the connection dropped; the session waits for a resume),
  producers never wait, and the bound is kept by dropping the oldest partial results (``response.text.delta``);
  finals, errors and everything else are never dropped: they may take the outbox past its bound, bounded by the
  work the session still has while nobody sends audio (its queues: seconds of audio), and by the grace period.
  Metrics and backpressure are not kept while detached (stale by the time anyone reads them).

A sender that fails to write an item puts it back at the front (``put_front``), so it is sent after a resume.
``Barrier`` items ride the data lane: the sender resolves one once everything before it has been sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from echopanel.events import Backpressure, Degraded, ServerEvent, SessionMetrics, SourceEvent, TextDelta

log = logging.getLogger(__name__)


@dataclass(slots=True, frozen=True)
class Barrier:
    """Placed in the outbox; the sender resolves it once everything before it has been sent."""

    done: asyncio.Future[None]


OutboxItem = ServerEvent | Barrier
MAX_NOTICES = 16  # unsent degrade notices kept in the control lane


def control_key(item: OutboxItem) -> str | None:
    """The control lane's key of an item, or None for the data lane. Items with the same key replace each other,
    except degrade notices ("degraded"), which are kept in order (bounded)."""
    if isinstance(item, SessionMetrics):
        return "metrics"
    if isinstance(item, Backpressure):
        return "backpressure:" + item.source
    if isinstance(item, Degraded):
        return "degraded"
    return None


def droppable(item: OutboxItem) -> bool:
    """Partial results: superseded by the item's final anyway."""
    return isinstance(item, SourceEvent) and isinstance(item.event, TextDelta)


def transient(item: OutboxItem) -> bool:
    """Live status that nobody will read in time: metrics ticks and backpressure notices."""
    return isinstance(item, SessionMetrics | Backpressure)


class Outbox:
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: deque[OutboxItem] = deque()
        self._control: deque[tuple[str, OutboxItem]] = deque()  # (key, item), in send order
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.detached = False
        self.dropped_deltas = 0  # partial results dropped at the bound while detached
        self.dropped_transient = 0  # metrics and backpressure notices not kept while detached
        self.replaced_control = 0  # control events replaced by a newer one of their kind before they were sent
        self.max_size_seen = 0

    # -- asyncio.Queue's interface (the part the server uses) -----------------------------------------------------

    def qsize(self) -> int:
        return len(self._items) + len(self._control)

    def empty(self) -> bool:
        return not self._items and not self._control

    def full(self) -> bool:
        """The data lane is at its bound (control events are always taken)."""
        return len(self._items) >= self.maxsize

    def put_nowait(self, item: OutboxItem) -> None:
        key = control_key(item)
        if key is not None:
            self._put_control(key, item)
            return
        if self.detached:
            self._put_detached(item)
            return
        if self.full():
            raise asyncio.QueueFull
        self._append(item)

    async def put(self, item: OutboxItem) -> None:
        if control_key(item) is None:
            while not self.detached and self.full():
                self._space.clear()
                await self._space.wait()
        self.put_nowait(item)

    def get_nowait(self) -> OutboxItem:
        if self._control:
            return self._control.popleft()[1]
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if len(self._items) < self.maxsize:
            self._space.set()
        return item

    async def get(self) -> OutboxItem:
        while self.empty():
            self._readable.clear()
            await self._readable.wait()
        return self.get_nowait()

    # -- resume ------------------------------------------------------------------------------------------------------

    def put_front(self, item: OutboxItem) -> None:
        """An item taken but not written (the socket failed): it goes out first after a resume."""
        key = control_key(item)
        if key is not None:
            if key == "degraded" or all(k != key for k, _ in self._control):  # else a newer one of its kind wins
                self._control.appendleft((key, item))
        else:
            self._items.appendleft(item)
        self._readable.set()

    def detach(self) -> None:
        """Nobody reads any more: producers stop waiting; the detached bound policy applies."""
        self.detached = True
        kept = deque((k, item) for k, item in self._control if not transient(item))
        self.dropped_transient += len(self._control) - len(kept)
        self._control = kept
        self._trim()
        self._space.set()  # producers waiting for space go on under the detached policy

    def attach(self) -> None:
        self.detached = False

    def items(self) -> list[OutboxItem]:
        return [*(item for _, item in self._control), *self._items]

    # -- internals -------------------------------------------------------------------------------------------------

    def _put_control(self, key: str, item: OutboxItem) -> None:
        if self.detached and transient(item):
            self.dropped_transient += 1
            return
        if key == "degraded":
            notices = [i for i, (k, _) in enumerate(self._control) if k == key]
            if len(notices) >= MAX_NOTICES:
                del self._control[notices[0]]
                self.replaced_control += 1
        else:
            for i, (k, _) in enumerate(self._control):
                if k == key:
                    del self._control[i]
                    self.replaced_control += 1
                    break
        self._control.append((key, item))
        self._readable.set()

    def _append(self, item: OutboxItem) -> None:
        self._items.append(item)
        self.max_size_seen = max(self.max_size_seen, len(self._items))
        self._readable.set()

    def _put_detached(self, item: OutboxItem) -> None:
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


async def discard(outbox: Outbox) -> None:
    """Nobody will read: empty the outbox as it fills (resolving barriers) so finalization never waits on it."""
    while True:
        item = await outbox.get()
        if isinstance(item, Barrier) and not item.done.done():
            item.done.set_result(None)


@contextlib.asynccontextmanager
async def discarding(outbox: Outbox) -> AsyncIterator[None]:
    """While the block runs nobody reads ``outbox``: it is emptied as it fills (``discard``), so the block (a
    finalization, a flush) never waits on the outbox's bound."""
    sink = asyncio.create_task(discard(outbox), name="discard")
    try:
        yield
    finally:
        sink.cancel()
        await asyncio.gather(sink, return_exceptions=True)
