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


def test_a_recording_another_process_wrote_goes_on_at_its_durable_end(tmp_path: Path) -> None:
    """A node taking a session over opens its recording where the old node left it; a torn last sample (an odd
    byte: the old process died mid-write) is cut, and new audio follows the old."""
    path = tmp_path / "mic.pcm"
    first = Recording(path, 16000)
    first.append(b"\x01\x00\x02\x00\x03\x00")
    first.close()
    with open(path, "ab") as f:
        f.write(b"\x04")  # half a sample
    again = Recording(path, 16000, resume=True)
    assert again.samples == 3
    assert again.append(b"\x05\x00") == 3
    again.close()
    assert path.read_bytes() == b"\x01\x00\x02\x00\x03\x00\x05\x00"
    fresh = Recording(tmp_path / "new.pcm", 16000, resume=True)  # nothing there yet: an empty recording
    assert fresh.samples == 0
    fresh.close()
