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
import itertools
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from echopanel.config import RecognizerSettings
from echopanel.engines.base import EngineCapabilities
from echopanel.engines.sphinx_worker import HEADER, LENGTH
from echopanel.engines.utterance import UtteranceEngine
from echopanel.events import Word
from echopanel.inference.jobs import Decoded, DecodeRequest, InjectedFault, UnsupportedLanguage, WorkerDied
from echopanel.inference.pool import DecodeTimeout, Job, JobKind, JobResult, Slot, WorkerPool

log = logging.getLogger(__name__)

NAME = "pocketsphinx"
MODEL = "pocketsphinx 5.1.1 en-us (PTM acoustic model, 3-gram LM)"
LANGUAGES = ("en",)
START_TIMEOUT_S = 30.0


def to_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


class _Process(Slot):
    """One worker process (the pool's slot ``index``) and the utterance it holds open."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
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


class SphinxPool(WorkerPool[DecodeRequest, Decoded]):
    """Worker processes behind the shared priority queue (``inference/pool.py``: finals first, then stream priority,
    then age); a slot prefers the request for the item its process holds open."""

    stopped_message = "pocketsphinx pool is closed"

    def __init__(self, workers: int = 1, *, timeout_s: float | None = 10.0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        super().__init__(workers, name="sphinx")
        self.timeout_s = timeout_s
        self._procs = [_Process(i) for i in range(workers)]
        self._closed = False
        self._started = threading.Event()
        self._spawned = 0
        self.restarts = 0  # processes replaced after a death or a timeout
        self.decodes = 0
        self.restarted_utterances = 0  # requests that could not continue an open utterance (decoded from scratch)

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the processes (in parallel, one per slot thread); blocking, idempotent."""
        with self._cond:
            if self._threads or self._closed:
                return
        super().start()
        self._started.wait(START_TIMEOUT_S + 5)

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self._halt()
        for proc in self._procs:
            proc.kill()
        self._join()

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def rss_bytes(self) -> list[int]:
        """Resident memory of each worker process (as reported by the process at its last answer)."""
        return [p.rss for p in self._procs]

    # -- the pool's hooks --------------------------------------------------------------------------------------------

    def _new_slot(self, index: int) -> Slot:
        return self._procs[index]

    def _slot_started(self, slot: Slot) -> None:
        assert isinstance(slot, _Process)
        try:
            slot.spawn()
            log.info("pocketsphinx worker %d: pid %s, %.0f MB", slot.index, slot.pid, slot.rss / 1e6)
        except Exception:
            log.exception("pocketsphinx worker %d failed to start", slot.index)  # the first decode retries
        with self._cond:
            self._spawned += 1
            if self._spawned == self.workers:
                self._started.set()

    def _prefers(self, slot: Slot, job: Job[DecodeRequest]) -> bool:
        """The request for the item this process holds open: it continues the utterance with only the new audio."""
        assert isinstance(slot, _Process)
        return slot.key is not None and job.key == slot.key

    def _run(self, slot: Slot, job: Job[DecodeRequest]) -> Decoded:
        assert isinstance(slot, _Process)
        return self._decode(slot, job.payload, job.timeout_s)

    # -- jobs ------------------------------------------------------------------------------------------------------

    def submit(self, request: DecodeRequest) -> asyncio.Future[JobResult[Decoded]]:
        if not self._threads and not self._closed:
            threading.Thread(target=self.start, name="sphinx-start", daemon=True).start()  # lazy start
        kind = JobKind.BACKGROUND if request.background else JobKind.FINAL if request.final else JobKind.PARTIAL
        return self._enqueue(request, kind=kind, priority=request.priority, key=request.key, timeout_s=self.timeout_s)

    def _decode(self, proc: _Process, req: DecodeRequest, timeout_s: float | None) -> Decoded:
        """A decode past ``timeout_s`` (the job's limit) kills the process: it cannot be interrupted otherwise."""
        if req.language not in LANGUAGES:
            raise UnsupportedLanguage(f"language {req.language!r} is not supported by pocketsphinx (en-us)")
        if not proc.alive():
            self._restart(proc, "not running")
        samples = len(req.audio)
        restart = not (req.key and proc.key == req.key and proc.fed <= samples)
        audio = req.audio if restart else req.audio[proc.fed :]
        self.restarted_utterances += int(restart and proc.key is not None)
        header = {"op": "decode", "id": next(proc.ids), "restart": restart, "final": req.final, "fault": req.fault}
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 1e9)
        try:
            proc.send(header, to_pcm16(audio))
            reply = proc.receive(deadline)
        except DecodeTimeout:
            self._restart(proc, "decode timed out")
            message = f"pocketsphinx decode abandoned after {timeout_s:.1f} s; worker replaced"
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


class PocketsphinxEngine(UtteranceEngine):
    vad_thread_name = "sphinx-vad"

    def __init__(
        self,
        *,
        workers: int = 1,
        decode_timeout_s: float | None = 10.0,
        recognizer: RecognizerSettings | None = None,
    ) -> None:
        self.pool = SphinxPool(workers, timeout_s=decode_timeout_s)
        capabilities = EngineCapabilities(name=NAME, model=MODEL, languages=LANGUAGES)
        super().__init__(SphinxRunner(self.pool), capabilities=capabilities, recognizer=recognizer)

    def warmup(self) -> None:
        self.pool.start()

    def close(self) -> None:
        self.pool.close()
        super().close()
