"""pocketsphinx, the fallback engine: decoders in worker processes, incremental partials.

pocketsphinx (CMU Sphinx, en-us model and 3-gram LM inside the PyPI wheel) is fast and small but inaccurate
(WER 25-85 % on our fixtures vs Whisper's 4-17 %). It is here so that captions go on, worse, when Whisper fails.

- It holds the GIL while decoding, so each decoder lives in its own process (``sphinx_worker.py``); a pool of
  ``workers`` processes (one decoder each, ~110 MB per process: docs/architecture.md has the measurement) serves
  every stream. Each process has one thread here that talks to it over pipes.
- Incremental: a process keeps the utterance it last decoded open. When the next request is for the same item
  (``DecodeRequest.key``) and extends the audio already fed, only the new audio is sent and searched, so a partial
  costs as much as the audio since the previous one. Slots prefer requests for the item they hold.
- Faults: a decode past ``timeout_s`` kills its process (``DecodeTimeout``); a process that exits mid-decode fails
  the decode (``WorkerDied``). Either way a new process takes the slot, so other streams are not stalled.
- It segments like every engine here: ``VadStreamingRecognizer`` (Silero VAD, local agreement) runs the stream,
  this module only decodes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echopanel.config import RecognizerSettings
from echopanel.engines.base import DecodePolicy, EngineCapabilities, SpeechEngine, SpeechStream, StreamOptions
from echopanel.engines.sphinx_worker import HEADER, LENGTH
from echopanel.events import Word
from echopanel.inference.jobs import Decoded, DecodeRequest, InjectedFault, WorkerDied
from echopanel.inference.scheduler import (
    DecodeTimeout,
    JobKind,
    JobResult,
    cancel_once,
    post,
    set_exception_once,
    set_result_once,
)
from echopanel.recognizer.stream import VadStreamingRecognizer
from echopanel.recognizer.vad import SileroVoiceDetector

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NAME = "pocketsphinx"
MODEL = "pocketsphinx 5.1.1 en-us (PTM acoustic model, 3-gram LM)"
START_TIMEOUT_S = 30.0


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


@dataclass(order=True)
class _Job:
    order: tuple[int, int, float, int]
    request: DecodeRequest = field(compare=False)
    future: asyncio.Future[JobResult[Decoded]] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    enqueued: float = field(compare=False)


class _Process:
    """One worker process and the utterance it holds open."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.key: str | None = None  # the item whose utterance is open in the process
        self.fed = 0  # samples of it already fed
        self.rss = 0
        self.ids = itertools.count(1)

    def spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "echopanel.engines.sphinx_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            bufsize=0,
            start_new_session=True,  # a Ctrl-C in the server's terminal is the server's to handle
        )
        self.key, self.fed = None, 0
        ready = self.receive(time.monotonic() + START_TIMEOUT_S)
        self.rss = int(ready.get("rss", 0))

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.proc = None
        self.key, self.fed = None, 0

    def send(self, header: dict[str, Any], audio: bytes = b"") -> None:
        assert self.proc is not None and self.proc.stdin is not None
        raw = json.dumps(header).encode()
        try:
            self.proc.stdin.write(HEADER.pack(len(raw), len(audio)) + raw + audio)
        except (BrokenPipeError, OSError) as exc:
            raise WorkerDied(f"pocketsphinx worker {self.index} is gone") from exc

    def receive(self, deadline: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        head = self._read(LENGTH.size, deadline)
        (n,) = LENGTH.unpack(head)
        reply: dict[str, Any] = json.loads(self._read(n, deadline))
        return reply

    def _read(self, n: int, deadline: float) -> bytes:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DecodeTimeout("pocketsphinx decode timed out")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, n - len(out))
            if not chunk:
                raise WorkerDied(f"pocketsphinx worker {self.index} exited (code {self.proc.poll()})")
            out += chunk
        return bytes(out)


