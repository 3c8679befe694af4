"""Shedding under overload and repair from the recording, and the send-side bound, on a real server."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import psutil
from websockets.asyncio.client import connect

from echopanel.audio.wav import read_pcm16
from echopanel.client import LiveClient, TranscriptView
from echopanel.client.stream import send_source

from support import LIBRIVOX, PHONE, ServerProcess, librivox_refs, phone_ref, wer


async def test_shed_audio_is_repaired_from_the_recording(server: ServerProcess) -> None:
    name = "sense_and_sensibility_01_austen_64kb-0870"
    mic = read_pcm16(LIBRIVOX / f"{name}.wav") + b"\x00\x00" * 16000
    system = read_pcm16(PHONE / "sample.wav")
    async with LiveClient(server.url, sources=["mic", "system"]) as client:  # overflow: shed (the default)
        assert client.session["limits"]["overflow"] == "shed"
        view = TranscriptView()

        async def receive() -> None:
            async for ev in client.events():
                view.apply(ev, time.monotonic())

        receiver = asyncio.create_task(receive())
        # The person at the mic speaks in real time while 30 s of system audio arrives at once (past its 2 s queue).
        await asyncio.gather(
            send_source(client, "mic", mic, realtime=True),
            send_source(client, "system", system, realtime=False, chunk_ms=100),
        )
        await client.close_session()
        await receiver
        assert client.close_code == 1000
    assert view.summary is not None
    stats = view.summary["stats"]["sources"]["system"]
    assert stats["dropped_ms"] > 1000 and stats["shed_spans"], stats
    assert stats["repaired_items"] >= 1
    assert stats["received_ms"] >= 29_000
    levels = [b["level"] for b in view.backpressure if b["source"] == "system"]
    assert "shedding" in levels and levels[-1] == "normal", levels
    # The stored transcript has no holes: the whole call is there, in time order.
    items = [t for t in view.summary["transcript"] if t["source"] == "system"]
    assert [t["start_ms"] for t in items] == sorted(t["start_ms"] for t in items)
    assert any(t["repaired"] for t in items)
    text = " ".join(t["text"] for t in items)
    # No holes: every utterance of the call (reference times) overlaps a stored item, and the words are about as
    # good as without shedding (repair decodes whole utterances: measured 16-26 % WER shed, ~20 % unshed).
    for ref_start, ref_end in phone_utterances():
        assert any(t["start_ms"] < ref_end and t["end_ms"] > ref_start for t in items), (ref_start, ref_end)
    text = " ".join(t["text"] for t in items)
    assert wer(phone_ref(), text) <= 0.35, text
    # The microphone is shed last: nothing of it was lost, and its text is as good as ever.
    assert view.summary["stats"]["sources"]["mic"]["dropped_ms"] == 0
    mic_text = " ".join(t["text"] for t in view.summary["transcript"] if t["source"] == "mic")
    assert wer(librivox_refs()[name], mic_text) <= 0.10, mic_text


def phone_utterances() -> list[tuple[int, int]]:
    """(start_ms, end_ms) of each utterance of the phone call, from its STM reference."""
    spans = []
    for line in (PHONE / "sample.stm").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            spans.append((int(float(parts[3]) * 1000), int(float(parts[4]) * 1000)))
    return spans


def server_rss_mb(server: ServerProcess) -> float:
    return float(psutil.Process(server.proc.pid).memory_info().rss) / 1e6


async def test_client_that_never_reads_is_cut_off_without_growing_memory(impatient_server: ServerProcess) -> None:
    before = server_rss_mb(impatient_server)
    sock = socket.create_connection(("127.0.0.1", impatient_server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    start = time.monotonic()
    ws = await connect(impatient_server.url, sock=sock, max_queue=1, ping_interval=None, close_timeout=1)
    await ws.send(json.dumps({"type": "session.create", "session": {"sources": ["mic"]}}))
    # Ask for many large answers (a pong echoes its 4 kB event_id) and read none of them.
    pad = "x" * 4000
    try:
        for i in range(20_000):
            await asyncio.wait_for(ws.send(json.dumps({"type": "ping", "event_id": f"{pad}{i}"})), 5)
    except Exception:
        pass  # the server stopped reading us (TCP pushes back), then cut us off
    try:
        await asyncio.wait_for(ws.close(), 3)  # our own socket is stuck by design
    except Exception:
        pass
    async with httpx.AsyncClient(base_url=impatient_server.http) as http:
        for _ in range(100):
            if (await http.get("/ready")).json()["sessions"] == 0:
                break
            await asyncio.sleep(0.1)
        assert (await http.get("/ready")).json()["sessions"] == 0
    elapsed = time.monotonic() - start
    assert elapsed < 30
    assert server_rss_mb(impatient_server) - before < 50
    assert any("client not reading" in line for line in impatient_server.log)


async def test_abandoned_session_is_finalized_after_the_idle_timeout(idle_server: ServerProcess) -> None:
    name = "sense_and_sensibility_01_austen_64kb-0930"
    pcm = read_pcm16(LIBRIVOX / f"{name}.wav") + b"\x00\x00" * 16000
    async with LiveClient(idle_server.url, sources=["mic"]) as client:
        await client.send_audio("mic", pcm)  # then the client goes quiet without session.close
        start = time.monotonic()
        events = [ev async for ev in client.events()]
        waited = time.monotonic() - start
        assert client.close_code == 1000
    kinds = [e["type"] for e in events]
    assert "error" in kinds and events[kinds.index("error")]["code"] == "idle_timeout"
    assert kinds[-1] == "session.summary"
    assert wer(librivox_refs()[name], " ".join(t["text"] for t in events[-1]["transcript"])) <= 0.15
    assert 1.5 <= waited <= 15
