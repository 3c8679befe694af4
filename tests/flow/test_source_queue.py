"""The per-source queue as a pure state machine: the clock is an argument, so no test sleeps."""

from __future__ import annotations

import numpy as np
import pytest

from echopanel.flow.source_queue import Chunk, MarkersFull, SourceQueue

RATE = 16000


def chunk(offset: int, samples: int) -> Chunk:
    return Chunk(offset, np.zeros(samples, np.float32))


def queue(limit: int = 300, markers: int = 3) -> SourceQueue[str]:
    return SourceQueue("mic", rate=RATE, limit_samples=limit, max_markers=markers, hold_s=1.0, repeat_s=0.5)


def test_audio_at_n_is_kept_and_at_n_plus_one_the_oldest_is_shed() -> None:
    q = queue(limit=300)
    for i in range(3):
        q.put(chunk(i * 100, 100), now=0.0)
    assert q.queued_samples == 300 and q.dropped_samples == 0 and not q.shed_spans  # exactly N
    assert q.would_block(1)
    q.put(chunk(300, 100), now=1.0)  # N + 1: the oldest queued chunk goes
    assert q.queued_samples == 300 and q.dropped_samples == 100 and q.shed_spans == [[0, 100]]
    q.put(chunk(400, 100), now=1.1)
    assert q.shed_spans == [[0, 200]]  # touching spans merge
    assert [q.pop().offset for _ in range(3)] == [200, 300, 400]  # type: ignore[union-attr]
    assert q.queued_samples == 0 and q.max_queued_samples == 300


def test_a_lone_chunk_larger_than_the_bound_passes() -> None:
    q = queue(limit=300)
    assert not q.would_block(1000)
    q.put(chunk(0, 1000), now=0.0)
    assert q.queued_samples == 1000 and q.dropped_samples == 0


def test_shed_spans_of_audio_that_was_never_queued() -> None:
    q = queue()
    q.shed(0, 160, now=0.0)
    q.shed(160, 320, now=0.1)
    q.shed(480, 640, now=0.2)
    assert q.shed_spans == [[0, 320], [480, 640]] and q.dropped_samples == 480
    q.shed(700, 700, now=0.3)  # empty: nothing
    assert q.dropped_samples == 480


def test_control_markers_are_bounded_at_n_and_n_plus_one() -> None:
    q = queue(markers=3)
    for name in ("commit", "request", "configure"):
        q.put_marker(name)  # exactly N
    with pytest.raises(MarkersFull):
        q.put_marker("commit")  # N + 1 is refused (the client gets a typed error)
    q.put_marker("flush", force=True)  # finalization's own marker always gets in
    assert q.markers == 4
    assert q.pop() == "commit" and q.markers == 3
    with pytest.raises(MarkersFull):
        q.put_marker("commit")  # the forced one counts too
    assert q.pop() == "request" and q.markers == 2
    q.put_marker("commit")  # room again
    assert len(q) == 3


def test_markers_keep_their_place_among_the_audio_and_survive_a_clear() -> None:
    q = queue(limit=1000)
    q.put(chunk(0, 100), now=0.0)
    q.put_marker("commit")
    q.put(chunk(100, 100), now=0.0)
    q.put(chunk(200, 100), now=0.0)
    assert q.clear_audio() == 300  # every queued chunk goes, the marker stays
    assert q.queued_samples == 0 and q.dropped_samples == 0 and not q.shed_spans  # a clear is not a shed
    assert q.pop() == "commit" and len(q) == 0


def test_a_full_queue_sheds_audio_not_markers() -> None:
    q = queue(limit=200)
    q.put(chunk(0, 100), now=0.0)
    q.put_marker("commit")
    q.put(chunk(100, 100), now=0.0)
    q.put(chunk(200, 100), now=0.0)
    assert q.shed_spans == [[0, 100]]
    assert q.pop() == "commit"


def test_backpressure_level_rises_repeats_while_shedding_and_falls() -> None:
    q = queue(limit=300)
    assert q.notice(0.0) is None  # normal, as it started
    q.put(chunk(0, 100), now=0.0)
    assert q.notice(0.0) is None  # a third of the bound
    q.put(chunk(100, 100), now=0.1)
    high = q.notice(0.1)
    assert high is not None and high.level == "high" and high.queued_ms == 200 * 1000 // RATE
    assert q.notice(0.2) is None  # no change, no repeat
    q.put(chunk(200, 100), now=0.3)
    q.put(chunk(300, 100), now=0.3)  # sheds
    shed = q.notice(0.3)
    assert shed is not None and shed.level == "shedding" and shed.dropped_ms == 100 * 1000 // RATE
    assert q.notice(0.6) is None  # within repeat_s
    again = q.notice(0.8)  # still shedding: repeated every repeat_s
    assert again is not None and again.level == "shedding"
    while len(q):
        q.pop()
    assert q.level_at(1.2) == "shedding"  # held for hold_s after the last drop
    normal = q.notice(1.31)
    assert normal is not None and normal.level == "normal" and normal.limit_ms == 300 * 1000 // RATE


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SourceQueue("mic", rate=RATE, limit_samples=0)
    with pytest.raises(ValueError):
        SourceQueue("mic", rate=RATE, limit_samples=1, max_markers=0)
