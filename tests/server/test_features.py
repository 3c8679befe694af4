"""A missing optional part is never silent: the ready line, ``/ready`` and ``session.created`` say what is off.

(The default server, with every part on, is checked in test_live.py and, installed from the wheel, in
tests/test_packaging.py.)
"""

from __future__ import annotations

from pathlib import Path

import httpx

from echopanel.client import LiveClient

from support import run_server


async def test_a_server_without_speakers_or_fallback_says_so(tmp_path: Path) -> None:
    env = {"ECHOPANEL_SPEAKERS": "false", "ECHOPANEL_FALLBACK_ENGINE": "none"}
    with run_server(tmp_path, env=env) as server:
        ready_line = next(line for line in server.log if "EchoPanel ready" in line)
        assert " fallback=off speakers=off store=sqlite " in ready_line and " engine=whisper " in ready_line, ready_line
        assert any("speaker labels off: ECHOPANEL_SPEAKERS is false" in line for line in server.log)
        assert not server.warnings  # turned off on purpose: said, not warned about
        features = {"speakers": False, "fallback": None, "store": "sqlite"}
        async with httpx.AsyncClient(base_url=server.http) as http:
            assert (await http.get("/ready")).json()["features"] == features
        async with LiveClient(server.url, sources=["mic"]) as client:
            assert client.session["features"] == features
