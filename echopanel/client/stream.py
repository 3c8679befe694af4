"""Stream PCM to a session at real-time pace (or as fast as the server accepts), collecting events.

``transcribe`` takes any ``LiveClient`` (the benchmarks use the plain one-connection client): it sends, then
``session.close``, and folds events until the connection ends. ``transcribe_resilient`` takes a ``ResilientClient``
(``echopanel.client.resilient``: buffer, reconnect, resume), with ``realtime`` paces at ``speed`` x real time, and
ends with the client's ``close`` (the summary, across reconnects); ``echopanel transcribe`` uses it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from echopanel.client.live import LiveClient, TranscriptView

if TYPE_CHECKING:
    from echopanel.client.resilient import ResilientClient

BYTES_PER_SAMPLE = 2


async def send_source(
    client: LiveClient,
    source: str,
    pcm: bytes,
    *,
    realtime: bool = True,
    chunk_ms: int = 40,
    on_chunk: Callable[[str, int, float], None] | None = None,
    t0: float | None = None,
) -> None:
    """Send one source's audio in ``chunk_ms`` frames; with ``realtime``, at the pace it was recorded."""
    rate = client.sample_rate
    step = rate * chunk_ms // 1000 * BYTES_PER_SAMPLE
    start = time.monotonic() if t0 is None else t0
    for offset in range(0, len(pcm), step):
        if realtime:
            due = start + offset / BYTES_PER_SAMPLE / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await client.send_audio(source, pcm[offset : offset + step])
        if on_chunk is not None:
            on_chunk(source, offset // BYTES_PER_SAMPLE, time.monotonic())


async def send_interleaved(
    client: LiveClient,
    audio: Mapping[str, bytes],
    *,
    chunk_ms: int = 40,
    on_chunk: Callable[[str, int, float], None] | None = None,
) -> None:
    """Send several sources as fast as accepted, in recorded order: every source's chunk at one offset, then the next.

    One sender per source would not do: a send that does not fill the socket's buffer never yields, so the first
    source's whole stream goes out before the second one's first chunk.
    """
    step = client.sample_rate * chunk_ms // 1000 * BYTES_PER_SAMPLE
    for offset in range(0, max(len(pcm) for pcm in audio.values()), step):
        for source, pcm in audio.items():
            if offset < len(pcm):
                await client.send_audio(source, pcm[offset : offset + step])
                if on_chunk is not None:
                    on_chunk(source, offset // BYTES_PER_SAMPLE, time.monotonic())


async def transcribe(
    client: LiveClient,
    audio: Mapping[str, bytes],
    *,
    realtime: bool = True,
    chunk_ms: int = 40,
    on_event: Callable[[dict[str, Any], TranscriptView], None] | None = None,
    on_chunk: Callable[[str, int, float], None] | None = None,
) -> TranscriptView:
    """Send every source's audio, close the session, and fold all events until the server closes."""
    view = TranscriptView()

    async def receive() -> None:
        async for ev in client.events():
            view.apply(ev, time.monotonic())
            if on_event is not None:
                on_event(ev, view)

    receiver = asyncio.create_task(receive())
    t0 = time.monotonic()
    if realtime or len(audio) == 1:
        await asyncio.gather(
            *(
                send_source(client, source, pcm, realtime=realtime, chunk_ms=chunk_ms, on_chunk=on_chunk, t0=t0)
                for source, pcm in audio.items()
            )
        )
    else:
        await send_interleaved(client, audio, chunk_ms=chunk_ms, on_chunk=on_chunk)
    await client.close_session()
    await receiver
    return view


async def transcribe_resilient(
    client: ResilientClient,
    audio: Mapping[str, bytes],
    *,
    realtime: bool = True,
    speed: float = 1.0,
    chunk_ms: int = 40,
    on_event: Callable[[dict[str, Any], TranscriptView], None] | None = None,
    on_chunk: Callable[[str, int, float], None] | None = None,
) -> TranscriptView:
    """Send every source's audio (at ``speed`` x real time, or as fast as accepted), close, fold all events."""
    view = TranscriptView()

    async def receive() -> None:
        async for ev in client.events():
            view.apply(ev, time.monotonic())
            if on_event is not None:
                on_event(ev, view)

    async def send(source: str, pcm: bytes) -> None:
        step = client.sample_rate * chunk_ms // 1000 * BYTES_PER_SAMPLE
        t0 = time.monotonic()
        for offset in range(0, len(pcm), step):
            if realtime:
                due = t0 + offset / BYTES_PER_SAMPLE / client.sample_rate / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await client.send_audio(source, pcm[offset : offset + step])
            if on_chunk is not None:
                on_chunk(source, offset // BYTES_PER_SAMPLE, time.monotonic())

    receiver = asyncio.create_task(receive())
    try:
        await asyncio.gather(*(send(source, pcm) for source, pcm in audio.items()))
        await client.close()
        await receiver
    finally:
        if not receiver.done():
            receiver.cancel()
    return view
