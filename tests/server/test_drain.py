"""SIGTERM drains a node (docs/deployment.md "Drain and rolling restarts"). Alone, on SQLite, there is no other node
to hand a session to: each live session is closed 1012 at its next pause and finalized as ``interrupted`` (stored,
with its summary), new connections are refused while it drains, and the process exits within the bound. The fleet
case (hand-offs to other nodes) is tests/server/test_fleet.py."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
from websockets.exceptions import ConnectionClosed

from echopanel.audio.wav import read_pcm16
from echopanel.client import LiveClient

from support import LIBRIVOX, run_server

SENTENCE = LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0870.wav"


async def test_sigterm_alone_finalizes_each_session_at_a_pause_and_exits(tmp_path: Path) -> None:
    with run_server(tmp_path) as server:
        async with LiveClient(server.url, sources=["mic"]) as client:
            sid = client.session["id"]
            pcm = read_pcm16(SENTENCE)
            for i in range(0, len(pcm), 1280):  # the sentence, then silence: a pause comes after it
                await client.send_audio("mic", pcm[i : i + 1280])
            await client.send_audio("mic", b"\x00\x00" * 16000)
            started = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            seen: list[str] = []
            try:
                async with asyncio.timeout(30):
                    while True:
                        seen.append((await client.recv())["type"])
            except ConnectionClosed:
                pass
            assert client.close_code == 1012, (client.close_code, seen[-5:])
            assert "response.done" in seen  # the sentence was finished before the hand-off
            server.proc.wait(30)
            took = time.monotonic() - started
        assert took < 25, took  # drain_timeout_s (20 s) + the graceful shutdown
        log = "\n".join(server.log)
        assert "draining: handing off 1 connection(s)" in log and "Traceback" not in log, log[-2000:]
    with run_server(tmp_path) as again:  # the stored session: finalized by the drain, with its summary
        async with httpx.AsyncClient(base_url=again.http) as http:
            stored = (await http.get(f"/v1/sessions/{sid}", params={"words": "0"})).json()
    assert stored["status"] == "interrupted", stored["status"]
    assert stored["summary"] is not None and stored["items"], stored
