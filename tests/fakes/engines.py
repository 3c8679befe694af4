"""Fakes that subclass the real engine interface, for flow-control and fault tests (no mocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np

from echopanel.engines.base import (
    DecodePolicy,
    EngineCapabilities,
    SpeechEngine,
    SpeechStream,
    StreamOptions,
    TurnSettings,
)
from echopanel.events import Committed, EngineEvent, RequestCompleted


class GatedStream(SpeechStream):
    """Consumes audio only while its engine's gate is open; records what it was given."""

    def __init__(self, engine: GatedEngine, options: StreamOptions) -> None:
        self.engine = engine
        self.options = options
        self.pushed = 0
        self.skipped: list[int] = []
        self.cleared: list[int] = []  # samples the clock moved over at each clear
        self._events: asyncio.Queue[EngineEvent | None] = asyncio.Queue()

    @property
    def audio_ms(self) -> float:
        return (self.pushed + sum(self.skipped)) / 16

    async def push(self, pcm: np.ndarray) -> None:
        await self.engine.gate.wait()
        self.pushed += len(pcm)

    async def skip(self, samples: int) -> None:
        self.skipped.append(samples)

    async def commit(self, event_id: str | None = None) -> None:
        await self._events.put(Committed(None, event_id))

    async def request(self, response_id: str | None) -> None:
        await self._events.put(RequestCompleted(response_id))

    async def configure(self, turns: TurnSettings) -> None:
        pass

    async def clear(self, skip: int = 0) -> None:
        self.cleared.append(skip)

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        await self._events.put(None)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (ev := await self._events.get()) is not None:
            yield ev


class GatedEngine(SpeechEngine):
    def __init__(self) -> None:
        self.capabilities = EngineCapabilities(name="gated", model="none")
        self.policy = DecodePolicy()
        self.gate = asyncio.Event()
        self.gate.set()
        self.streams: list[GatedStream] = []

    def open_stream(self, options: StreamOptions) -> SpeechStream:
        stream = GatedStream(self, options)
        self.streams.append(stream)
        return stream
