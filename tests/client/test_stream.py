"""Sending several sources as fast as the server takes them keeps them side by side, as a call would."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from echopanel.client import LiveClient
from echopanel.client.stream import send_interleaved


class Recorder:
    """Stands in for LiveClient's socket side: records what would be sent, in order."""

    sample_rate = 16_000

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    async def send_audio(self, source: str, pcm16: bytes) -> None:
        self.sent.append((source, len(pcm16)))


def test_sources_go_out_side_by_side() -> None:
    rec = Recorder()
    chunk = 16_000 * 40 // 1000 * 2  # 40 ms of PCM16
    audio = {"mic": b"\0" * (chunk * 3), "system": b"\0" * (chunk * 2 + 10)}
    asyncio.run(send_interleaved(cast(LiveClient, cast(Any, rec)), audio, chunk_ms=40))
    assert rec.sent == [
        ("mic", chunk),
        ("system", chunk),
        ("mic", chunk),
        ("system", chunk),
        ("mic", chunk),
        ("system", 10),
    ]
