"""The session outbox: a bounded queue while attached; while detached, never waits and drops oldest deltas only."""

from __future__ import annotations

import asyncio

import pytest

from echopanel.events import Backpressure, SessionMetrics, SourceEvent, TextDelta, TextFinal
from echopanel.session.outbox import Outbox


def delta(item: int) -> SourceEvent:
    return SourceEvent("mic", TextDelta(item, "a", "", 0, 10))


def final(item: int) -> SourceEvent:
    return SourceEvent("mic", TextFinal(item, "a", 0, 10, (), "whisper", 1.0))


async def test_attached_it_is_a_bounded_queue_at_n_and_n_plus_one() -> None:
    box = Outbox(2)
    box.put_nowait(1)
    box.put_nowait(2)
    assert box.full()
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait(3)
    waiting = asyncio.create_task(box.put(3))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the producer waits at the bound
    assert await box.get() == 1
    await asyncio.wait_for(waiting, 1)
    assert [box.get_nowait(), box.get_nowait()] == [2, 3]


async def test_detached_producers_never_wait_and_the_oldest_deltas_go_first() -> None:
    box = Outbox(3)
    box.put_nowait(delta(1))
    box.put_nowait(final(1))
    box.put_nowait(delta(2))
    blocked = asyncio.create_task(box.put(final(2)))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    box.detach()  # the connection dropped: a producer waiting for space goes on
    await asyncio.wait_for(blocked, 1)
    kept = [type(i.event).__name__ + str(i.event.item) for i in box.items()]
    assert kept == ["TextFinal1", "TextDelta2", "TextFinal2"]
    assert box.dropped_deltas == 1
    box.put_nowait(final(3))
    box.put_nowait(final(4))  # no delta left to drop: finals are never dropped, even past the bound
    assert [i.event.item for i in box.items()] == [1, 2, 3, 4] and box.qsize() == 4
    tick = SessionMetrics("sess", {}, 0, "normal", "whisper", "closed")
    box.put_nowait(tick)  # stale status is not kept while nobody reads
    box.put_nowait(Backpressure("mic", "high", 1, 0, 4000))
    assert box.qsize() == 4 and box.dropped_transient == 2


async def test_put_front_and_attach_again() -> None:
    box = Outbox(4)
    box.put_nowait(final(2))
    box.detach()
    box.put_front(final(1))  # the item a failing sender had taken
    box.attach()
    assert [box.get_nowait().event.item, (await box.get()).event.item] == [1, 2]
    box.put_nowait(1)
    box.put_nowait(2)
    box.put_nowait(3)
    box.put_nowait(4)
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait(5)
