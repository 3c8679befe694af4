"""Admission at ``session.create``: a native socket holds no session slot until it creates a session, it has
``handshake_timeout_s`` to do so, and at most ``max_pending_connections`` sockets wait at once (real server in this
process, real clients; the engine is a gate, since no audio is decoded here)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from echopanel.config import Settings
from echopanel.server.app import create_app
from echopanel.testing.inprocess import serve_app

from fakes.engines import GatedEngine

CREATE = json.dumps({"type": "session.create", "session": {"sources": ["mic"]}})


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {"data_dir": tmp_path, "speakers": False, "max_sessions": 1, "handshake_timeout_s": 1.0}
    return Settings(**{**base, **overrides})


async def bare(url: str) -> ClientConnection:
    return await connect(url + "/v1/live", subprotocols=["echopanel.v1"])  # type: ignore[list-item]


async def create(ws: ClientConnection) -> dict[str, Any]:
    await ws.send(CREATE)
    return dict(json.loads(await ws.recv()))


async def closed(ws: ClientConnection, within_s: float = 5.0) -> tuple[int | None, str | None, list[dict[str, Any]]]:
    """Read until the server closes: (close code, reason, events seen)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        try:
            while True:
                seen.append(json.loads(await ws.recv()))
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason, seen) if exc.rcvd else (None, None, seen)


async def test_bare_sockets_hold_no_slot(tmp_path: Path) -> None:
    s = settings(tmp_path, max_pending_connections=8, handshake_timeout_s=30.0)
    async with serve_app(create_app(GatedEngine(), s), s) as url:
        idle = [await bare(url) for _ in range(6)]  # the attack: sockets that never send session.create
        real = await bare(url)
        assert (await create(real))["type"] == "session.created"  # the one slot is still free for a real session
        # Session N+1: a bare socket that now asks gets server_full and 1013; a new upgrade gets HTTP 503.
        assert (await create(idle[0]))["code"] == "server_full"
        code, _, _ = await closed(idle[0])
        assert code == 1013
        with pytest.raises(InvalidStatus) as info:
            await bare(url)
        assert info.value.response.status_code == 503
        for ws in [*idle[1:], real]:
            await ws.close()


async def test_a_socket_without_a_session_is_closed_after_the_handshake_timeout(tmp_path: Path) -> None:
    s = settings(tmp_path, handshake_timeout_s=1.0)
    async with serve_app(create_app(GatedEngine(), s), s) as url:
        ws = await bare(url)
        started = time.monotonic()
        for _ in range(3):  # pings do not extend the handshake deadline
            await ws.send(json.dumps({"type": "ping"}))
            await asyncio.sleep(0.2)
        code, reason, seen = await closed(ws)
        assert code == 1008 and reason is not None and "session.create" in reason
        assert 0.9 <= time.monotonic() - started < 4.0
        assert [ev["type"] for ev in seen] == ["pong"] * 3
        created = await bare(url)  # a socket that creates its session in time keeps it past the deadline
        assert (await create(created))["type"] == "session.created"
        await asyncio.sleep(1.5)
        await created.send(json.dumps({"type": "ping"}))
        async with asyncio.timeout(5):
            while json.loads(await created.recv())["type"] != "pong":  # session.metrics come meanwhile
                pass
        await created.close()


async def test_waiting_sockets_at_n_and_n_plus_one(tmp_path: Path) -> None:
    s = settings(tmp_path, max_sessions=4, max_pending_connections=2, handshake_timeout_s=30.0)
    async with serve_app(create_app(GatedEngine(), s), s) as url:
        waiting = [await bare(url), await bare(url)]  # N = 2 wait
        with pytest.raises(InvalidStatus) as info:  # N + 1 is refused before the upgrade
            await bare(url)
        assert info.value.response.status_code == 503
        assert (await create(waiting[0]))["type"] == "session.created"  # a socket with a session no longer waits
        third = await bare(url)
        await third.close()
        await waiting[1].close()
        await asyncio.sleep(0.1)  # the server sees the close
        again = [await bare(url), await bare(url)]  # a closed waiting socket gave its place back
        for ws in [*again, waiting[0]]:
            await ws.close()
