"""A loopback TCP proxy that cuts, stalls or slows connections on command (fault injection for the network).

    proxy = ChaosProxy("127.0.0.1", server_port)
    await proxy.start()            # listens on 127.0.0.1:proxy.port
    proxy.cut()                    # abort every open connection (both sides see a reset)
    proxy.stall(2.0)               # forward nothing for 2 s (connections stay open)
    proxy.slow(16_000)             # forward at most 16 kB/s each way
    proxy.refuse(True)             # new connections are closed at once (a dead server)

Synchronous code (Playwright tests, tests driving a subprocess) uses the same proxy on its own thread:

    with ThreadedChaosProxy("127.0.0.1", server_port) as proxy:
        proxy.cut()                # the same controls, callable from any thread

Run it by hand for a demo: ``python -m echopanel.testing.proxy 8765 --listen 8766``, then type ``cut``,
``stall 3``, ``slow 20000``, ``refuse``, ``ok`` or ``quit`` on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

CHUNK = 64 * 1024
T = TypeVar("T")


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ChaosProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._stall_timer: asyncio.TimerHandle | None = None
        self._rate: float | None = None
        self._refusing = False
        self.connections = 0
        self.cuts = 0
        self.refused = 0  # connections closed at once while refusing
        self.bytes_up = 0  # client -> server
        self.bytes_down = 0

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, server_url: str) -> str:
        """``server_url`` (ws://host:port/path) rewritten to go through this proxy."""
        scheme, rest = server_url.split("://", 1)
        path = rest.split("/", 1)[1] if "/" in rest else ""
        return f"{scheme}://{self.host}:{self.port}/{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self._port)

    async def stop(self) -> None:
        cuts = self.cuts
        self.cut()
        self.cuts = cuts  # closing the proxy is not a fault
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- faults ------------------------------------------------------------------------------------------------------

    def cut(self) -> int:
        """Abort every open connection at once (no close handshake: both ends see the connection drop)."""
        links = list(self._links)
        for link in links:
            for writer in (link.client, link.server):
                writer.transport.abort()
            for task in link.tasks:
                task.cancel()
        self._links.clear()
        self.cuts += len(links)
        return len(links)

    def stall(self, seconds: float | None = None) -> None:
        """Stop forwarding (both ways) until ``flow()`` or for ``seconds``."""
        self._flowing.clear()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if seconds is not None:
            self._stall_timer = asyncio.get_running_loop().call_later(seconds, self.flow)

    def flow(self) -> None:
        self._flowing.set()

    def slow(self, bytes_per_s: float | None) -> None:
        """Forward at most this many bytes per second in each direction of each connection (None: full speed)."""
        self._rate = bytes_per_s

    def refuse(self, on: bool = True) -> None:
        """New connections are closed at once (existing ones are not touched)."""
        self._refusing = on

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # -- internals -------------------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, link, up=True)),
            asyncio.create_task(self._pump(up_reader, writer, link, up=False)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link, up: bool) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                if self._rate:
                    await asyncio.sleep(len(data) / self._rate)
                    await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
            if writer.can_write_eof():
                writer.write_eof()  # a clean end is passed on as a clean end
        except (ConnectionError, OSError):
            writer.transport.abort()  # a reset is passed on as a reset


class ThreadedChaosProxy:
    """A ``ChaosProxy`` running on an event loop of its own thread; every control is safe to call from any thread.

    For synchronous tests: ``with ThreadedChaosProxy("127.0.0.1", port) as proxy: ... proxy.cut()``.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-proxy", daemon=True)
        self._target = (target_host, target_port)
        self._bind = (host, port)
        self.proxy: ChaosProxy | None = None

    def start(self) -> ThreadedChaosProxy:
        self._thread.start()

        async def start() -> ChaosProxy:
            proxy = ChaosProxy(*self._target, host=self._bind[0], port=self._bind[1])
            await proxy.start()
            return proxy

        self.proxy = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(10)
            self.proxy = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ThreadedChaosProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, fn: Callable[[ChaosProxy], T]) -> T:
        proxy = self.proxy
        assert proxy is not None, "start() first"

        async def call() -> T:
            return fn(proxy)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    @property
    def port(self) -> int:
        return self._call(lambda p: p.port)

    def url(self, server_url: str) -> str:
        return self._call(lambda p: p.url(server_url))

    def cut(self) -> int:
        return self._call(lambda p: p.cut())

    def stall(self, seconds: float | None = None) -> None:
        self._call(lambda p: p.stall(seconds))

    def flow(self) -> None:
        self._call(lambda p: p.flow())

    def slow(self, bytes_per_s: float | None) -> None:
        self._call(lambda p: p.slow(bytes_per_s))

    def refuse(self, on: bool = True) -> None:
        self._call(lambda p: p.refuse(on))

    @property
    def cuts(self) -> int:
        return self._call(lambda p: p.cuts)

    @property
    def connections(self) -> int:
        return self._call(lambda p: p.connections)

    @property
    def refused(self) -> int:
        return self._call(lambda p: p.refused)

    @property
    def open_connections(self) -> int:
        return self._call(lambda p: p.open_connections)


async def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a TCP proxy that cuts, stalls or slows connections on command")
    parser.add_argument("target_port", type=int)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--listen", type=int, default=0)
    args = parser.parse_args(argv)
    proxy = ChaosProxy(args.target_host, args.target_port, port=args.listen)
    await proxy.start()
    print(
        f"proxy 127.0.0.1:{proxy.port} -> {args.target_host}:{args.target_port}; commands: "
        "cut | stall SECONDS | slow BYTES_PER_S | refuse | ok | quit",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "quit":
            break
        cmd, *rest = line.split()
        if cmd == "cut":
            print(f"cut {proxy.cut()} connections", flush=True)
        elif cmd == "stall":
            proxy.stall(float(rest[0]) if rest else None)
        elif cmd == "slow":
            proxy.slow(float(rest[0]) if rest else None)
        elif cmd == "refuse":
            proxy.refuse(True)
        elif cmd == "ok":
            proxy.flow()
            proxy.slow(None)
            proxy.refuse(False)
        else:
            print(f"unknown command {cmd!r}", flush=True)
    await proxy.stop()


if __name__ == "__main__":
    asyncio.run(_main())
