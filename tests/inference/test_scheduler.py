import asyncio
import threading
import time

import numpy as np
import pytest

from echopanel.inference.scheduler import DecodeTimeout, InferenceScheduler, JobKind
from echopanel.metrics import percentile


async def test_finals_before_partials_then_priority_then_age() -> None:
    sched = InferenceScheduler(workers=1)
    gate = threading.Event()
    order: list[str] = []
    sched.start()
    try:
        blocker = sched.submit(gate.wait, kind=JobKind.FINAL)
        await asyncio.sleep(0.05)  # the single worker is now busy
        jobs = [
            sched.submit(lambda: order.append("partial-system"), kind=JobKind.PARTIAL, priority=1),
            sched.submit(lambda: order.append("partial-mic"), kind=JobKind.PARTIAL, priority=0),
            sched.submit(lambda: order.append("final-system-old"), kind=JobKind.FINAL, priority=1),
            sched.submit(lambda: order.append("final-mic"), kind=JobKind.FINAL, priority=0),
            sched.submit(lambda: order.append("final-system-new"), kind=JobKind.FINAL, priority=1),
        ]
        gate.set()
        await asyncio.gather(blocker, *jobs)
    finally:
        sched.stop()
    assert order == ["final-mic", "final-system-old", "final-system-new", "partial-mic", "partial-system"]


async def test_cancelled_job_is_skipped_and_errors_reach_the_caller() -> None:
    sched = InferenceScheduler(workers=1)
    gate = threading.Event()
    ran: list[str] = []
    sched.start()
    try:
        blocker = sched.submit(gate.wait, kind=JobKind.FINAL)
        await asyncio.sleep(0.05)
        stale = sched.submit(lambda: ran.append("stale"), kind=JobKind.PARTIAL)
        stale.cancel()

        def boom() -> None:
            raise ValueError("engine fault")

        failing = sched.submit(boom, kind=JobKind.FINAL)
        gate.set()
        await blocker
        try:
            await failing
        except ValueError as exc:
            assert str(exc) == "engine fault"
        else:
            raise AssertionError("expected the job's exception")
    finally:
        sched.stop()
    assert ran == []


async def test_jobs_run_off_the_event_loop_in_parallel() -> None:
    sched = InferenceScheduler(workers=2)
    barrier = threading.Barrier(2, timeout=5)
    sched.start()
    try:
        loop_thread = threading.get_ident()
        ids = await asyncio.gather(
            sched.submit(lambda: (barrier.wait(), threading.get_ident())[1], kind=JobKind.PARTIAL),
            sched.submit(lambda: (barrier.wait(), threading.get_ident())[1], kind=JobKind.PARTIAL),
        )
    finally:
        sched.stop()
    workers = {r.value for r in ids}
    assert len(workers) == 2 and loop_thread not in workers


async def test_a_hung_job_is_abandoned_and_its_worker_replaced() -> None:
    """A job past its time limit fails with DecodeTimeout; a new thread takes its place, so the pool keeps serving."""
    sched = InferenceScheduler(workers=1)
    hang = threading.Event()
    sched.start()
    try:
        hung = sched.submit(lambda: hang.wait(30), kind=JobKind.FINAL, timeout_s=0.3)
        with pytest.raises(DecodeTimeout):
            await asyncio.wait_for(hung, 5)
        assert sched.abandoned == 1 and sched.busy == 0
        # The only worker is stuck in hang.wait(), yet a new job runs: the replacement thread took it.
        done = await asyncio.wait_for(sched.submit(lambda: "ok", kind=JobKind.FINAL, timeout_s=5), 5)
        assert done.value == "ok"
        assert sum(t.is_alive() and t.name == "inference-0" for t in threading.enumerate()) == 2
        hang.set()  # the stuck call returns; its thread exits and its result is dropped
        for _ in range(100):
            if sum(t.name == "inference-0" for t in threading.enumerate()) == 1:
                break
            await asyncio.sleep(0.02)
        assert sum(t.name == "inference-0" for t in threading.enumerate()) == 1
        assert sched.abandoned == 1
    finally:
        hang.set()
        sched.stop()


async def test_a_job_within_its_limit_is_not_abandoned() -> None:
    sched = InferenceScheduler(workers=1)
    sched.start()
    try:
        result = await sched.submit(lambda: time.sleep(0.05) or 7, kind=JobKind.PARTIAL, timeout_s=2.0)
        assert result.value == 7 and sched.abandoned == 0
    finally:
        sched.stop()


def test_wait_p95_is_the_lower_percentile_of_the_window() -> None:
    """The degrade ladder's load signal: p95 of the waits of jobs that ended in the window, numpy's "lower" rule
    (the one the ladder's thresholds were tuned on; echopanel/metrics.py says what "linear" did to it)."""
    sched = InferenceScheduler(workers=1)
    waits = [0.1, 0.2, 0.3, 0.4, 1.0]
    sched.final_waits.append((10.0, 9.0))  # ended before the window: not counted
    sched.final_waits.extend((100.0 + i, w) for i, w in enumerate(waits))
    assert sched.final_wait_p95(since=50.0) == pytest.approx(float(np.percentile(waits, 95, method="lower")))  # 0.4
    assert sched.partial_wait_p95(since=0.0) == 0.0  # no partials: no wait


def test_one_percentile_rule() -> None:
    values = list(np.random.default_rng(1).random(37))
    for q in (0.0, 0.05, 0.5, 0.95, 1.0):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))
        assert percentile(values, q, method="lower") == float(np.percentile(values, q * 100, method="lower"))
    assert percentile([3.0], 0.95) == 3.0 and percentile([], 0.5) is None
    with pytest.raises(ValueError):
        percentile(values, 95)  # a fraction, not a percentage
    with pytest.raises(ValueError):
        percentile(values, 0.5, method="nearest")
