"""Recordings: what ``append`` accepted is in the OS at once, so an acknowledgement (``received_ms``) never covers
audio that a killed server loses (a unit test on the file, and ``kill -9`` of a real server)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from echopanel.client import LiveClient
from echopanel.storage.recording import Recording, session_dir

from support import run_server


def test_appended_audio_is_on_disk_before_close(tmp_path: Path) -> None:
    rec = Recording(tmp_path / "mic.pcm", 16000)
    assert rec.append(b"\x01\x00" * 800) == 0
    assert rec.append(b"\x02\x00" * 800) == 800
    assert (tmp_path / "mic.pcm").stat().st_size == 3200  # not waiting in a write buffer
    assert rec.read(799, 801) == b"\x01\x00\x02\x00"
    rec.close()


async def test_acknowledged_audio_survives_kill_9(tmp_path: Path) -> None:
    with run_server(tmp_path) as server:
        async with LiveClient(server.url, sources=["mic"]) as client:
            sid = client.session["id"]
            pcm = b"\x00\x00" * (16000 * 3 // 2)  # 1.5 s: less than the 64 KB (2 s) a write buffer used to hold
            for i in range(0, len(pcm), 1280):
                await client.send_audio("mic", pcm[i : i + 1280])
            acked = 0
            async with asyncio.timeout(10):
                while acked < 1500:
                    ev = await client.recv()
                    if ev["type"] == "session.metrics":
                        acked = ev["sources"]["mic"]["received_ms"]
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(10)
        on_disk = (session_dir(tmp_path, sid) / "mic.pcm").stat().st_size
        assert on_disk // 32 >= acked == 1500  # 32 bytes per ms at 16 kHz PCM16
