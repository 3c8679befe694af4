"""A session is freed the moment it ends, by reference counting alone, on every path a session can end by.

Closed sessions that sat in reference cycles waited for Python's next full garbage collection, which a busy
server runs rarely; each held its recognizers' buffers, its speaker tracker and its outbox, and ten meetings back to
back left RSS ~86 MB higher after the tenth than after the first (docs/behaviour.md, "Memory"). These tests run the
whole server in this process (real engine, speaker encoder, store), turn the cyclic collector off, and check that
each ended session is gone: a reference cycle through a session fails them, with what still holds it.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import types
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect

from echopanel.audio.convert import float_to_pcm16
from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient
from echopanel.client.stream import transcribe
from echopanel.config import Settings
from echopanel.server import memory
from echopanel.session.session import Session
from echopanel.testing.inprocess import serve_stack

from support import LIBRIVOX

CLIP = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"


def speech(rate: int) -> bytes:
    audio = read_audio(CLIP, rate)[: rate * 6]
    pad = np.zeros(rate // 2, np.float32)
    return float_to_pcm16(np.concatenate([pad, audio, pad, pad]))


@pytest.fixture()
def sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[weakref.ref[Session]]]:
    """Weak references to every session the server starts; the cyclic collector off meanwhile, and so the server's
    own collection after a session (``memory.collect_soon``, the safety net these tests must not lean on)."""
    refs: list[weakref.ref[Session]] = []
    start = Session.start

    def tracked(self: Session) -> None:
        refs.append(weakref.ref(self))
        start(self)

    monkeypatch.setattr(Session, "start", tracked)
    monkeypatch.setattr(memory, "collect_soon", lambda: None)
    gc.collect()
    gc.disable()
    try:
        yield refs
    finally:
        gc.enable()


@asynccontextmanager
async def whole_server(data_dir: Path) -> AsyncIterator[str]:
    """(Not a fixture: the server must run on the test's own event loop.)"""
    settings = Settings.from_env({}).replace(data_dir=data_dir, resume_grace_s=1.0)
    async with serve_stack(settings) as (url, _stack):
        yield url


def holders(obj: object, depth: int = 3) -> list[Any]:
    """What refers to ``obj`` (and to those, ``depth`` levels up): for the failure message."""
    found: list[Any] = []
    for r in gc.get_referrers(obj):
        if isinstance(r, types.FrameType) or r is found:
            continue
        name = type(r).__qualname__
        found.append((name, holders(r, depth - 1)) if depth > 1 and not isinstance(r, list) else name)
    return found


async def freed(obj: object) -> None:
    """Returns once ``obj`` is freed."""
    gone = asyncio.Event()
    weakref.finalize(obj, gone.set)
    del obj
    await gone.wait()


async def assert_freed(refs: list[weakref.ref[Session]], count: int, within_s: float = 15.0) -> None:
    """Each of the ``count`` sessions started is freed (without the cyclic collector) within ``within_s``; on
    timeout, the caller names what still holds them."""
    assert len(refs) == count
    async with asyncio.timeout(within_s):
        for ref in refs:
            session = ref()
            if session is not None:
                waiter = asyncio.ensure_future(freed(session))
                del session
                await waiter


@pytest.fixture()
def check(sessions: list[weakref.ref[Session]]) -> Any:
    async def run(count: int) -> None:
        try:
            await assert_freed(sessions, count)
        except TimeoutError:
            alive = [r() for r in sessions if r() is not None]
            pytest.fail(f"{len(alive)} ended session(s) still referenced by {[holders(s) for s in alive]}")

    return run


async def test_a_closed_native_session_is_freed(tmp_path: Path, check: Any) -> None:
    async with whole_server(tmp_path) as server:
        pcm = speech(16000)
        async with LiveClient(server + "/v1/live", sources=["mic", "system"]) as client:
            view = await transcribe(client, {"mic": pcm, "system": pcm}, realtime=False)
        assert view.finals()  # the session did real work: recognizers, speaker labels, store writes
        await check(1)


async def test_a_dropped_native_session_is_freed_when_its_grace_ends(tmp_path: Path, check: Any) -> None:
    async with whole_server(tmp_path) as server:
        client = LiveClient(server + "/v1/live", sources=["mic"])
        await client.open()
        await client.send_audio("mic", speech(16000))
        assert client.ws is not None
        client.ws.transport.abort()  # no close frame: the session is detached, then finalized after the 1 s grace
        await check(1)


async def test_a_resumed_session_is_freed_after_close(tmp_path: Path, check: Any) -> None:
    async with whole_server(tmp_path) as server:
        first = LiveClient(server + "/v1/live", sources=["mic"])
        created = await first.open()
        await first.send_audio("mic", speech(16000))
        assert first.ws is not None
        first.ws.transport.abort()
        await asyncio.sleep(0.3)
        async with connect(server + "/v1/live", subprotocols=["echopanel.v1"]) as ws:  # type: ignore[list-item]
            resume = {"session_id": created["id"], "resume_token": created["resume_token"]}
            await ws.send(json.dumps({"type": "session.create", "resume": resume}))
            assert json.loads(await ws.recv())["resumed"] is True
            await ws.send(json.dumps({"type": "session.close"}))
            async for message in ws:
                if json.loads(message)["type"] == "session.summary":
                    break
        await check(1)


async def test_an_openai_session_is_freed(tmp_path: Path, check: Any) -> None:
    async with whole_server(tmp_path) as server:
        pcm = speech(24000)
        async with connect(server + "/v1/realtime?intent=transcription") as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            for i in range(0, len(pcm), 9600):
                chunk = base64.b64encode(pcm[i : i + 9600]).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            async with asyncio.timeout(60):
                async for message in ws:
                    if json.loads(message)["type"] == "conversation.item.input_audio_transcription.completed":
                        break
        await check(1)


async def test_a_deepgram_session_is_freed(tmp_path: Path, check: Any) -> None:
    async with whole_server(tmp_path) as server:
        pcm = speech(16000)
        async with connect(server + "/v1/listen?encoding=linear16&sample_rate=16000") as ws:
            for i in range(0, len(pcm), 6400):
                await ws.send(pcm[i : i + 6400])
            await ws.send(json.dumps({"type": "CloseStream"}))
            async for _ in ws:  # results, then Metadata, then the server closes
                pass
        await check(1)


class Cyclic:
    def __init__(self) -> None:
        self.me = self


async def test_the_collection_after_a_session_frees_what_a_cycle_holds() -> None:
    gc.collect()
    gc.disable()
    try:
        obj = Cyclic()
        ref = weakref.ref(obj)
        del obj
        gone = asyncio.Event()
        weakref.finalize(ref(), gone.set)
        memory.collect_soon(0.05)
        memory.collect_soon(0.05)  # sessions that end together share one collection
        assert ref() is not None
        async with asyncio.timeout(5):
            await gone.wait()
    finally:
        gc.enable()
