"""The resilient client's options for live capture (``echopanel listen`` runs on them): a new session when the server
no longer has the old one, the catch-up pace and its pause under backpressure, and the stops that are not retried."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from echopanel.audio.wav import read_pcm16
from echopanel.client.live import ServerError
from echopanel.client.resilient import CatchUp, FatalConnectionError, ResilientClient
from echopanel.flow.breaker import BreakerSettings
from echopanel.testing.proxy import ChaosProxy

from support import LIBRIVOX, ServerProcess, librivox_refs, run_server, wer

GAP = b"\x00\x00" * 16000
SENTENCE_A = "sense_and_sensibility_01_austen_64kb-0880"
SENTENCE_B = "sense_and_sensibility_01_austen_64kb-0930"
LENIENT = BreakerSettings(failure_threshold=10_000)  # attempts while refused must not open the client's breaker
GRACE_S = 3.0


def speech(name: str) -> bytes:
    return read_pcm16(LIBRIVOX / f"{name}.wav") + GAP


async def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def drain_events(client: ResilientClient) -> list[dict[str, Any]]:
    return [ev async for ev in client.events()]


@pytest.fixture(scope="module")
def short_grace_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("grace"), env={"ECHOPANEL_RESUME_GRACE_S": str(GRACE_S)}) as srv:
        yield srv


async def test_a_lost_session_goes_on_in_a_new_one_with_the_audio_the_old_one_never_acknowledged(
    short_grace_server: ServerProcess,
) -> None:
    server = short_grace_server
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        client = ResilientClient(
            proxy.url(server.url),
            sources=["mic"],
            on_session_lost="new_session",
            backoff_base_s=0.05,
            backoff_max_s=0.2,
            breaker=LENIENT,
        )
        first = await client.open()
        events = asyncio.create_task(drain_events(client))
        await client.send_audio("mic", speech(SENTENCE_A))
        buf = client.buffers["mic"]
        await until(lambda: buf.held == 0, 15, "the server never acknowledged the first sentence")
        proxy.refuse(True)
        proxy.cut()
        during = speech(SENTENCE_B)
        await client.send_audio("mic", during)  # the old session never gets this
        await asyncio.sleep(GRACE_S + 2.0)  # the server gives the detached session up
        proxy.refuse(False)
        await until(lambda: client.stats.new_sessions == 1 and client.live, 15, "no new session")
        summary = await client.close()
        seen = await events
    finally:
        await proxy.stop()
    assert summary is not None and client.close_code == 1000
    assert client.session["id"] != first["id"] and summary["session_id"] == client.session["id"]
    started = [ev for ev in seen if ev["type"] == "client.session_started"]
    assert [ev["previous_session_id"] for ev in started] == [None, first["id"]]
    assert started[1]["carried_ms"] == {"mic": len(during) // 32}
    # The new session got exactly the unacknowledged audio, counted from 0, and transcribed it.
    assert summary["stats"]["sources"]["mic"]["received_ms"] == len(during) // 32
    text = " ".join(t["text"] for t in summary["transcript"])
    assert wer(librivox_refs()[SENTENCE_B], text) <= 0.3, text
    assert all(t["start_ms"] < len(during) // 32 for t in summary["transcript"])


async def test_catch_up_after_a_reconnect_is_paced_at_4x_real_time(server: ServerProcess) -> None:
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        client = ResilientClient(
            proxy.url(server.url),
            sources=["mic"],
            catchup=CatchUp(speed=4.0, threshold_ms=1000, max_frame_ms=250),
            backoff_base_s=0.05,
            backoff_max_s=0.2,
            breaker=LENIENT,
        )
        await client.open()
        proxy.refuse(True)
        proxy.cut()
        await until(lambda: not client.live, 5, "the cut went unnoticed")
        backlog = speech(SENTENCE_A) + speech(SENTENCE_B)
        await client.send_audio("mic", backlog)
        await asyncio.sleep(0.3)
        proxy.refuse(False)
        await until(lambda: client.stats.caught_up_s, 30, "never caught up")
        summary = await client.close()
    finally:
        await proxy.stop()
    backlog_s = len(backlog) / 32000
    took = client.stats.caught_up_s[0] - client.stats.resume_s[0]
    paced = (backlog_s - 1.0) / 4.0  # above the 1 s threshold the backlog goes at 4x real time
    print(f"caught up {backlog_s:.1f} s of backlog in {took:.2f} s (4x pace: {paced:.2f} s)")
    assert paced * 0.8 <= took <= paced + 3.0
    assert summary is not None and summary["stats"]["sources"]["mic"]["received_ms"] == len(backlog) // 32


async def test_catch_up_pauses_while_the_server_reports_backpressure() -> None:
    """A scripted peer (fault injection: a real server cannot be made to report backpressure on cue) answers
    session.create, counts the audio it gets, and reports ``high`` then ``normal`` backpressure for the source."""
    received: list[int] = []  # samples per binary frame
    peers: list[ServerConnection] = []

    async def peer(ws: ServerConnection) -> None:
        peers.append(ws)
        create = json.loads(await ws.recv())
        session = {"id": "sess_peer", "resume_token": "t", "sources": ["mic"], "limits": {"resume_grace_ms": 30_000}}
        await ws.send(json.dumps({"type": "session.created", "event_id": create["event_id"], "session": session}))
        async for message in ws:
            if isinstance(message, bytes):
                received.append((len(message) - 4) // 2)

    def got_s() -> float:
        return sum(received) / 16000

    async with serve(peer, "127.0.0.1", 0) as fake:
        port = fake.sockets[0].getsockname()[1]
        client = ResilientClient(f"ws://127.0.0.1:{port}/v1/live", sources=["mic"], catchup=CatchUp())
        await client.send_audio("mic", b"\x00\x00" * 16000 * 6)  # 6 s captured before the connection
        t0 = time.monotonic()
        await client.open()
        await until(lambda: got_s() >= 1.0, 5, "no audio")
        first_second = time.monotonic() - t0
        backpressure = {"type": "input_audio_buffer.backpressure", "source": "mic", "queued_ms": 2000}
        await peers[0].send(json.dumps({**backpressure, "level": "high"}))
        await asyncio.sleep(0.3)  # frames already on their way
        paused_at = got_s()
        await asyncio.sleep(1.0)
        assert got_s() == paused_at, "the catch-up went on while the server reported high backpressure"
        await peers[0].send(json.dumps({**backpressure, "level": "normal"}))
        await until(lambda: got_s() == 6.0, 10, "the catch-up did not resume")
        await client.aclose()
    assert first_second >= 0.15  # 1 s of audio at 4x takes 0.25 s (at once it would take milliseconds)
    assert paused_at < 6.0 and max(received) <= 16000 // 4  # frames of at most 250 ms while catching up


async def test_a_wrong_token_stops_the_client_without_retrying(token_server: ServerProcess) -> None:
    client = ResilientClient(token_server.url, token="wrong", sources=["mic"])
    with pytest.raises(FatalConnectionError) as info:
        await client.open()
    assert info.value.code == 1008
    background = ResilientClient(token_server.url, token="wrong", sources=["mic"])
    background.start()  # as listen connects: in the background, retried when retrying can help
    await until(lambda: background.done, 10, "still retrying a refused token")
    assert isinstance(background.error, FatalConnectionError) and background.stats.failed_attempts == 0
    await background.aclose()


async def test_a_refused_configuration_is_not_retried(server: ServerProcess) -> None:
    client = ResilientClient(server.url, sources=["mic"], sample_rate=11025)
    client.start()
    await until(lambda: client.done, 10, "still retrying a refused configuration")
    assert isinstance(client.error, ServerError) and client.stats.failed_attempts == 0
    with pytest.raises(ServerError):
        await client.close()


async def test_a_session_resumed_by_another_connection_stops_the_client(server: ServerProcess) -> None:
    client = ResilientClient(server.url, sources=["mic"])
    session = await client.open()
    await client.send_audio("mic", speech(SENTENCE_A))
    other = await connect(server.url, subprotocols=["echopanel.v1"], max_size=None)  # type: ignore[list-item]
    try:
        resume = {"session_id": session["id"], "resume_token": session["resume_token"]}
        await other.send(json.dumps({"type": "session.create", "resume": resume}))
        while json.loads(await other.recv())["type"] != "session.created":
            pass
        await until(lambda: client.done, 10, "the client did not stop")
        assert isinstance(client.error, FatalConnectionError) and client.error.code == 4000
        assert client.close_code == 4000 and client.stats.outages == 0  # no reconnect: the other one has it
        await other.send(json.dumps({"type": "session.close"}))
        async for _ in other:
            pass
    finally:
        await other.close()
        await client.aclose()