class SphinxPool:
    """Worker processes behind one priority queue: finals first, then stream priority, then age."""

    def __init__(self, workers: int = 1, *, timeout_s: float | None = 10.0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers
        self.timeout_s = timeout_s
        self.name = NAME
        self._heap: list[_Job] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._procs = [_Process(i) for i in range(workers)]
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._started = threading.Event()
        self._spawned = 0
        self.restarts = 0  # processes replaced after a death or a timeout
        self.decodes = 0
        self.restarted_utterances = 0  # requests that could not continue an open utterance (decoded from scratch)
        self.compute_s = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the processes (in parallel) and their threads; blocking, idempotent."""
        with self._cond:
            if self._threads or self._stopping:
                return
            for proc in self._procs:
                t = threading.Thread(target=self._serve, args=(proc,), name=f"sphinx-{proc.index}", daemon=True)
                self._threads.append(t)
                t.start()
        self._started.wait(START_TIMEOUT_S + 5)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            pending, self._heap = self._heap, []
            self._cond.notify_all()
        for job in pending:
            post(job.loop, cancel_once, job.future)
        for proc in self._procs:
            proc.kill()
        for t in self._threads:
            t.join(timeout=5)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def rss_bytes(self) -> list[int]:
        """Resident memory of each worker process (as reported by the process at its last answer)."""
        return [p.rss for p in self._procs]

    # -- jobs ------------------------------------------------------------------------------------------------------

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobResult[Decoded]] = loop.create_future()
        if not self._threads:
            threading.Thread(target=self.start, name="sphinx-start", daemon=True).start()  # lazy start
        now = time.monotonic()
        kind = JobKind.FINAL if request.final else JobKind.PARTIAL
        job = _Job((int(kind), request.priority, now, next(self._seq)), request, future, loop, now)
        with self._cond:
            if self._stopping:
                future.set_exception(RuntimeError("pocketsphinx pool is closed"))
                return future
            heapq.heappush(self._heap, job)
            self._cond.notify_all()
        return future

    def _take(self, proc: _Process) -> _Job | None:
        """The best job; among the jobs of the best class, the one for the item this process holds open."""
        while self._heap and self._heap[0].future.cancelled():
            heapq.heappop(self._heap)
        if not self._heap:
            return None
        best = self._heap[0]
        if proc.key is not None and best.request.key != proc.key:
            for job in self._heap:
                if job.request.key == proc.key and job.order[:2] == best.order[:2] and not job.future.cancelled():
                    self._heap.remove(job)
                    heapq.heapify(self._heap)
                    return job
        return heapq.heappop(self._heap)

    def _serve(self, proc: _Process) -> None:
        try:
            proc.spawn()
            log.info("pocketsphinx worker %d: pid %s, %.0f MB", proc.index, proc.pid, proc.rss / 1e6)
        except Exception:
            log.exception("pocketsphinx worker %d failed to start", proc.index)  # the first decode retries
        with self._cond:
            self._spawned += 1
            if self._spawned == self.workers:
                self._started.set()
        while True:
            with self._cond:
                job = None
                while not self._stopping and (job := self._take(proc)) is None:
                    self._cond.wait()
                if self._stopping or job is None:
                    return
            started = time.monotonic()
            try:
                decoded = self._decode(proc, job.request)
            except BaseException as exc:
                post(job.loop, set_exception_once, job.future, exc)
            else:
                done = time.monotonic()
                self.compute_s += done - started
                post(job.loop, set_result_once, job.future, JobResult(decoded, started - job.enqueued, done - started))

    def _decode(self, proc: _Process, req: DecodeRequest) -> Decoded:
        if not proc.alive():
            self._restart(proc, "not running")
        samples = len(req.audio)
        restart = not (req.key and proc.key == req.key and proc.fed <= samples)
        audio = req.audio if restart else req.audio[proc.fed :]
        self.restarted_utterances += int(restart and proc.key is not None)
        header = {"op": "decode", "id": next(proc.ids), "restart": restart, "final": req.final, "fault": req.fault}
        deadline = time.monotonic() + (self.timeout_s if self.timeout_s is not None else 1e9)
        try:
            proc.send(header, to_pcm16(audio))
            reply = proc.receive(deadline)
        except DecodeTimeout:
            self._restart(proc, "decode timed out")
            message = f"pocketsphinx decode abandoned after {self.timeout_s:.1f} s; worker replaced"
            raise DecodeTimeout(message) from None
        except WorkerDied:
            self._restart(proc, "died")
            raise
        self.decodes += 1
        if not reply.get("ok"):
            proc.key, proc.fed = None, 0
            message = str(reply.get("error"))
            raise InjectedFault(message) if "injected" in message else RuntimeError(message)
        proc.key, proc.fed = (None, 0) if req.final else (req.key, samples)
        words = tuple(Word(" " + w, int(s), int(e), round(float(c), 3)) for w, s, e, c in reply.get("words", ()))
        return Decoded(str(reply.get("text", "")), words, NAME)

    def _restart(self, proc: _Process, why: str) -> None:
        old = proc.pid
        proc.kill()
        self.restarts += 1
        log.warning("pocketsphinx worker %d (pid %s) %s: starting a new one", proc.index, old, why)
        proc.spawn()


class SphinxRunner:
    """The ``DecodeRunner`` face of the pool (what recognizers and the fallback chain call)."""

    def __init__(self, pool: SphinxPool) -> None:
        self.pool = pool
        self.name = NAME

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        return self.pool.submit(request)


class PocketsphinxEngine(SpeechEngine):
    def __init__(
        self,
        *,
        workers: int = 1,
        decode_timeout_s: float | None = 10.0,
        recognizer: RecognizerSettings | None = None,
    ) -> None:
        self.pool = SphinxPool(workers, timeout_s=decode_timeout_s)
        self.runner = SphinxRunner(self.pool)
        self.settings = recognizer or RecognizerSettings()
        self.capabilities = EngineCapabilities(name=NAME, model=MODEL, word_confidence=True)
        self.policy = DecodePolicy(partial_interval_ms=self.settings.partial_interval_ms)
        self._vad_executor: Executor | None = None

    def open_stream(self, options: StreamOptions) -> SpeechStream:
        if self._vad_executor is None:
            self._vad_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sphinx-vad")
        return VadStreamingRecognizer(
            runner=self.runner,
            detector=SileroVoiceDetector(SAMPLE_RATE),
            vad_executor=self._vad_executor,
            options=options,
            settings=self.settings,
            sample_rate=SAMPLE_RATE,
            policy=self.policy,
        )

    def warmup(self) -> None:
        self.pool.start()

    def close(self) -> None:
        self.pool.close()
        if self._vad_executor is not None:
            self._vad_executor.shutdown(wait=False, cancel_futures=True)
