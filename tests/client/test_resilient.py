"""ResilientClient against a real server through a real TCP proxy: cuts, a dead server, a full buffer."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from echopanel.audio.wav import read_pcm16
from echopanel.client.resilient import ConnectionStatus, ResilientClient
from echopanel.client.stream import transcribe_resilient
from echopanel.flow.breaker import BreakerSettings, BreakerState
from echopanel.testing.proxy import ChaosProxy

from support import LIBRIVOX, ServerProcess, librivox_refs, run_server, wer

GAP = b"\x00\x00" * 16000
NAMES = [f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890")]


def speech() -> tuple[bytes, str]:
    refs = librivox_refs()
    return b"".join(read_pcm16(LIBRIVOX / f"{n}.wav") + GAP for n in NAMES), " ".join(refs[n] for n in NAMES)


async def test_cuts_cost_nothing_but_a_short_delay(server: ServerProcess) -> None:
    audio, ref = speech()
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    states: list[ConnectionStatus] = []
    try:
        client = ResilientClient(proxy.url(server.url), sources=["mic"], buffer_s=10, on_state=states.append)
        await client.open()

        async def cutter() -> None:
            for _ in range(3):
                await asyncio.sleep(1.5)
                proxy.cut()

        cuts = asyncio.create_task(cutter())
        view = await transcribe_resilient(client, {"mic": audio}, speed=3.0)
        await cuts
    finally:
        await proxy.stop()
    assert proxy.cuts == 3 and client.stats.resumes == 3
    assert {"reconnecting", "connecting", "live"} <= {s.state for s in states}
    assert client.summary is not None and client.close_code == 1000
    stats = client.summary["stats"]["sources"]["mic"]
    assert stats["received_ms"] == len(audio) // 32  # every sample arrived once: nothing lost, nothing doubled
    ids = [i.item_id for i in view.finals()]
    assert ids == sorted(set(ids))
    numbers = sorted(int(i.rsplit("_", 1)[1]) for i in ids)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap in the numbering
    assert wer(ref, view.text()) <= 0.1, view.text()
    assert [t["item_id"] for t in client.summary["transcript"]] == ids
    assert client.max_buffered_ms <= 10_000 and sum(b.dropped for b in client.buffers.values()) == 0
    assert view.violations == []


async def test_client_breaker_stops_hammering_a_dead_server_then_one_trial(server: ServerProcess) -> None:
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        client = ResilientClient(
            proxy.url(server.url),
            sources=["mic"],
            backoff_base_s=0.02,
            backoff_max_s=0.1,
            breaker=BreakerSettings(failure_threshold=5, reset_timeout_s=2.0),
            rng=random.Random(5),
        )
        await client.open()
        await client.send_audio("mic", read_pcm16(LIBRIVOX / f"{NAMES[1]}.wav"))
        proxy.refuse(True)  # the server is "down": every new connection is closed at once
        proxy.cut()
        await asyncio.sleep(1.0)
        assert proxy.refused == 5  # five failed attempts opened the client's breaker...
        status = client.status()
        assert status.state == "reconnecting" and status.retry_in_s is not None and 0.5 < status.retry_in_s <= 2.0
        assert "reconnecting in" in status.describe()
        await asyncio.sleep(0.5)
        assert proxy.refused == 5  # ...and it stays quiet while open
        proxy.refuse(False)
        for _ in range(100):
            if client.live:
                break
            await asyncio.sleep(0.05)
        assert client.live and proxy.refused == 5  # one trial after the reset, and it worked
        await client.send_audio("mic", GAP)
        summary = await client.close()
    finally:
        await proxy.stop()
    assert summary is not None
    assert wer(librivox_refs()[NAMES[1]], " ".join(t["text"] for t in summary["transcript"])) <= 0.3


async def test_buffer_bound_drops_the_oldest_and_keeps_the_clock(server: ServerProcess) -> None:
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        # Failed attempts while refused must not open the client's breaker (its 60 s wait is another test's subject).
        lenient = BreakerSettings(failure_threshold=10_000)
        client = ResilientClient(
            proxy.url(server.url), sources=["mic"], buffer_s=1.0, backoff_base_s=0.05, breaker=lenient
        )
        await client.open()
        proxy.refuse(True)
        proxy.cut()
        chunk = b"\x00\x00" * 640  # 40 ms of silence, 75 chunks = 3 s sent during the outage
        for _ in range(75):
            await client.send_audio("mic", chunk)
            await asyncio.sleep(0.004)
        assert client.max_buffered_ms <= 1000  # never past the bound (at N: 1000 ms kept, the rest dropped)
        assert client.status().dropped_ms == 2000
        proxy.refuse(False)
        summary = await client.close()
    finally:
        await proxy.stop()
    assert summary is not None
    # The dropped 2 s went as silence of the same length: the server's clock matches the client's.
    assert summary["stats"]["sources"]["mic"]["received_ms"] == 3000 and client.lost_ms == 2000


async def test_cli_shows_the_connection_state_and_survives_a_cut(server: ServerProcess) -> None:
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        wav = str(LIBRIVOX / f"{NAMES[0]}.wav")
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "echopanel", "transcribe", "--url", proxy.url(server.url), wav,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(3.0)  # real time: mid-sentence
        assert proxy.cut() == 1
        out, err = await asyncio.wait_for(cli.communicate(), 60)
    finally:
        await proxy.stop()
    stderr = err.decode()
    assert cli.returncode == 0, stderr
    for state in ("connection: connecting", "connection: live", "connection: reconnecting in"):
        assert state in stderr, stderr
    transcript = out.decode().split(" transcript sess_", 1)[1].split("\n", 1)[1]
    text = " ".join(transcript.replace("[00:00 mic]", "").split())
    assert wer(librivox_refs()[NAMES[0]], text) <= 0.15, out.decode()


GRACE_S = 6.0


@pytest.fixture(scope="module")
def short_grace_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server(tmp_path_factory.mktemp("grace"), env={"ECHOPANEL_RESUME_GRACE_S": str(GRACE_S)}) as srv:
        yield srv


async def test_an_open_breaker_still_tries_once_before_the_server_gives_the_session_up(
    short_grace_server: ServerProcess, tmp_path: Path
) -> None:
    """Five quick failed attempts open the client's breaker for 60 s, longer than the server's resume grace: the
    client makes one attempt at 75 % of the grace (session.created limits.resume_grace_ms) and keeps its session."""
    server = short_grace_server
    proxy = ChaosProxy("127.0.0.1", server.port)
    await proxy.start()
    try:
        client = ResilientClient(proxy.url(server.url), sources=["mic"], buffer_s=5.0, backoff_base_s=0.02)
        created = await client.open()
        assert created["limits"]["resume_grace_ms"] == GRACE_S * 1000
        proxy.refuse(True)
        proxy.cut()
        lost = time.monotonic()
        chunk = b"\x00\x00" * 640  # 40 ms
        for _ in range(25):  # 1 s sent during the outage, kept in the client's buffer
            await client.send_audio("mic", chunk)
        deadline = lost + 5.0
        while client.breaker.state(client.clock()) is not BreakerState.OPEN:
            assert time.monotonic() < deadline, "the breaker never opened"
            await asyncio.sleep(0.02)
        assert client.breaker.retry_in(client.clock()) > GRACE_S  # its own trial would come too late
        proxy.refuse(False)
        summary = await asyncio.wait_for(client.close(), GRACE_S + 20)
        resumed_after = client.stats.resume_s[0]
    finally:
        await proxy.stop()
    assert summary is not None and client.stats.resumes == 1
    assert 0.7 * GRACE_S <= resumed_after < GRACE_S, resumed_after
    assert client.breaker.state(client.clock()) is BreakerState.CLOSED  # the trial's success closed it
    assert summary["stats"]["sources"]["mic"]["received_ms"] == 1000 and client.lost_ms == 0
