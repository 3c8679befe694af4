"""Resume after a dropped connection, on a real server, with connections cut by a real TCP proxy."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from echopanel.audio.wav import read_pcm16
from echopanel.protocol.frames import encode_frame
from echopanel.testing.proxy import ChaosProxy

from support import LIBRIVOX, ServerProcess, librivox_refs, run_server, wer

GRACE_S = 4.0
GAP = b"\x00\x00" * 16000
S0870, S0880 = "sense_and_sensibility_01_austen_64kb-0870", "sense_and_sensibility_01_austen_64kb-0880"


@pytest.fixture(scope="module")
def resume_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"ECHOPANEL_RESUME_GRACE_S": str(GRACE_S)}
    with run_server(tmp_path_factory.mktemp("resume"), env=env, args=["--max-sessions", "2"]) as srv:
        yield srv


@asynccontextmanager
async def proxied(server: ServerProcess) -> AsyncIterator[ChaosProxy]:
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def open_ws(url: str) -> ClientConnection:
    return await connect(url, subprotocols=["echopanel.v1"], max_size=None)  # type: ignore[list-item]


async def recv_until(
    ws: ClientConnection, kind: str, within_s: float = 30
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        while True:
            ev = json.loads(await ws.recv())
            seen.append(ev)
            if ev["type"] == kind:
                return ev, seen


async def drain(ws: ClientConnection) -> list[dict[str, Any]]:
    out = []
    try:
        async for raw in ws:
            out.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return out


def speech(name: str) -> bytes:
    return read_pcm16(LIBRIVOX / f"{name}.wav") + GAP


async def test_resume_continues_the_same_session_after_a_cut(resume_server: ServerProcess) -> None:
    audio = speech(S0880) + speech(S0870)
    split = len(audio) // 3 // 3200 * 3200  # whole 100 ms frames; the cut falls in the 2nd sentence
    first, rest = audio[:split], audio[split:]
    async with proxied(resume_server) as proxy:
        url = proxy.url(resume_server.url)
        ws = await open_ws(url)
        await ws.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
        created, _ = await recv_until(ws, "session.created")
        session = created["session"]
        for i in range(0, len(first), 3200):
            await ws.send(encode_frame(0, first[i : i + 3200]))
        before, seen = await recv_until(ws, "response.done")  # the first sentence's final
        acked = 0
        async with asyncio.timeout(10):
            while acked < len(first) // 32:  # until the server acknowledges everything (received_ms)
                ev = json.loads(await ws.recv())
                seen.append(ev)
                if ev["type"] == "session.metrics":
                    acked = ev["sources"]["mic"]["received_ms"]
        assert proxy.cut() == 1
        await drain(ws)
        await asyncio.sleep(0.5)  # the server notices and detaches the session; it goes on transcribing
        ws = await open_ws(url)
        resume = {"session_id": session["id"], "resume_token": session["resume_token"]}
        await ws.send(json.dumps({"type": "session.create", "event_id": "r1", "resume": resume}))
        resumed, _ = await recv_until(ws, "session.created")
        assert resumed["resumed"] is True and resumed["event_id"] == "r1"
        assert resumed["session"] == session  # the same session object
        assert resumed["received_ms"] == {"mic": len(first) // 32}
        for i in range(0, len(rest), 3200):
            await ws.send(encode_frame(0, rest[i : i + 3200]))
        await ws.send(json.dumps({"type": "session.close"}))
        after = await drain(ws)
        assert ws.close_code == 1000
    finals = {e["item_id"]: e for e in [*seen, *after] if e["type"] == "response.done"}
    replayed = [e for e in after if e.get("replayed")]
    assert [e["item_id"] for e in replayed] == [before["item_id"]]  # the final written just before the cut, again
    assert sorted(finals) == [f"item_mic_{n:05d}" for n in range(1, len(finals) + 1)]  # numbering continued
    summary = after[-1]
    assert (
        summary["type"] == "session.summary" and summary["stats"]["sources"]["mic"]["received_ms"] == len(audio) // 32
    )
    ref = librivox_refs()[S0880] + " " + librivox_refs()[S0870]
    assert wer(ref, " ".join(t["text"] for t in summary["transcript"])) <= 0.1
    assert [t["start_ms"] for t in summary["transcript"]] == sorted(t["start_ms"] for t in summary["transcript"])


async def test_finals_produced_while_detached_are_delivered_on_resume(resume_server: ServerProcess) -> None:
    async with proxied(resume_server) as proxy:
        url = proxy.url(resume_server.url)
        ws = await open_ws(url)
        await ws.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
        session = (await recv_until(ws, "session.created"))[0]["session"]
        await ws.send(encode_frame(0, speech(S0870)))  # all at once; the cut comes before its final is ready
        await recv_until(ws, "input_audio_buffer.speech_started")
        proxy.cut()
        await drain(ws)
        await asyncio.sleep(3.0)  # meanwhile the session finishes the sentence with nobody connected
        ws = await open_ws(url)
        resume = {"session_id": session["id"], "resume_token": session["resume_token"]}
        await ws.send(json.dumps({"type": "session.create", "resume": resume}))
        resumed, _ = await recv_until(ws, "session.created")
        assert resumed["received_ms"]["mic"] == len(speech(S0870)) // 32  # nothing to resend
        done, _ = await recv_until(ws, "response.done", within_s=10)
        assert wer(librivox_refs()[S0870], done["text"]) <= 0.1
        await ws.send(json.dumps({"type": "session.close"}))
        await drain(ws)


async def test_wrong_token_gets_session_not_found_and_the_connection_stays_open(resume_server: ServerProcess) -> None:
    ws = await open_ws(resume_server.url)
    await ws.send(
        json.dumps(
            {"type": "session.create", "event_id": "x", "resume": {"session_id": "sess_nope", "resume_token": "bad"}}
        )
    )
    err = json.loads(await ws.recv())
    assert err["type"] == "error" and err["code"] == "session_not_found" and err["event_id"] == "x"
    await ws.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
    created, _ = await recv_until(ws, "session.created")
    bad = {"session_id": created["session"]["id"], "resume_token": "wrong"}
    ws2 = await open_ws(resume_server.url)
    await ws2.send(json.dumps({"type": "session.create", "resume": bad}))
    assert json.loads(await ws2.recv())["code"] == "session_not_found"  # the right id alone is not enough
    await ws2.close()
    await ws.send(json.dumps({"type": "session.close"}))
    await drain(ws)


async def test_detached_session_keeps_its_slot_a_full_server_still_takes_its_resume(
    resume_server: ServerProcess,
) -> None:
    async with proxied(resume_server) as proxy:
        url = proxy.url(resume_server.url)
        one = await open_ws(resume_server.url)
        await one.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
        await recv_until(one, "session.created")
        two = await open_ws(url)
        await two.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
        session = (await recv_until(two, "session.created"))[0]["session"]
        proxy.cut()
        await drain(two)
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=resume_server.http) as http:
            ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["sessions"] == 2  # the detached one holds its slot
            metrics = (await http.get("/metrics")).text
            assert "echopanel_sessions_detached 1.0" in metrics
        fresh = await open_ws(resume_server.url)  # over the limit: admitted only to resume
        await fresh.send(json.dumps({"type": "session.create", "event_id": "f", "session": {"sources": ["mic"]}}))
        err = json.loads(await fresh.recv())
        assert err["code"] == "server_full" and err["event_id"] == "f"
        await drain(fresh)
        assert fresh.close_code == 1013
        back = await open_ws(resume_server.url)
        resume = {"session_id": session["id"], "resume_token": session["resume_token"]}
        await back.send(json.dumps({"type": "session.create", "resume": resume}))
        resumed, _ = await recv_until(back, "session.created")
        assert resumed["resumed"] and resumed["session"]["id"] == session["id"]
        for ws in (one, back):
            await ws.send(json.dumps({"type": "session.close"}))
            await drain(ws)
    async with httpx.AsyncClient(base_url=resume_server.http) as http:
        for _ in range(50):
            if (await http.get("/ready")).json()["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/ready")).json()["sessions"] == 0  # every slot released exactly once


async def test_no_resume_within_the_grace_finalizes_the_session_as_interrupted(resume_server: ServerProcess) -> None:
    async with proxied(resume_server) as proxy:
        ws = await open_ws(proxy.url(resume_server.url))
        await ws.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
        session = (await recv_until(ws, "session.created"))[0]["session"]
        await ws.send(encode_frame(0, speech(S0880)))
        await recv_until(ws, "input_audio_buffer.speech_started")
        proxy.cut()
        await drain(ws)
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=resume_server.http) as http:
        status = None
        while time.monotonic() - t0 < GRACE_S + 15:
            r = await http.get(f"/v1/sessions/{session['id']}")
            if r.status_code == 200 and r.json()["status"] != "active":
                status = r.json()
                break
            await asyncio.sleep(0.25)
        assert status is not None and status["status"] == "interrupted"
        assert time.monotonic() - t0 >= GRACE_S - 1
        # What it heard before the cut was transcribed and stored.
        assert wer(librivox_refs()[S0880], " ".join(i["text"] for i in status["items"])) <= 0.3
        assert (await http.get("/ready")).json()["sessions"] == 0
    ws = await open_ws(resume_server.url)
    resume = {"session_id": session["id"], "resume_token": session["resume_token"]}
    await ws.send(json.dumps({"type": "session.create", "resume": resume}))
    assert json.loads(await ws.recv())["code"] == "session_not_found"
    await ws.close()


async def test_a_clean_close_without_session_close_is_not_kept(resume_server: ServerProcess) -> None:
    """The client closing the socket itself (1000) is a hang-up, not a drop: no grace, the slot is free at once."""
    ws = await open_ws(resume_server.url)
    await ws.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
    await recv_until(ws, "session.created")
    await ws.close()
    async with httpx.AsyncClient(base_url=resume_server.http) as http:
        for _ in range(30):
            if (await http.get("/ready")).json()["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/ready")).json()["sessions"] == 0


async def test_a_resume_takes_the_session_over_from_a_half_dead_connection(resume_server: ServerProcess) -> None:
    old = await open_ws(resume_server.url)  # still open as far as the server knows (the client lost track of it)
    await old.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
    session = (await recv_until(old, "session.created"))[0]["session"]
    await old.send(encode_frame(0, speech(S0880)))
    new = await open_ws(resume_server.url)
    resume = {"session_id": session["id"], "resume_token": session["resume_token"]}
    await new.send(json.dumps({"type": "session.create", "resume": resume}))
    resumed, _ = await recv_until(new, "session.created")
    assert resumed["resumed"] and resumed["received_ms"]["mic"] == len(speech(S0880)) // 32
    await drain(old)
    assert old.close_code == 4000  # "session resumed elsewhere": do not reconnect
    await new.send(json.dumps({"type": "session.close"}))
    events = await drain(new)
    assert events[-1]["type"] == "session.summary"
    assert wer(librivox_refs()[S0880], " ".join(t["text"] for t in events[-1]["transcript"])) <= 0.3
