"""A transcription session: several sources, each with its own bounded queue and recognizer stream.

Dialect-agnostic: protocol adapters call ``append`` / ``commit`` / ``request`` / ``close`` and read ``outbox``,
which carries ``SourceEvent`` (engine events tagged with their source) and ready wire events in one order.

Bounds: each source's queue holds at most ``source_queue_ms`` of audio; ``append`` waits when it is full, so a
client sending faster than the server transcribes is pushed back through the socket (TCP flow control). Control
markers (commit, response.create, close) travel in the same queue, so they apply after the audio sent before them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echopanel.audio.convert import StreamResampler, pcm16_to_float
from echopanel.config import Settings
from echopanel.engines.base import SpeechEngine, SpeechStream, StreamOptions, TurnSettings
from echopanel.events import RequestCompleted, SourceEvent, TextFinal, item_id

log = logging.getLogger(__name__)

OutboxItem = Any  # SourceEvent | dict (a ready wire event)


@dataclass(slots=True, frozen=True)
class Barrier:
    """Placed in the outbox; the sender resolves it once everything before it has been sent."""

    done: asyncio.Future[None]


_FLUSH_ID = "\x00flush"


@dataclass(slots=True, frozen=True)
class _Marker:
    kind: str  # "commit" | "request" | "flush" | "configure" | "clear"
    event_id: str | None = None
    done: asyncio.Future[None] | None = None
    turns: TurnSettings | None = None


@dataclass(slots=True)
class SourceState:
    name: str
    index: int
    stream: SpeechStream
    resampler: StreamResampler
    queue_limit_ms: float
    queue: deque[np.ndarray | _Marker] = field(default_factory=deque)
    queued_ms: float = 0.0
    received_ms: float = 0.0
    max_queued_ms: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    space: asyncio.Event = field(default_factory=asyncio.Event)
    finals: int = 0
    flush_done: asyncio.Future[None] | None = None


@dataclass(slots=True, frozen=True)
class TranscriptItem:
    item_id: str
    source: str
    text: str
    start_ms: int
    end_ms: int
    speaker: str | None


class Session:
    def __init__(
        self,
        *,
        engine: SpeechEngine,
        settings: Settings,
        sources: list[str],
        sample_rate: int,
        turn_detection: bool = True,
        language: str = "en",
        prompt: str = "",
        outbox: asyncio.Queue[OutboxItem] | None = None,
    ) -> None:
        self.id = "sess_" + uuid.uuid4().hex[:20]
        self.resume_token = secrets.token_urlsafe(24)
        self.engine = engine
        self.settings = settings
        self.sample_rate = sample_rate
        self.created = time.time()
        self.outbox: asyncio.Queue[OutboxItem] = outbox or asyncio.Queue(settings.send_queue_events)
        self.transcript: list[TranscriptItem] = []
        self.closing = False
        engine_rate = engine.capabilities.sample_rate
        self.sources: dict[str, SourceState] = {}
        for index, name in enumerate(sources):
            stream = engine.open_stream(
                StreamOptions(
                    source=name, priority=index, turn_detection=turn_detection, language=language, prompt=prompt
                )
            )
            self.sources[name] = SourceState(
                name, index, stream, StreamResampler(sample_rate, engine_rate), float(settings.source_queue_ms)
            )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    def start(self) -> None:
        for state in self.sources.values():
            self._tasks.append(asyncio.create_task(self._feed(state), name=f"feed-{state.name}"))
            self._tasks.append(asyncio.create_task(self._forward(state), name=f"forward-{state.name}"))

    # -- input (called by the dialect, in the order the client sent events) --------------------------------------

    async def append(self, source: str, pcm16: bytes) -> None:
        """Accept whole PCM16 samples for one source; waits while that source's queue is full."""
        state = self.sources[source]
        audio = pcm16_to_float(pcm16)
        ms = len(audio) * 1000.0 / self.sample_rate
        # Wait while queued *audio* would exceed the bound (one chunk larger than the bound still passes alone).
        while state.queued_ms > 0 and state.queued_ms + ms > state.queue_limit_ms:
            state.space.clear()
            await state.space.wait()
        state.queue.append(audio)
        state.queued_ms += ms
        state.max_queued_ms = max(state.max_queued_ms, state.queued_ms)
        state.received_ms += ms
        state.changed.set()

    async def commit(self, source: str, event_id: str | None) -> None:
        self._enqueue(source, _Marker("commit", event_id))

    async def request(self, source: str, response_id: str | None) -> None:
        self._enqueue(source, _Marker("request", response_id))

    async def configure(self, source: str, turns: TurnSettings) -> None:
        self._enqueue(source, _Marker("configure", turns=turns))

    async def clear(self, source: str) -> None:
        """Drop the audio of ``source`` not yet transcribed, and its open utterance."""
        state = self.sources[source]
        kept: deque[np.ndarray | _Marker] = deque(e for e in state.queue if isinstance(e, _Marker))
        state.queue = kept
        state.queued_ms = 0.0
        state.space.set()
        self._enqueue(source, _Marker("clear"))

    def set_prompt(self, source: str, prompt: str) -> None:
        self.sources[source].stream.set_prompt(prompt)

    async def finish(self) -> None:
        """Flush every source: every utterance is finalized and every final is in the outbox."""
        self.closing = True
        loop = asyncio.get_running_loop()
        waits = []
        for state in self.sources.values():
            done: asyncio.Future[None] = loop.create_future()
            self._enqueue(state.name, _Marker("flush", done=done))
            waits.append(done)
        await asyncio.gather(*waits)

    async def aclose(self) -> None:
        for state in self.sources.values():
            await state.stream.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def stats(self) -> dict[str, Any]:
        return {
            name: {
                "received_ms": round(s.received_ms),
                "queued_ms": round(s.queued_ms),
                "max_queued_ms": round(s.max_queued_ms),
                "processed_ms": round(s.stream.audio_ms),
                "finals": s.finals,
            }
            for name, s in self.sources.items()
        }

    # -- internals -------------------------------------------------------------------------------------------------

    def _enqueue(self, source: str, marker: _Marker) -> None:
        state = self.sources[source]
        state.queue.append(marker)
        state.changed.set()

    async def _feed(self, state: SourceState) -> None:
        stream = state.stream
        try:
            while True:
                while not state.queue:
                    state.changed.clear()
                    await state.changed.wait()
                entry = state.queue.popleft()
                if isinstance(entry, _Marker):
                    await self._apply(state, entry)
                    continue
                remaining = state.queued_ms - len(entry) * 1000.0 / self.sample_rate
                state.queued_ms = remaining if state.queue else 0.0
                state.space.set()
                await stream.push(state.resampler.process(entry))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("source %s feeder failed", state.name)
            await self.outbox.put(
                {"type": "error", "code": "internal_error", "message": f"source {state.name} failed", "fatal": True}
            )

    async def _apply(self, state: SourceState, marker: _Marker) -> None:
        if marker.kind == "commit":
            await state.stream.commit(marker.event_id)
        elif marker.kind == "request":
            await state.stream.request(marker.event_id)
        elif marker.kind == "configure" and marker.turns is not None:
            await state.stream.configure(marker.turns)
        elif marker.kind == "clear":
            await state.stream.clear()
        elif marker.kind == "flush":
            tail = state.resampler.process(np.zeros(0, np.float32), last=True)
            if len(tail):
                await state.stream.push(tail)
            await state.stream.flush()
            # A request marker travels behind the last final through the stream's own event queue; the forwarder
            # turns it into an outbox barrier that the sender resolves once everything before it is sent.
            state.flush_done = marker.done
            await state.stream.request(_FLUSH_ID)

    async def _forward(self, state: SourceState) -> None:
        async for ev in state.stream.events():
            if isinstance(ev, RequestCompleted) and ev.response_id == _FLUSH_ID:
                if state.flush_done is not None:
                    await self.outbox.put(Barrier(state.flush_done))
                    state.flush_done = None
                continue
            if isinstance(ev, TextFinal):
                state.finals += 1
                if ev.text:
                    self.transcript.append(
                        TranscriptItem(item_id(state.name, ev.item), state.name, ev.text, ev.start_ms, ev.end_ms, None)
                    )
            await self.outbox.put(SourceEvent(state.name, ev))
