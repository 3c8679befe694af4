"""One inference scheduler shared by every session.

Jobs are blocking callables (a decode on the shared model) run by a fixed pool of worker threads, never on the
event loop. The queue and the worker loop are the shared ``WorkerPool`` (``inference/pool.py``): finals before
partials, then the stream's priority (microphone before system audio), then oldest first; a job cancelled before a
worker picks it up is skipped (a stale partial replaced by a newer need). The queue is bounded by construction: each
stream has at most one job queued or running at a time. With two or more workers, the last one is reserved for the
microphone (priority 0): a mic final then never waits behind system audio's work on it.

A job may carry a time limit (``timeout_s``, counted from when a worker starts it). A job still running past it is
abandoned by the watchdog: its future fails with ``DecodeTimeout`` at once, and a new worker thread takes the stuck
one's place, so the pool keeps its size and other sessions are not stalled. The stuck thread exits whenever its call
returns; its result is discarded. (A thread cannot be killed; engines in worker processes kill the process instead.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from echopanel.inference.pool import (
    DecodeTimeout,
    Job,
    JobKind,
    JobResult,
    Slot,
    WorkerPool,
    cancel_once,
    post,
    set_exception_once,
    set_result_once,
)
from echopanel.metrics import percentile

__all__ = [
    "DecodeTimeout",
    "InferenceScheduler",
    "JobKind",
    "JobResult",
    "cancel_once",
    "post",
    "set_exception_once",
    "set_result_once",
]

T = TypeVar("T")


class InferenceScheduler(WorkerPool[Callable[[], Any], Any]):
    stopped_message = "inference scheduler is stopped"

    def __init__(self, workers: int = 2, name: str = "inference") -> None:
        super().__init__(workers, name=name)
        self._watchdog: threading.Thread | None = None

    def _new_slot(self, index: int) -> Slot:
        reserved = 0 if self.workers > 1 and index == self.workers - 1 else None
        return Slot(index, max_priority=reserved)

    def _run(self, slot: Slot, job: Job[Callable[[], Any]]) -> Any:
        return job.payload()

    def start(self) -> None:
        with self._cond:
            if self._threads:
                return
        super().start()
        self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog", daemon=True)
        self._watchdog.start()

    def stop(self) -> None:
        super().stop()
        if self._watchdog is not None:
            self._watchdog.join(timeout=5)
            self._watchdog = None

    def submit(
        self, fn: Callable[[], T], *, kind: JobKind, priority: int = 0, timeout_s: float | None = None
    ) -> asyncio.Future[JobResult[T]]:
        return self._enqueue(fn, kind=kind, priority=priority, timeout_s=timeout_s)

    def final_wait_p95(self, since: float) -> float:
        """p95 wait of the finals that ended since ``since`` (0 if none): the flow controller's load signal."""
        return percentile(self.waits_since(JobKind.FINAL, since), 0.95, method="lower") or 0.0  # the ladder's rule

    def partial_wait_p95(self, since: float) -> float:
        return percentile(self.waits_since(JobKind.PARTIAL, since), 0.95, method="lower") or 0.0

    def _watch(self) -> None:
        """Abandon jobs running past their time limit; ``abandon`` replaces their worker threads."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                next_deadline = None
                for slot in list(self._slots):
                    job = slot.job
                    if job is None or job.timeout_s is None or slot.abandoned:
                        continue
                    deadline = slot.started + job.timeout_s
                    if deadline <= now:
                        message = f"decode abandoned after {job.timeout_s:.1f} s; its worker was replaced"
                        self.abandon(slot, DecodeTimeout(message))
                    elif next_deadline is None or deadline < next_deadline:
                        next_deadline = deadline
                self._cond.wait(1.0 if next_deadline is None else max(0.005, next_deadline - now))
