from __future__ import annotations

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from echopanel.client import LiveClient
from echopanel.flow.admission import Admission, Pending

from support import ServerProcess, wait_until_ready


def test_admission_at_n_and_n_plus_one() -> None:
    adm = Admission(2)
    first, second = adm.acquire(), adm.acquire()
    assert first is not None and second is not None
    assert adm.acquire() is None and adm.refused == 1
    first.release()
    first.release()  # a lease is released once, however often it is asked
    assert adm.capacity_left == 1 and adm.acquire() is not None
    with pytest.raises(ValueError):
        Admission(0)


def test_pending_sockets_at_n_and_n_plus_one() -> None:
    pending = Pending(2)
    assert pending.enter() and pending.enter()
    assert not pending.enter() and pending.count == 2
    pending.leave()
    assert pending.enter()
    for _ in range(5):
        pending.leave()
    assert pending.count == 0  # never below zero
    with pytest.raises(ValueError):
        Pending(0)


async def test_session_n_plus_one_gets_503_with_retry_after(small_server: ServerProcess) -> None:
    async with LiveClient(small_server.url, sources=["mic"]) as first:  # session N (= 1) is admitted
        assert first.session["id"]
        with pytest.raises(InvalidStatus) as info:
            async with connect(small_server.url):
                pass
        response = info.value.response
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) > 0
        async with httpx.AsyncClient(base_url=small_server.http) as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "full"
        # The admitted session is unaffected by the refusal.
        await first.send_audio("mic", b"\x00\x00" * 1600)
        pong_id = await first.send({"type": "ping"})
        assert await first.recv() == {"type": "pong", "event_id": pong_id}
    await wait_until_ready(small_server)  # the slot is released when the session ends
    async with LiveClient(small_server.url, sources=["mic"]) as again:
        assert again.session["id"]
