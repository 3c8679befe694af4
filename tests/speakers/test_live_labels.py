"""SourceSpeakers: order, the pending bound at N and N+1, the wait bound, finalization of unlabelled items.

The audio reader is the real kind of function the session gives (a slice of real speech); to hold the pool, it
waits on a gate, like a slow disk would."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from speaker_streams import LIBRIVOX, SR, read

from echopanel.speakers.embedding import SpeakerEncoder
from echopanel.speakers.live import SourceSpeakers, SpeakerService, label_of_span
from echopanel.speakers.tracker import SpeakerTurn


def reader(audio: np.ndarray, gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    def read_ms(start_ms: int, end_ms: int) -> np.ndarray:
        if gate is not None:
            gate.wait(10)
        return audio[start_ms * SR // 1000 : end_ms * SR // 1000]

    return read_ms


@pytest.fixture()
def speech() -> np.ndarray:
    return np.concatenate([read(LIBRIVOX.format(n)) for n in ("0870", "0880", "0890")])


async def test_labels_in_order_and_the_pending_bound(encoder: SpeakerEncoder, speech: np.ndarray) -> None:
    service = SpeakerService(encoder, max_pending=2)
    gate = threading.Event()
    src = SourceSpeakers(service, "mic", reader(speech, gate))
    try:
        src.submit(1, 0, 2000)
        src.submit(2, 2000, 4000)  # N = 2 waiting: both taken
        src.submit(3, 4000, 6000)  # N + 1: no live label, labelled at finalization
        src.submit(4, 6000, 6100)  # too short to embed
        assert src.skipped == 1 and src.job(3) is None and src.job(4) is None
        assert await src.label(1, 0.05) is None and src.late == 1  # held by the gate: not ready within the wait
        gate.set()
        assert await src.label(1, 10) == "mic:S1"
        assert await src.label(2, 10) == "mic:S1"
        assert src.live_turns[2][0][:2] == (2000, 4000)
        labels, turns = await src.settle([(3, 4000, 6000), (4, 6000, 6100)])
        assert labels[1] == labels[2] == labels[3] == "mic:S1" and 4 not in labels  # 4: too short, no embedding
        assert turns[0].speaker == "mic:S1" and turns[-1].end_s == pytest.approx(6.0)
        stats = src.stats()
        assert stats["labelled"] == 3 and stats["late"] == 1 and stats["skipped"] == 1
    finally:
        gate.set()
        service.close()


async def test_a_failing_reader_gives_no_label_and_the_source_goes_on(encoder: SpeakerEncoder) -> None:
    service = SpeakerService(encoder)
    calls = 0

    def flaky(start_ms: int, end_ms: int) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk gone")
        return read(LIBRIVOX.format("0880"))[: (end_ms - start_ms) * SR // 1000]

    src = SourceSpeakers(service, "system", flaky)
    try:
        src.submit(1, 0, 2000)
        src.submit(2, 2000, 4000)
        assert await src.label(1, 10) is None
        assert await src.label(2, 10) == "system:S1"
    finally:
        service.close()


def test_label_of_span() -> None:
    turns = [SpeakerTurn(0.0, 1.0, "a"), SpeakerTurn(1.0, 3.0, "b")]
    assert label_of_span(turns, 0.0, 1.5) == "a"  # 1 s of a, 0.5 s of b
    assert label_of_span(turns, 0.5, 3.0) == "b"
    assert label_of_span(turns, 5.0, 6.0) is None


async def test_cancel_stops_waiting_jobs(encoder: SpeakerEncoder, speech: np.ndarray) -> None:
    service = SpeakerService(encoder)
    gate = threading.Event()
    src = SourceSpeakers(service, "mic", reader(speech, gate))
    src.submit(1, 0, 2000)
    src.submit(2, 2000, 4000)
    job = src.job(2)
    src.cancel()
    gate.set()
    await asyncio.sleep(0.05)
    assert job is not None and job.cancelled()
    assert src.job(2) is None  # a job that ended is not kept
    service.close()
