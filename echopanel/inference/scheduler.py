"""One inference scheduler shared by every session.

Jobs are blocking callables (a decode on the shared model) run by a fixed pool of worker threads, never on the
event loop. Order: finals before partials, then the stream's priority (microphone before system audio), then
oldest first. A job cancelled before a worker picks it up is skipped (a stale partial replaced by a newer need).
The queue is bounded by construction: each stream has at most one job queued or running at a time.

A job may carry a time limit (``timeout_s``, counted from when a worker starts it). A job still running past it is
abandoned: its future fails with ``DecodeTimeout`` at once, and a new worker thread takes the stuck one's place, so
the pool keeps its size and other sessions are not stalled. The stuck thread exits whenever its call returns; its
result is discarded. (A thread cannot be killed; engines in worker processes kill the process instead.)
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


class DecodeTimeout(TimeoutError):
    """A job ran past its time limit and was abandoned."""


class JobKind(IntEnum):
    FINAL = 0
    PARTIAL = 1


@dataclass(slots=True, frozen=True)
class JobResult(Generic[T]):
    value: T
    wait_s: float
    compute_s: float


@dataclass(order=True)
class _Job:
    key: tuple[int, int, float, int]
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    enqueued: float = field(compare=False)
    timeout_s: float | None = field(default=None, compare=False)


@dataclass(eq=False)
class _Worker:
    index: int
    thread: threading.Thread | None = None
    job: _Job | None = None
    started: float = 0.0
    abandoned: bool = False


class InferenceScheduler:
    def __init__(self, workers: int = 2, name: str = "inference") -> None:
        self.workers = workers
        self.name = name
        self._heap: list[_Job] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []
        self._workers: list[_Worker] = []
        self._watchdog: threading.Thread | None = None
        self._stopping = False
        self.abandoned = 0  # jobs abandoned past their time limit (each one's thread was replaced)
        self.busy = 0
        self.completed = 0
        self.compute_s_total = 0.0
        self._running: dict[int, tuple[float, int]] = {}  # job seq -> (start time, kind)
        self.final_compute_s = 0.0
        self.final_waits: deque[tuple[float, float]] = deque(maxlen=512)  # (done at, waited s) of finals
        self.partial_waits: deque[tuple[float, float]] = deque(maxlen=512)

    def start(self) -> None:
        if self._threads:
            return
        self._stopping = False
        for i in range(self.workers):
            self._spawn(_Worker(i))
        self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
        self._watchdog.start()

    def _spawn(self, worker: _Worker) -> None:
        t = threading.Thread(target=self._worker, args=(worker,), name=f"{self.name}-{worker.index}", daemon=True)
        worker.thread = t
        self._workers.append(worker)
        self._threads.append(t)
        t.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for job in pending:
            post(job.loop, cancel_once, job.future)
        for w in self._workers:
            if w.thread is not None and not w.abandoned:
                w.thread.join(timeout=5)
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
            self._watchdog = None
        self._threads.clear()
        self._workers.clear()

    @property
    def queued(self) -> int:
        return len(self._heap)

    def busy_seconds(self) -> tuple[float, float]:
        """Compute time spent so far (all jobs, finals only), running jobs included: utilization over a window."""
        now = time.monotonic()
        with self._cond:
            total = self.compute_s_total + sum(now - t for t, _ in self._running.values())
            finals = self.final_compute_s + sum(now - t for t, k in self._running.values() if k == JobKind.FINAL)
        return total, finals

    def final_wait_p95(self, since: float) -> float:
        return self._p95(self.final_waits, since)

    def partial_wait_p95(self, since: float) -> float:
        return self._p95(self.partial_waits, since)

    def _p95(self, waits: deque[tuple[float, float]], since: float) -> float:
        with self._cond:
            recent = sorted(w for t, w in waits if t >= since)
        return recent[int(0.95 * (len(recent) - 1))] if recent else 0.0

    def submit(
        self, fn: Callable[[], T], *, kind: JobKind, priority: int = 0, timeout_s: float | None = None
    ) -> asyncio.Future[JobResult[T]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult[T]] = loop.create_future()
        now = time.monotonic()
        job = _Job((int(kind), priority, now, next(self._seq)), fn, future, loop, now, timeout_s)
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError("inference scheduler is stopped"))
                return future
            heapq.heappush(self._heap, job)
            self._cond.notify_all()  # a reserved worker may not take it; let every worker look
        return future

    def _take(self, max_priority: int | None) -> _Job | None:
        """The first job in priority order this worker may run (None: nothing eligible)."""
        if max_priority is None:
            return heapq.heappop(self._heap) if self._heap else None
        for job in sorted(self._heap):  # at most one job per stream: small
            if job.key[1] <= max_priority:
                self._heap.remove(job)
                heapq.heapify(self._heap)
                return job
        return None

    def _worker(self, worker: _Worker) -> None:
        # With two or more workers, the last one is reserved for the microphone (priority 0): a mic final then
        # never waits behind system audio's work on it. The others take every job in priority order.
        reserved = 0 if self.workers > 1 and worker.index == self.workers - 1 else None
        while True:
            with self._cond:
                job = None
                while not self._stopping and (job := self._take(reserved)) is None:
                    self._cond.wait()
                if self._stopping or job is None:
                    return
                if job.future.cancelled():
                    continue
                self.busy += 1
                started = time.monotonic()
                self._running[job.key[3]] = (started, job.key[0])
                worker.job, worker.started = job, started
                if job.timeout_s is not None:
                    self._cond.notify_all()  # the watchdog learns the new deadline
            try:
                value = job.fn()
            except BaseException as exc:
                post(job.loop, set_exception_once, job.future, exc)
            else:
                done = time.monotonic()
                result = JobResult(value, started - job.enqueued, done - started)
                post(job.loop, set_result_once, job.future, result)
            with self._cond:
                worker.job = None
                if worker.abandoned:
                    return  # the watchdog gave up on this call and put a new thread in our place
                end = time.monotonic()
                self.busy -= 1
                self.completed += 1
                self.compute_s_total += end - started
                self._running.pop(job.key[3], None)
                if job.key[0] == JobKind.FINAL:
                    self.final_compute_s += end - started
                    self.final_waits.append((end, started - job.enqueued))
                else:
                    self.partial_waits.append((end, started - job.enqueued))

    def _watch(self) -> None:
        """Abandon jobs running past their time limit and replace their worker threads."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                next_deadline = None
                for w in list(self._workers):
                    job = w.job
                    if job is None or job.timeout_s is None or w.abandoned:
                        continue
                    deadline = w.started + job.timeout_s
                    if deadline <= now:
                        self._abandon(w, job, now)
                    elif next_deadline is None or deadline < next_deadline:
                        next_deadline = deadline
                self._cond.wait(1.0 if next_deadline is None else max(0.005, next_deadline - now))

    def _abandon(self, worker: _Worker, job: _Job, now: float) -> None:
        """Called with the lock held."""
        worker.abandoned = True
        self._workers.remove(worker)
        if worker.thread is not None and worker.thread in self._threads:
            self._threads.remove(worker.thread)
        self.abandoned += 1
        self.busy -= 1
        self.completed += 1
        self.compute_s_total += now - worker.started
        self._running.pop(job.key[3], None)
        if job.key[0] == JobKind.FINAL:
            self.final_compute_s += now - worker.started
        message = f"decode abandoned after {job.timeout_s:.1f} s; its worker was replaced"
        post(job.loop, set_exception_once, job.future, DecodeTimeout(message))
        self._spawn(_Worker(worker.index))


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
    """Run ``fn(*args)`` on ``loop`` from a worker thread (used by the pocketsphinx pool too)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
