"""The shared priority work queue (inference/pool.py) under both of its users' hooks: reserved slots, affinity."""

from __future__ import annotations

import asyncio
import threading

from echopanel.inference.pool import Job, JobKind, Slot, WorkerPool


class KeyedSlot(Slot):
    def __init__(self, index: int, holds: str | None) -> None:
        super().__init__(index)
        self.holds = holds


class AffinePool(WorkerPool[str, str]):
    """One slot that holds ``holds`` open (as a pocketsphinx process holds an item) and records what it ran."""

    def __init__(self, holds: str | None) -> None:
        super().__init__(1, name="affine")
        self.holds = holds
        self.gate = threading.Event()
        self.ran: list[str] = []

    def _new_slot(self, index: int) -> Slot:
        return KeyedSlot(index, self.holds)

    def _prefers(self, slot: Slot, job: Job[str]) -> bool:
        assert isinstance(slot, KeyedSlot)
        return slot.holds is not None and job.key == slot.holds

    def _run(self, slot: Slot, job: Job[str]) -> str:
        if job.payload == "block":
            self.gate.wait(5)
        self.ran.append(job.payload)
        return job.payload

    def submit(self, name: str, kind: JobKind, priority: int = 0, key: str = "") -> asyncio.Future[object]:
        return self._enqueue(name, kind=kind, priority=priority, key=key)


async def run_queue(pool: AffinePool, jobs: list[tuple[str, JobKind, int, str]]) -> list[str]:
    pool.start()
    try:
        blocker = pool.submit("block", JobKind.FINAL)
        await asyncio.sleep(0.05)  # the only slot is busy: everything below queues
        futures = [pool.submit(*job) for job in jobs]
        pool.gate.set()
        await asyncio.gather(blocker, *futures)
    finally:
        pool.stop()
    return pool.ran[1:]


async def test_a_slot_prefers_the_item_it_holds_within_the_best_class_only() -> None:
    jobs = [
        ("partial-a", JobKind.PARTIAL, 0, "a"),
        ("partial-b", JobKind.PARTIAL, 0, "b"),  # newer than partial-a, but the slot holds b
        ("partial-system-b2", JobKind.PARTIAL, 1, "b2"),
        ("final-c", JobKind.FINAL, 0, "c"),  # a final beats any preference
    ]
    assert await run_queue(AffinePool(holds="b"), jobs) == ["final-c", "partial-b", "partial-a", "partial-system-b2"]
    assert await run_queue(AffinePool(holds=None), jobs) == ["final-c", "partial-a", "partial-b", "partial-system-b2"]


async def test_a_reserved_slot_takes_only_streams_up_to_its_priority() -> None:
    class MicOnly(AffinePool):
        def _new_slot(self, index: int) -> Slot:
            slot = KeyedSlot(index, None)
            slot.max_priority = 0
            return slot

    pool = MicOnly(holds=None)
    pool.start()
    try:
        system = pool.submit("system", JobKind.FINAL, priority=1)
        mic = pool.submit("mic", JobKind.PARTIAL, priority=0)
        await asyncio.wait_for(mic, 5)
        await asyncio.sleep(0.1)
        assert not system.done() and pool.queued == 1  # nobody may take the system job
    finally:
        pool.stop()
    await asyncio.sleep(0.01)  # the cancellation is posted to this loop
    assert system.cancelled()  # stopping cancels what is still queued


async def test_background_jobs_come_after_every_live_one() -> None:
    jobs = [
        ("file-1", JobKind.BACKGROUND, 9, "f"),
        ("partial-system", JobKind.PARTIAL, 1, "s"),
        ("final-mic", JobKind.FINAL, 0, "m"),
        ("file-2", JobKind.BACKGROUND, 9, "f"),
    ]
    assert await run_queue(AffinePool(holds="f"), jobs) == ["final-mic", "partial-system", "file-1", "file-2"]


class TwoSlots(WorkerPool[str, str]):
    """Two slots; each job waits on its own gate, so the test decides when it ends."""

    def __init__(self) -> None:
        super().__init__(2, name="two")
        self.gates: dict[str, threading.Event] = {}
        self.started: list[str] = []

    def _run(self, slot: Slot, job: Job[str]) -> str:
        self.started.append(job.payload)
        self.gates.setdefault(job.payload, threading.Event()).wait(5)
        return job.payload

    def submit(self, name: str, kind: JobKind) -> asyncio.Future[object]:
        self.gates.setdefault(name, threading.Event())
        return self._enqueue(name, kind=kind, priority=9 if kind == JobKind.BACKGROUND else 0)


async def test_one_background_job_at_a_time_and_outside_the_load_figures() -> None:
    pool = TwoSlots()
    pool.start()
    try:
        first = pool.submit("file-1", JobKind.BACKGROUND)
        second = pool.submit("file-2", JobKind.BACKGROUND)
        await asyncio.sleep(0.2)
        assert pool.started == ["file-1"]  # the other worker stays free for live work
        live = pool.submit("final", JobKind.FINAL)
        await asyncio.sleep(0.1)
        assert pool.started == ["file-1", "final"]
        busy, finals = pool.busy_seconds()
        assert 0 < busy == finals < 0.2  # only the live final counts as load
        pool.gates["final"].set()
        pool.gates["file-1"].set()
        await asyncio.wait_for(asyncio.gather(first, live), 5)
        await asyncio.sleep(0.1)
        assert pool.started[-1] == "file-2"  # the background turn passed on
        pool.gates["file-2"].set()
        await asyncio.wait_for(second, 5)
        assert pool.background_compute_s > 0.2 and not pool.partial_waits
    finally:
        pool.stop()
