"""Helpers for the browser tests: Chromium launch flags, screenshots, a loopback TCP proxy that can drop sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Playwright

CHROMIUM = os.environ.get("ECHOPANEL_CHROMIUM", "/usr/bin/chromium")
# Flags that work on these machines (no network but the registries; running as root).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
]


def launch(playwright: Playwright, wav: Path, *, loop: bool) -> Browser:
    """Chromium whose fake microphone plays ``wav`` (once, or looped). Permission comes from the context."""
    capture = f"--use-file-for-fake-audio-capture={wav}{'' if loop else '%noloop'}"
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, capture], headless=True)


def save_screenshot(page: Any, directory: Path, name: str) -> Path:
    path = directory / name
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("ECHOPANEL_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / name)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpProxy:
    """A loopback TCP proxy on its own thread; ``drop_all`` cuts every open connection (both ways) at once."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        for w in list(self._writers):
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def drop_all(self) -> None:
        """Close every proxied connection, as a network failure would (the server itself keeps running)."""

        def cut() -> None:
            for w in list(self._writers):
                self.dropped += 1
                transport = w.transport
                transport.abort()  # type: ignore[attr-defined]

        self._loop.call_soon_threadsafe(cut)
