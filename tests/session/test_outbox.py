"""The session outbox: a bounded queue while attached; while detached, never waits and drops oldest deltas only;
control events (degrade notices, metrics, backpressure) overtake it and are never refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from echopanel.config import Settings
from echopanel.events import Backpressure, Degraded, SessionMetrics, SourceEvent, TextDelta, TextFinal
from echopanel.flow.ladder import Level
from echopanel.session.outbox import MAX_NOTICES, Outbox
from echopanel.session.session import Session

from fakes.engines import GatedEngine


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


async def test_control_events_overtake_a_full_outbox_and_are_never_refused() -> None:
    box = Outbox(2)
    box.put_nowait(delta(1))
    box.put_nowait(delta(2))
    blocked = asyncio.create_task(box.put(final(1)))  # a producer of data waits at the bound
    await asyncio.sleep(0.01)
    assert not blocked.done() and box.full()
    box.put_nowait(Degraded(1, "slow_partials", "high load"))  # never QueueFull, never waits
    await asyncio.wait_for(box.put(Degraded(2, "no_system_partials", "high load")), 1)
    box.put_nowait(Backpressure("mic", "high", 2100, 0, 4000))
    box.put_nowait(Backpressure("system", "high", 1100, 0, 2000))
    box.put_nowait(Backpressure("mic", "shedding", 3900, 300, 4000))  # replaces mic's unsent notice
    tick = SessionMetrics("sess", {}, 0, "normal", "whisper", "closed")
    box.put_nowait(tick)
    box.put_nowait(SessionMetrics("sess", {}, 1, "slow_partials", "whisper", "closed"))  # replaces the older tick
    taken = [box.get_nowait() for _ in range(box.qsize())]
    control = taken[:5]
    assert [type(e).__name__ for e in control] == [
        "Degraded", "Degraded", "Backpressure", "Backpressure", "SessionMetrics",
    ]  # fmt: skip
    assert [e.level for e in control[:2]] == [1, 2]  # every degrade step, in order
    assert [(e.source, e.level) for e in control[2:4]] == [("system", "high"), ("mic", "shedding")]
    assert control[4].degrade_level == 1 and box.replaced_control == 2
    assert taken[5:] == [delta(1), delta(2)]  # the data lane after, in its order
    await asyncio.wait_for(blocked, 1)  # room again: the waiting producer went on
    assert box.get_nowait() == final(1)


async def test_degrade_notices_past_their_bound_keep_the_newest() -> None:
    box = Outbox(1)
    for level in range(MAX_NOTICES + 3):
        box.put_nowait(Degraded(level, f"step{level}", "load"))
    levels = [box.get_nowait().level for _ in range(box.qsize())]  # type: ignore[union-attr]
    assert levels == list(range(3, MAX_NOTICES + 3))  # N kept, the oldest of N + 3 dropped


async def test_a_session_under_load_tells_the_client_although_its_outbox_is_full(tmp_path: Path) -> None:
    engine = GatedEngine()
    outbox = Outbox(4)
    session = Session(
        engine=engine, settings=Settings(data_dir=tmp_path), sources=["mic"], sample_rate=16000, outbox=outbox
    )
    session.start()
    try:
        for item in range(4):
            outbox.put_nowait(delta(item))  # a slow client: the data lane is at its bound
        session.degrade(Level.NO_PARTIALS)  # the ladder moves: the notice is not dropped at the bound
        assert isinstance(await asyncio.wait_for(outbox.get(), 1), Degraded)
        assert outbox.qsize() == 4 and outbox.get_nowait() == delta(0)  # the data lane waits its turn
    finally:
        await session.aclose()
