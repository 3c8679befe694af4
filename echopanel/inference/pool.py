"""Worker threads over one priority queue: what the inference scheduler and the pocketsphinx pool share.

Jobs wait in one queue, in this order: finals before partials, then the stream's priority (microphone before system
audio), then age; background jobs (file transcription) come after every live one, run on one worker at a time (so
a live decode always has a worker within one background decode), and stay out of the busy time and the waits that
drive the degrade ladder. Each worker is a ``Slot`` (a thread, and whatever it drives: nothing for the scheduler, a
decoder process for pocketsphinx) and takes the first job it may run:

- ``Slot.max_priority`` reserves a slot for streams up to that priority (the scheduler keeps one for the microphone);
- ``WorkerPool._prefers(slot, job)`` is the affinity hook: among the jobs of the best class (same kind and priority),
  a slot takes one it prefers first (pocketsphinx: the item whose utterance its process holds open).

A job cancelled before a worker takes it is skipped. ``_run(slot, job)`` does the work on the slot's thread; the
result (value, time waited, time computed) or the exception goes back to the event loop that submitted the job.

Time limits: a job may carry ``timeout_s``, counted from when a worker starts it. What happens past it belongs to the
pool, because only it knows what can be stopped: a worker that can watch its own deadline (pocketsphinx, waiting on
its process's pipe) kills what it drives and fails the job; a thread stuck inside a call cannot be stopped, so the
scheduler's watchdog ``abandon``s it: the job fails at once and a new thread takes the slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")
P = TypeVar("P")  # what a job carries: a callable (scheduler), a decode request (pocketsphinx)


class DecodeTimeout(TimeoutError):
    """A job ran past its time limit and was abandoned."""


class JobKind(IntEnum):
    FINAL = 0
    PARTIAL = 1
    BACKGROUND = 2  # file transcription: after every live decode, on one worker at a time, outside the load figures


@dataclass(slots=True, frozen=True)
class JobResult(Generic[T]):
    value: T
    wait_s: float
    compute_s: float


@dataclass(order=True)
class Job(Generic[P]):
    order: tuple[int, int, float, int]  # kind, priority, enqueued at, sequence number
    payload: P = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    key: str = field(default="", compare=False)  # stream and item (affinity)
    timeout_s: float | None = field(default=None, compare=False)

    @property
    def kind(self) -> int:
        return self.order[0]

    @property
    def priority(self) -> int:
        return self.order[1]

    @property
    def enqueued(self) -> float:
        return self.order[2]


@dataclass(eq=False)
class Slot:
    """One worker of a pool."""

    index: int
    max_priority: int | None = None  # takes only jobs of streams with priority <= this (None: every job)
    thread: threading.Thread | None = None
    job: Job[Any] | None = None  # the job it runs now
    started: float = 0.0  # when it started that job
    abandoned: bool = False  # given up on (its thread exits whenever its call returns)

    def may_take(self, job: Job[Any]) -> bool:
        return self.max_priority is None or job.priority <= self.max_priority


class WorkerPool(Generic[P, T]):
    """``workers`` slots, one thread each, over one priority queue; subclasses say what a job is (``_run``)."""

    stopped_message = "the worker pool is stopped"

    def __init__(self, workers: int, *, name: str) -> None:
        self.workers = workers
        self.name = name  # worker threads are "<name>-<index>"
        self._heap: list[Job[P]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._slots: list[Slot] = []  # live slots (an abandoned one leaves, its replacement joins)
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.abandoned = 0  # jobs abandoned past their time limit (each one's thread was replaced)
        self.busy = 0
        self.completed = 0
        self.compute_s_total = 0.0
        self.final_compute_s = 0.0
        self.background_compute_s = 0.0
        self.final_waits: deque[tuple[float, float]] = deque(maxlen=512)  # (done at, waited s) of finals
        self.partial_waits: deque[tuple[float, float]] = deque(maxlen=512)

    # -- hooks -------------------------------------------------------------------------------------------------------

    def _new_slot(self, index: int) -> Slot:
        """The slot at ``index`` (also when a new thread replaces an abandoned one)."""
        return Slot(index)

    def _slot_started(self, slot: Slot) -> None:
        """Runs on the slot's thread before it takes work (pocketsphinx starts its process here)."""

    def _prefers(self, slot: Slot, job: Job[P]) -> bool:
        """Affinity: whether ``slot`` would rather run ``job`` than other jobs of the same class."""
        return False

    def _run(self, slot: Slot, job: Job[P]) -> T:
        """Do the job on the slot's thread; its value or exception goes to the job's future."""
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads (idempotent; a stopped pool starts again)."""
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            for i in range(self.workers):
                self._spawn(self._new_slot(i))

    def stop(self) -> None:
        """Cancel queued jobs and wait (at most 5 s each) for the workers to finish what they run."""
        self._halt()
        self._join()

    def _halt(self) -> None:
        with self._cond:
            self._stopping = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for job in pending:
            post(job.loop, cancel_once, job.future)

    def _join(self) -> None:
        for slot in list(self._slots):
            if slot.thread is not None and not slot.abandoned:
                slot.thread.join(timeout=5)
        with self._cond:
            self._threads.clear()
            self._slots.clear()

    def _spawn(self, slot: Slot) -> None:
        """Called with the lock held."""
        t = threading.Thread(target=self._serve, args=(slot,), name=f"{self.name}-{slot.index}", daemon=True)
        slot.thread = t
        self._slots.append(slot)
        self._threads.append(t)
        t.start()

    # -- jobs --------------------------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._heap)

    def _enqueue(
        self, payload: P, *, kind: JobKind, priority: int = 0, key: str = "", timeout_s: float | None = None
    ) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        job = Job((int(kind), priority, time.monotonic(), next(self._seq)), payload, future, loop, key, timeout_s)
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError(self.stopped_message))
                return future
            heapq.heappush(self._heap, job)
            self._cond.notify_all()  # a reserved slot may not take it; let every slot look
        return future

    def _take(self, slot: Slot) -> Job[P] | None:
        """The first job in queue order this slot may run, or one it prefers of the same class. Lock held."""
        heap = self._heap
        while heap and heap[0].future.cancelled():
            heapq.heappop(heap)
        if not heap:
            return None
        background_running = any(s.job is not None and s.job.kind == JobKind.BACKGROUND for s in self._slots)

        def may(job: Job[P]) -> bool:
            return slot.may_take(job) and not (job.kind == JobKind.BACKGROUND and background_running)

        best: Job[P] | None = heap[0]
        if not may(heap[0]):
            best = next((j for j in sorted(heap) if may(j) and not j.future.cancelled()), None)
            if best is None:
                return None
        assert best is not None
        if not self._prefers(slot, best):
            for job in heap:  # at most one job per stream: small
                if (
                    job.order[:2] == best.order[:2]
                    and self._prefers(slot, job)
                    and may(job)
                    and not job.future.cancelled()
                ):
                    best = job
                    break
        if best is heap[0]:
            return heapq.heappop(heap)
        heap.remove(best)
        heapq.heapify(heap)
        return best

    def _serve(self, slot: Slot) -> None:
        self._slot_started(slot)
        while True:
            with self._cond:
                job = None
                while not self._stopping and (job := self._take(slot)) is None:
                    self._cond.wait()
                if self._stopping or job is None:
                    return
                if job.future.cancelled():
                    continue
                self.busy += 1
                started = time.monotonic()
                slot.job, slot.started = job, started
                if job.timeout_s is not None:
                    self._cond.notify_all()  # a watchdog learns the new deadline
            try:
                value = self._run(slot, job)
            except BaseException as exc:
                post(job.loop, set_exception_once, job.future, exc)
            else:
                result = JobResult(value, started - job.enqueued, time.monotonic() - started)
                post(job.loop, set_result_once, job.future, result)
            with self._cond:
                slot.job = None
                if slot.abandoned:
                    return  # the pool gave up on this call and put a new thread in our place
                self._account(job, started, time.monotonic(), waited=True)

    def _account(self, job: Job[P], started: float, end: float, *, waited: bool) -> None:
        """A job left its slot (done, or abandoned). Lock held."""
        self.busy -= 1
        self.completed += 1
        if job.kind == JobKind.BACKGROUND:  # not live load: the ladder and the cadence look at live work only
            self.background_compute_s += end - started
            self._cond.notify_all()  # the background turn is free
            return
        self.compute_s_total += end - started
        if job.kind == JobKind.FINAL:
            self.final_compute_s += end - started
        if waited:
            waits = self.final_waits if job.kind == JobKind.FINAL else self.partial_waits
            waits.append((end, started - job.enqueued))

    def abandon(self, slot: Slot, exc: BaseException) -> None:
        """Give up on the job ``slot`` runs: it fails with ``exc`` now, and a new thread takes the slot's place (the
        old one exits whenever its call returns; its result is dropped). Lock held."""
        job = slot.job
        if job is None or slot.abandoned:
            return
        now = time.monotonic()
        slot.abandoned = True
        self._slots.remove(slot)
        if slot.thread is not None and slot.thread in self._threads:
            self._threads.remove(slot.thread)
        self.abandoned += 1
        self._account(job, slot.started, now, waited=False)
        post(job.loop, set_exception_once, job.future, exc)
        self._spawn(self._new_slot(slot.index))

    # -- measurements ------------------------------------------------------------------------------------------------

    def busy_seconds(self) -> tuple[float, float]:
        """Compute time spent so far (all jobs, finals only), running jobs included: utilization over a window."""
        now = time.monotonic()
        with self._cond:
            running = [
                (now - s.started, s.job.kind)
                for s in self._slots
                if s.job is not None and s.job.kind != JobKind.BACKGROUND
            ]
            total = self.compute_s_total + sum(t for t, _ in running)
            finals = self.final_compute_s + sum(t for t, k in running if k == JobKind.FINAL)
        return total, finals

    def waits_since(self, kind: JobKind, since: float) -> list[float]:
        """How long the jobs of ``kind`` that ended since ``since`` waited for a worker (seconds)."""
        waits = self.final_waits if kind == JobKind.FINAL else self.partial_waits
        with self._cond:
            return [w for t, w in waits if t >= since]


def set_result_once(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def set_exception_once(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def cancel_once(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.cancel()


def post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` on ``loop`` from a worker thread."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
