"""A real server on a real PostgreSQL (``--store postgresql://...``): the session, its finals and its summary land
there, the HTTP API and ``echopanel sessions`` read them back, the node beats its heartbeat, and a restarting node
marks only its own sessions interrupted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from echopanel.audio.wav import read_audio
from echopanel.client import LiveClient
from echopanel.client.stream import transcribe
from echopanel.storage.postgres import PostgresStore
from echopanel.storage.store import SessionRecord
from echopanel.testing.postgres import fresh_database

from support import LIBRIVOX, librivox_refs, run_server, wer

STEM = "sense_and_sensibility_01_austen_64kb-0870"


def speech() -> bytes:
    audio = read_audio(LIBRIVOX / f"{STEM}.wav", 16000)
    pad = np.zeros(8000, np.float32)
    return (np.clip(np.concatenate([pad, audio, pad, pad]), -1, 1) * 32767).astype("<i2").tobytes()


async def test_a_server_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    url = fresh_database(pg_url)
    other = PostgresStore(url, "node-other")  # another node of the fleet, with a live session of its own
    other.create_session(SessionRecord("sess_other", "active", 1.0, ("mic",), 16000), [])
    env = {"ECHOPANEL_STORE": url, "ECHOPANEL_NODE_ID": "node-1"}
    try:
        with run_server(tmp_path / "a", env=env) as server:
            async with httpx.AsyncClient(base_url=server.http) as http:
                ready = (await http.get("/ready")).json()
                assert ready["features"]["store"] == "postgresql"
                async with LiveClient(server.url, sources=["mic"]) as client:
                    assert client.session["features"]["store"] == "postgresql"
                    sid = client.session["id"]
                    view = await transcribe(client, {"mic": speech()}, realtime=False)
                assert wer(librivox_refs()[STEM], view.text()) <= 0.15
                detail = (await http.get(f"/v1/sessions/{sid}")).json()
                assert detail["status"] == "completed"
                assert [t["text"] for t in detail["items"]] == [i.final for i in view.finals()]
            await asyncio.sleep(2.5)  # at least one heartbeat (every 2 s)
            assert other.node_alive("node-1")  # the running server holds its node lock
            beats = other._rows("SELECT heartbeat_at FROM nodes WHERE id = ?", ("node-1",))
            assert beats, "the server writes its heartbeat"
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "echopanel", "sessions", "--store", url, "list", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert sid in {s["id"] for s in json.loads(listed.stdout)}
        assert not other.node_alive("node-1")  # stopped: its lock went with its connection
        # node-1 starts again: the other node's live session is left alone.
        with run_server(tmp_path / "b", env=env):
            pass
        assert other.get_session("sess_other").status == "active"  # type: ignore[union-attr]
    finally:
        other.close()
