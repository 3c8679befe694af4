"""Per-source queues at N and N+1, shedding and blocking, backpressure rising and falling (real Session)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from echopanel.config import Settings
from echopanel.events import Backpressure
from echopanel.session.session import Session

from fakes.engines import GatedEngine

MS = 32  # bytes of PCM16 per ms at 16 kHz


def settings(tmp: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp, mic_queue_ms=400, system_queue_ms=200, **kw)  # type: ignore[arg-type]


def drain_backpressure(session: Session) -> list[Backpressure]:
    out = []
    while not session.outbox.empty():
        item = session.outbox.get_nowait()
        if isinstance(item, Backpressure):
            out.append(item)
    return out


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_shed_at_n_plus_one_not_at_n_and_backpressure_rises_and_falls(tmp_path: Path) -> None:
    engine = GatedEngine()
    session = Session(engine=engine, settings=settings(tmp_path), sources=["mic", "system"], sample_rate=16000)
    session.start()
    engine.gate.clear()  # the recognizer is stuck: nothing leaves the queues
    try:
        await session.append("system", b"\x00" * 100 * MS)  # the feeder takes this one and blocks in push()
        await settle()
        for _ in range(2):
            await session.append("system", b"\x00" * 100 * MS)  # exactly N = 200 ms queued
        system = session.sources["system"]
        assert system.queue.queued_samples == 200 * 16 and system.queue.dropped_samples == 0
        levels = [b.level for b in drain_backpressure(session)]
        assert levels[-1] == "high"
        await session.append("system", b"\x00" * 100 * MS)  # N + 1: the oldest queued chunk is shed
        assert system.queue.dropped_samples == 100 * 16 and system.queue.queued_samples == 200 * 16
        assert system.queue.shed_spans == [[100 * 16, 200 * 16]]
        bp = drain_backpressure(session)
        assert bp[-1].level == "shedding" and bp[-1].dropped_ms == 100 and bp[-1].limit_ms == 200
        # The microphone's larger bound holds the same audio without loss.
        for _ in range(4):
            await session.append("mic", b"\x00" * 100 * MS)
        assert session.sources["mic"].queue.dropped_samples == 0
        assert system.recording.samples == 400 * 16  # everything accepted was recorded, shed or not
        engine.gate.set()  # the recognizer catches up
        await asyncio.sleep(1.2)  # past the shedding hold
        await session.append("system", b"\x00" * 10 * MS)
        await settle()
        assert [b.level for b in drain_backpressure(session)][-1] == "normal"
        stream = next(s for s in engine.streams if s.options.source == "system")
        assert stream.skipped == [100 * 16]  # the recognizer's clock jumped over the shed span
    finally:
        await session.aclose()


async def test_block_policy_waits_at_n_plus_one(tmp_path: Path) -> None:
    engine = GatedEngine()
    session = Session(engine=engine, settings=settings(tmp_path), sources=["mic"], sample_rate=16000, overflow="block")
    session.start()
    engine.gate.clear()
    try:
        await session.append("mic", b"\x00" * 100 * MS)
        await settle()
        for _ in range(4):
            await session.append("mic", b"\x00" * 100 * MS)  # N = 400 ms: accepted at once
        blocked = asyncio.create_task(session.append("mic", b"\x00" * 100 * MS))  # N + 1 waits
        await asyncio.sleep(0.2)
        assert not blocked.done()
        assert session.sources["mic"].queue.dropped_samples == 0
        engine.gate.set()
        await asyncio.wait_for(blocked, 2)
    finally:
        await session.aclose()


@pytest.mark.parametrize("overflow", ["shed", "block"])
async def test_large_single_chunk_passes_alone(tmp_path: Path, overflow: str) -> None:
    engine = GatedEngine()
    session = Session(engine=engine, settings=settings(tmp_path), sources=["mic"], sample_rate=16000, overflow=overflow)
    session.start()
    try:
        await asyncio.wait_for(session.append("mic", b"\x00" * 1000 * MS), 2)  # 1 s > the 400 ms bound
        assert session.sources["mic"].queue.dropped_samples == 0
    finally:
        await session.aclose()
