"""An internal error inside the server reaches each client in its own dialect's shape, the connection closes with
1011, and the session is stored as interrupted with what it had. A real uvicorn server on a free port with an engine
whose decode crashes (a fake that subclasses the engine interface, for fault injection), driven by real clients:
the official ``openai`` SDK and our own native client."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeErrorEvent, SessionCreatedEvent

from echopanel.client import LiveClient
from echopanel.config import Settings
from echopanel.engines.base import (
    DecodePolicy,
    EngineCapabilities,
    SpeechEngine,
    SpeechStream,
    StreamOptions,
    TurnSettings,
)
from echopanel.events import EngineEvent
from echopanel.server.app import create_app
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import AsyncStore
from echopanel.testing.inprocess import serve_app


class CrashingStream(SpeechStream):
    """Takes a little audio, then its decoder crashes (an exception no engine handles)."""

    def __init__(self) -> None:
        self.samples = 0
        self._events: asyncio.Queue[EngineEvent | None] = asyncio.Queue()

    @property
    def audio_ms(self) -> float:
        return self.samples / 16

    async def push(self, pcm: np.ndarray) -> None:
        self.samples += len(pcm)
        if self.samples > 8000:
            raise RuntimeError("decoder crashed")

    async def commit(self, event_id: str | None = None) -> None:
        pass

    async def request(self, response_id: str | None) -> None:
        pass

    async def skip(self, samples: int) -> None:
        pass

    async def configure(self, turns: TurnSettings) -> None:
        pass

    async def clear(self, skip: int = 0) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        await self._events.put(None)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (ev := await self._events.get()) is not None:
            yield ev


class CrashingEngine(SpeechEngine):
    def __init__(self) -> None:
        self.capabilities = EngineCapabilities(name="crashing", model="none")
        self.policy = DecodePolicy()

    def open_stream(self, options: StreamOptions) -> SpeechStream:
        return CrashingStream()


@pytest.fixture()
def app_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, speakers=False)


def silence_24k(seconds: float) -> bytes:
    return b"\x00\x00" * int(24000 * seconds)


async def wait_for_status(store: AsyncStore, session_id: str, status: str) -> None:
    for _ in range(100):
        record = store.store.get_session(session_id)
        if record is not None and record.status == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} never became {status}")


async def test_the_openai_sdk_gets_a_typed_server_error(app_settings: Settings) -> None:
    store = AsyncStore(SqliteStore(app_settings.data_dir / "db.sqlite"))
    app = create_app(CrashingEngine(), app_settings, store=store)
    async with serve_app(app, app_settings) as url:
        client = AsyncOpenAI(base_url=url.replace("ws://", "http://") + "/v1", api_key="x", max_retries=0)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            created = await conn.recv()
            assert isinstance(created, SessionCreatedEvent)
            session_id = created.session.id
            assert session_id is not None
            await conn.input_audio_buffer.append(audio=base64.b64encode(silence_24k(1.0)).decode())
            error = await asyncio.wait_for(conn.recv(), 10)
            # The SDK's own typed error event (not a native-format dict it cannot parse).
            assert type(error) is RealtimeErrorEvent, type(error)
            assert error.error.type == "server_error" and error.error.code == "internal_error"
            assert "mic" in error.error.message
            with pytest.raises(Exception) as closed:  # then the server closes the connection
                await asyncio.wait_for(conn.recv(), 10)
            assert "1011" in str(closed.value), closed.value
        await wait_for_status(store, session_id, "interrupted")
    store.close()


async def test_a_native_client_gets_a_fatal_error_and_1011(app_settings: Settings) -> None:
    store = AsyncStore(SqliteStore(app_settings.data_dir / "db.sqlite"))
    app = create_app(CrashingEngine(), app_settings, store=store)
    async with serve_app(app, app_settings) as url:
        async with LiveClient(url + "/v1/live", sources=["mic"]) as client:
            session_id = client.session["id"]
            await client.send_audio("mic", b"\x00\x00" * 16000)
            events = [ev async for ev in client.events()]
            errors = [ev for ev in events if ev.get("type") == "error"]
            assert errors and errors[-1]["code"] == "internal_error" and errors[-1]["fatal"] is True
            assert errors[-1]["source"] == "mic"
            assert client.close_code == 1011
        # Not kept for a resume: an internal error ends the session, stored as interrupted.
        await wait_for_status(store, session_id, "interrupted")
    store.close()
