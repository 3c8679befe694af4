from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from echopanel.client import LiveClient

from support import ServerProcess


async def closed_code(url: str, **kwargs: object) -> int | None:
    async with connect(url, **kwargs) as ws:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed):
            await ws.send(json.dumps({"type": "session.create"}))
            while True:
                await ws.recv()
        return ws.close_code


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"additional_headers": {"Authorization": "Bearer wrong"}},
        {"subprotocols": ["echopanel.v1", "echopanel.token.wrong"]},
        {"additional_headers": {"Authorization": "Basic s3cret"}},
    ],
)
async def test_missing_or_wrong_token_closes_1008(token_server: ServerProcess, kwargs: dict[str, object]) -> None:
    assert await closed_code(token_server.url, **kwargs) == 1008


async def test_token_in_query_string_is_not_accepted(token_server: ServerProcess) -> None:
    assert await closed_code(token_server.url + "?token=s3cret") == 1008


async def test_bearer_header(token_server: ServerProcess) -> None:
    async with LiveClient(token_server.url, token="s3cret", sources=["mic"]) as client:
        assert client.session["id"].startswith("sess_")


async def test_browser_subprotocol_token_and_the_token_is_not_echoed(token_server: ServerProcess) -> None:
    async with connect(token_server.url, subprotocols=["echopanel.v1", "echopanel.token.s3cret"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "echopanel.v1"
        await ws.send(json.dumps({"type": "session.create"}))
        assert json.loads(await ws.recv())["type"] == "session.created"
