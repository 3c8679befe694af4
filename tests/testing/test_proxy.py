"""The chaos proxy on real loopback sockets: forwards, cuts, stalls, slows, refuses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from echopanel.testing.proxy import ChaosProxy, ThreadedChaosProxy


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server on this test's loop; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def roundtrip(port: int, payload: bytes) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), 5), reader, writer


async def test_forwards_then_cut_resets_both_sides() -> None:
    async with echo_server() as echo:
        await _test_forwards_then_cut_resets_both_sides(echo)


async def _test_forwards_then_cut_resets_both_sides(echo: int) -> None:
    proxy = ChaosProxy("127.0.0.1", echo)
    await proxy.start()
    try:
        data, reader, _writer = await roundtrip(proxy.port, b"hello")
        assert data == b"hello" and proxy.open_connections == 1
        assert proxy.cut() == 1
        assert await asyncio.wait_for(reader.read(10), 5) == b""  # the client sees its connection end
        data, _, w2 = await roundtrip(proxy.port, b"again")  # new connections still work
        assert data == b"again" and proxy.connections == 2 and proxy.cuts == 1
        w2.close()
    finally:
        await proxy.stop()


async def test_stall_holds_bytes_and_slow_throttles() -> None:
    async with echo_server() as echo:
        await _test_stall_holds_bytes_and_slow_throttles(echo)


async def _test_stall_holds_bytes_and_slow_throttles(echo: int) -> None:
    proxy = ChaosProxy("127.0.0.1", echo)
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.stall(0.5)
        t0 = time.monotonic()
        writer.write(b"x" * 100)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(100), 5) == b"x" * 100
        assert time.monotonic() - t0 >= 0.45
        proxy.slow(20_000)
        t0 = time.monotonic()
        writer.write(b"y" * 10_000)  # 10 kB each way at 20 kB/s: >= 0.5 s per direction
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(10_000), 10)
        assert time.monotonic() - t0 >= 0.9
        writer.close()
    finally:
        await proxy.stop()


async def test_refuse_closes_new_connections() -> None:
    async with echo_server() as echo:
        await _test_refuse_closes_new_connections(echo)


async def _test_refuse_closes_new_connections(echo: int) -> None:
    proxy = ChaosProxy("127.0.0.1", echo)
    await proxy.start()
    try:
        proxy.refuse(True)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"hi")
        try:
            got = await asyncio.wait_for(reader.read(10), 5)
        except ConnectionResetError:
            got = b""
        assert got == b""  # closed (or reset) at once, nothing forwarded
        proxy.refuse(False)
        data, _, w = await roundtrip(proxy.port, b"ok")
        assert data == b"ok"
        w.close()
        assert proxy.url("ws://127.0.0.1:1/v1/live") == f"ws://127.0.0.1:{proxy.port}/v1/live"
    finally:
        await proxy.stop()


def test_threaded_proxy_serves_synchronous_code() -> None:
    """The same proxy on a thread of its own, driven from plain synchronous code (as the browser tests do)."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    echo_port = listener.getsockname()[1]

    def echo() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    try:
        with ThreadedChaosProxy("127.0.0.1", echo_port) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                s.sendall(b"hello")
                assert s.recv(5) == b"hello"
                assert proxy.open_connections == 1
                assert proxy.cut() == 1
                try:
                    assert s.recv(10) == b""  # the connection ended
                except ConnectionResetError:
                    pass
            proxy.refuse(True)
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                try:
                    assert s.recv(10) == b""  # closed at once
                except ConnectionResetError:
                    pass
            assert proxy.refused == 1 and proxy.cuts == 1 and proxy.connections == 1
            assert proxy.url("ws://127.0.0.1:1/v1/live") == f"ws://127.0.0.1:{proxy.port}/v1/live"
    finally:
        listener.close()
