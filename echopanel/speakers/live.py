"""Speaker labels inside a running session: one ``SpeakerTracker`` per source, fed off the event loop.

``SpeakerService`` is process-wide: the encoder (loaded once, stateless, shared) and a small thread pool where the
embedding and clustering run. ``SourceSpeakers`` serves one source of one session: when the recognizer closes an
utterance (``speech_stopped``), its audio (onset to end) is read from the source's recording and given to the
source's tracker on the pool, while the final decode of the same utterance runs; so by the time the final is ready
its label usually is too, and the final waits for it at most ``speaker_wait_ms``.

Jobs of one source run one at a time in utterance order (the online clustering depends on the order); sources and
sessions run in parallel on the pool. Labels are ``"<source>:S<n>"`` ("mic:S1", "system:S2"): each source has its
own tracker, so speakers of different sources never mix (the microphone is usually one person, and the same person
heard through the microphone and through the call's audio would otherwise be two labels of one cluster).

Bounds: at most ``max_pending`` utterances waiting per source; past it an utterance gets no live label (the final
goes out with ``speaker: null``) and is labelled at finalization instead. Under load (from degrade level 1,
``LIVE_LABELS_UNTIL`` in session/session.py) live labels pause, queued jobs included; those utterances are labelled
at finalization too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from echopanel.metrics import percentile
from echopanel.speakers.embedding import SpeakerEncoder, default_weights_path
from echopanel.speakers.tracker import SpeakerTracker, SpeakerTurn, main_speaker
from echopanel.speakers.weights import CheckpointError

log = logging.getLogger(__name__)

AudioReader = Callable[[int, int], npt.NDArray[np.float32]]  # (start_ms, end_ms) -> float32 16 kHz mono

MIN_UTTERANCE_MS = 200  # shorter voiced spans carry too little voice to embed; they take a label at finalization


SETTLE_BATCH = 16  # utterances labelled together at finalization
MAX_UNTAKEN = 256  # labels kept for finals that have not asked for them yet


@dataclass(frozen=True, slots=True)
class SpeakerCost:
    """Measured cost of one utterance's labelling on the pool."""

    audio_ms: int
    compute_ms: float


