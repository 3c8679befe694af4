"""``GET /debug/memory`` on a real server in this process: off by default, and with ``memory_debug`` it names the
places whose Python allocations grew."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import httpx

from echopanel.config import Settings
from echopanel.server.app import create_app
from echopanel.testing.inprocess import serve_app

from fakes.engines import GatedEngine

HOARD: list[bytearray] = []


async def test_memory_debug_is_off_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, speakers=False)
    async with serve_app(create_app(GatedEngine(), settings), settings) as url:
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as http:
            assert (await http.get("/debug/memory")).status_code == 404


async def test_memory_debug_names_what_grew(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, speakers=False, memory_debug=True, token="t")
    try:
        await _grow_and_report(settings)
    finally:
        tracemalloc.stop()  # the server runs in this process: do not slow the tests after this one


async def _grow_and_report(settings: Settings) -> None:
    async with serve_app(create_app(GatedEngine(), settings), settings) as url:
        async with httpx.AsyncClient(base_url=url.replace("ws://", "http://"), timeout=60) as http:
            assert (await http.get("/debug/memory")).status_code == 401  # the token rule holds here too
            auth = {"Authorization": "Bearer t"}
            assert (await http.post("/debug/memory/baseline", headers=auth)).json() == {"baseline": "reset"}
            HOARD.extend(bytearray(64 * 1024) for _ in range(64))  # 4 MB that stays
            report = (await http.get("/debug/memory", params={"top": 5}, headers=auth)).json()
            HOARD.clear()
    assert report["rss_mb"] > 0 and report["traced_mb"] >= 4
    top = report["top"][0]
    assert top["where"].endswith("test_memory_debug.py:41") and top["growth_kb"] >= 4000 and top["count"] >= 64