class SpeakerService:
    """The speaker encoder and the pool its work runs on (process-wide)."""

    def __init__(self, encoder: SpeakerEncoder, *, workers: int = 1, max_pending: int = 32, nice: int = 5) -> None:
        self.encoder = encoder
        self.max_pending = max_pending
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max(1, workers), thread_name_prefix="speakers", initializer=_lower_priority, initargs=(nice,)
        )
        self.costs: list[SpeakerCost] = []  # last few hundred, for benchmarks and logs

    @classmethod
    def load(cls, *, workers: int = 1, max_pending: int = 32) -> SpeakerService | None:
        """The service with the packaged weights, or None (labels off, with a WARNING saying why) when they are
        missing from the install or unreadable."""
        try:
            encoder = SpeakerEncoder.load(default_weights_path())
        except (FileNotFoundError, CheckpointError) as exc:
            log.warning("speaker labels off: %s", exc)
            return None
        return cls(encoder, workers=workers, max_pending=max_pending)

    def warmup(self) -> None:
        """Embed two seconds of noise on the pool's thread: its BLAS buffers are allocated now, at start, not
        inside the first session (so the server's idle RSS is its working size)."""
        noise = (np.random.default_rng(0).standard_normal(32000) * 0.01).astype(np.float32)
        self.executor.submit(self.encoder.embed_batch, [noise]).result()

    def record_cost(self, cost: SpeakerCost) -> None:
        self.costs.append(cost)
        if len(self.costs) > 512:
            del self.costs[:256]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class SourceSpeakers:
    """Live and final speaker labels of one source's items (keys: the recognizer's item numbers)."""

    def __init__(
        self, service: SpeakerService, source: str, read_audio: AudioReader, embeddings_path: Path | None = None
    ) -> None:
        self.service = service
        self.source = source
        self._read = read_audio
        self._tracker = SpeakerTracker(service.encoder, embeddings_path=embeddings_path)
        self._spans: dict[int, tuple[int, int]] = {}  # item -> (start_ms, end_ms) given to the tracker
        # item -> live (start_ms, end_ms, label) turns, until its final takes them (``take_turns``)
        self.live_turns: dict[int, tuple[tuple[int, int, str], ...]] = {}
        self._jobs: dict[int, asyncio.Task[str | None]] = {}  # labelling jobs not done yet
        self._results: dict[int, str | None] = {}  # labels of done jobs, until their final takes them
        self._last: asyncio.Task[str | None] | None = None
        self._pending = 0
        self.skipped = 0  # utterances over the bound (labelled at finalization)
        self.live = True  # False: live labels paused under load (the session sets it from the degrade level)
        self.paused = 0  # utterances not labelled live because labels were paused (labelled at finalization)
        self.late = 0  # finals sent before their label was ready (it followed as speaker.updated)
        self.waits_ms: deque[float] = deque(maxlen=1000)  # how long finals waited for their label
        self.costs_ms: deque[float] = deque(maxlen=1000)  # labelling compute per utterance

    def stats(self) -> dict[str, object]:
        """Labelling figures of this source for the summary's stats."""
        return {
            "labelled": len(self._spans),
            "late": self.late,
            "skipped": self.skipped,
            "paused": self.paused,
            "wait_ms": _percentiles(self.waits_ms),
            "cost_ms": _percentiles(self.costs_ms),
        }

    def label_name(self, raw: str | None) -> str | None:
        return None if raw is None else f"{self.source}:{raw}"

    def submit(self, item: int, start_ms: int, end_ms: int) -> None:
        """Label the utterance ``item`` (source clock, ms) on the pool, after the source's earlier utterances."""
        if item in self._jobs or item in self._results or item in self._spans or end_ms - start_ms < MIN_UTTERANCE_MS:
            return
        if not self.live:
            self.paused += 1
            return
        if self._pending >= self.service.max_pending:
            self.skipped += 1
            return
        prev = self._last
        loop = asyncio.get_running_loop()

        async def job() -> str | None:
            if prev is not None:
                await asyncio.wait([prev])
            if not self.live:  # paused while it waited its turn (load rose): labelled at finalization
                self.paused += 1
                return None
            return await loop.run_in_executor(self.service.executor, self._add, item, start_ms, end_ms)

        self._pending += 1
        task = loop.create_task(job(), name=f"speaker-{self.source}-{item}")
        task.add_done_callback(functools.partial(self._done, item))
        self._jobs[item] = self._last = task

    def _done(self, item: int, task: asyncio.Task[str | None]) -> None:
        """A job ended: only its label is kept (until its final takes it), not the task."""
        self._pending -= 1
        self._jobs.pop(item, None)
        if not task.cancelled() and task.exception() is None:
            self._results[item] = task.result()
            while len(self._results) > MAX_UNTAKEN:  # labels of items whose final never asked (empty text)
                del self._results[next(iter(self._results))]

    def job(self, item: int) -> asyncio.Task[str | None] | None:
        """The labelling job of ``item`` while it runs (None once done)."""
        return self._jobs.get(item)

    async def label(self, item: int, wait_s: float) -> str | None:
        """The live label of ``item``, waiting at most ``wait_s`` for it (None if not ready or not labelled). Its
        final asks once: a label given here is forgotten (the label stays in the transcript)."""
        if item in self._results:
            self.waits_ms.append(0.0)
            return self._results.pop(item)
        task = self._jobs.get(item)
        if task is None:
            return None
        t0 = time.perf_counter()
        await asyncio.wait([task], timeout=wait_s)
        self.waits_ms.append((time.perf_counter() - t0) * 1000)
        if not task.done():
            self.late += 1
            return None
        self._results.pop(item, None)
        return None if task.cancelled() or task.exception() is not None else task.result()

    def take_turns(self, item: int) -> tuple[tuple[int, int, str], ...]:
        """The live speaker turns of ``item``, for its final (forgotten here afterwards)."""
        return self.live_turns.pop(item, ())

    def _add(self, item: int, start_ms: int, end_ms: int) -> str | None:
        """On the pool: read the utterance's audio, embed and label it (runs in utterance order)."""
        return self._add_many([(item, start_ms, end_ms)]).get(item)

    def _add_many(self, spans: list[tuple[int, int, int]]) -> dict[int, str | None]:
        """Label several utterances (item, start_ms, end_ms) in order with one pass through the network."""
        t0 = time.perf_counter()
        try:
            read = [(item, a, b, self._read(a, b)) for item, a, b in spans]
            read = [r for r in read if len(r[3]) >= MIN_UTTERANCE_MS * 16]
            all_turns = self._tracker.add_utterances([(audio, a / 1000) for _, a, _, audio in read])
        except Exception:
            log.exception("speaker labelling failed (source %s)", self.source)
            return {}
        labels: dict[int, str | None] = {}
        speech_ms = sum(b - a for _, a, b, _ in read)
        cost_ms = (time.perf_counter() - t0) * 1000
        for (item, a, b, _), turns in zip(read, all_turns, strict=True):
            self._spans[item] = (a, b)
            self.live_turns[item] = tuple(
                (round(t.start_s * 1000), round(t.end_s * 1000), f"{self.source}:{t.speaker}") for t in turns
            )
            labels[item] = self.label_name(main_speaker(turns))
            cost = SpeakerCost(b - a, cost_ms * (b - a) / max(1, speech_ms))  # a batch's cost shared by length
            self.costs_ms.append(cost.compute_ms)
            self.service.record_cost(cost)
        return labels

    async def settle(self, missing: list[tuple[int, int, int]]) -> tuple[dict[int, str | None], list[SpeakerTurn]]:
        """Final labels of every item: waits for the live jobs, labels ``missing`` (item, start_ms, end_ms) items
        (repaired ones, those over the bound), then re-clusters the whole source. Returns labels and final turns."""
        jobs = [t for t in self._jobs.values() if not t.done()]
        if jobs:
            await asyncio.wait(jobs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.service.executor, self._settle, missing)

    def _settle(self, missing: list[tuple[int, int, int]]) -> tuple[dict[int, str | None], list[SpeakerTurn]]:
        todo = [(i, a, b) for i, a, b in missing if i not in self._spans and b - a >= MIN_UTTERANCE_MS]
        todo.sort(key=lambda span: span[1])
        for k in range(0, len(todo), SETTLE_BATCH):  # bounded batches: ~SETTLE_BATCH x 15 s of audio at most
            self._add_many(todo[k : k + SETTLE_BATCH])
        try:
            turns = self._tracker.final_turns()
        except Exception:
            log.exception("speaker re-clustering failed (source %s)", self.source)
            return {}, []
        named = [SpeakerTurn(t.start_s, t.end_s, f"{self.source}:{t.speaker}") for t in turns]
        labels = {item: label_of_span(named, a / 1000, b / 1000) for item, (a, b) in self._spans.items()}
        return labels, named

    def cancel(self) -> None:
        for task in list(self._jobs.values()):
            task.cancel()

    def close(self) -> None:
        """The session ended: close the tracker's embeddings file."""
        self._tracker.close()


def _lower_priority(nice: int) -> None:
    """Run this pool thread at a lower CPU priority than the inference threads (Linux: per-thread nice), so a long
    utterance's labelling does not slow the final decode it runs beside."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass


def _percentiles(values: deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    assert p50 is not None and p95 is not None
    return {"p50": round(p50, 1), "p95": round(p95, 1), "max": round(max(values), 1)}


def label_of_span(turns: list[SpeakerTurn], start_s: float, end_s: float) -> str | None:
    """The speaker with the most time inside [start_s, end_s)."""
    inside = []
    for t in turns:
        a, b = max(t.start_s, start_s), min(t.end_s, end_s)
        if b > a:
            inside.append(SpeakerTurn(a, b, t.speaker))
    return main_speaker(inside)
