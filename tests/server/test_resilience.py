"""Engine faults on a real server (Whisper + pocketsphinx behind breakers), injected through ``POST /faults``.

The server runs with fault injection on, a 3 s breaker reset and a 4 s decode time limit, so each scenario takes
seconds. (With 2 s, a busy machine sometimes timed out the fallback's decode of the abandoned item too: pocketsphinx
then decodes the whole utterance at once, 2.0 s under a CPU hog.) Faults are enacted where decodes really run: the
Whisper worker thread raises or hangs (and is abandoned and replaced), a pocketsphinx worker process exits or hangs
(and is killed and replaced).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from echopanel.audio.wav import read_pcm16
from echopanel.client import LiveClient
from echopanel.client.stream import send_source

from support import LIBRIVOX, ServerProcess, librivox_refs, run_server, wer

RESET_S = 3.0
GAP = b"\x00\x00" * 16000  # 1 s of silence
S0870, S0880, S0890 = (f"sense_and_sensibility_01_austen_64kb-{n}" for n in ("0870", "0880", "0890"))


DECODE_TIMEOUT_S = 4.0


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "ECHOPANEL_FAULT_INJECTION": "1",
        "ECHOPANEL_BREAKER_RESET_S": str(RESET_S),
        "ECHOPANEL_DECODE_TIMEOUT_S": str(DECODE_TIMEOUT_S),
    }
    data = tmp_path_factory.mktemp("faults")
    with run_server(data, env=env) as srv:
        srv.data_dir = data  # type: ignore[attr-defined]
        yield srv


def pcm(*names: str) -> bytes:
    return b"".join(read_pcm16(LIBRIVOX / f"{n}.wav") + GAP for n in names)


async def fault(server: ServerProcess, engine: str, mode: str, **extra: Any) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        r = await http.post("/faults", json={"engine": engine, "mode": mode, **extra})
        assert r.status_code == 200, r.text


async def clear_faults(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.delete("/faults")).status_code == 200


async def healthy(server: ServerProcess) -> None:
    """No faults, and every breaker closed again (a short utterance serves as the trial after the reset)."""
    await clear_faults(server)
    for _ in range(4):
        async with httpx.AsyncClient(base_url=server.http) as http:
            text = (await http.get("/metrics")).text
        if all(f'echopanel_breaker_state{{engine="{e}"}} 0.0' in text for e in ("whisper", "pocketsphinx")):
            return
        await asyncio.sleep(RESET_S)
        async with LiveClient(server.url, sources=["mic"], session={"overflow": "block"}) as c:
            await c.send_audio("mic", pcm(S0880))
            await c.close_session()
            _ = [ev async for ev in c.events()]
    raise AssertionError("breakers did not close")


@asynccontextmanager
async def session(server: ServerProcess) -> AsyncIterator[tuple[LiveClient, list[tuple[float, dict[str, Any]]]]]:
    """A session whose events are collected with their arrival time."""
    events: list[tuple[float, dict[str, Any]]] = []
    async with LiveClient(server.url, sources=["mic"]) as client:

        async def receive() -> None:
            async for ev in client.events():
                events.append((time.monotonic(), ev))

        task = asyncio.create_task(receive())
        try:
            yield client, events
        except BaseException:
            task.cancel()
            raise
        await asyncio.wait_for(task, 120)


def of(events: list[tuple[float, dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [ev for _, ev in events if ev["type"] == kind]


async def test_five_failures_open_the_breaker_and_the_fallback_carries_the_session(
    faulty_server: ServerProcess,
) -> None:
    await healthy(faulty_server)
    async with session(faulty_server) as (client, events):
        sender = asyncio.create_task(send_source(client, "mic", pcm(S0870), realtime=True))
        await asyncio.sleep(3.0)  # Whisper has been transcribing this sentence for a while
        t_fault = time.monotonic()
        await fault(faulty_server, "whisper", "fail")  # every Whisper decode fails from now on
        await sender
        await asyncio.sleep(1.5)
        await client.close_session()
    try:
        texts = [
            (t, ev)
            for t, ev in events
            if t > t_fault and ev["type"] in ("response.text.delta", "response.done") and ev.get("engine")
        ]
        first_fallback = next(t for t, ev in texts if ev["engine"] == "pocketsphinx")
        delay = first_fallback - t_fault
        print(f"fault -> first fallback result: {delay * 1000:.0f} ms")
        assert delay <= 2.0  # target 1 s (bench/resilience.py measures it); loose here, the machine is shared
        degraded = of(events, "session.degraded")
        assert degraded and degraded[0]["level"] == 6 and degraded[0]["name"] == "fallback"
        assert "whisper failed 5 times in a row" in degraded[0]["reason"]
        t_open = next(t for t, ev in events if ev["type"] == "session.degraded")
        after = [ev for t, ev in events if t > t_open and ev["type"] == "session.metrics"]
        assert after and after[0]["engine"] == "pocketsphinx" and after[0]["breaker"] == "open"
        assert after[0]["breakers"] == {"whisper": "open", "pocketsphinx": "closed"}
        # Nothing was lost while the breaker counted: no error, and the sentence's final came from the fallback.
        assert not of(events, "error")
        finals = of(events, "response.done")
        assert finals and finals[-1]["engine"] == "pocketsphinx" and finals[-1]["text"]
        assert [ev for t, ev in texts if ev["engine"] == "whisper" and t > first_fallback] == []
        summary = of(events, "session.summary")[0]
        assert wer(librivox_refs()[S0870], " ".join(t["text"] for t in summary["transcript"])) <= 0.7
        async with httpx.AsyncClient(base_url=faulty_server.http) as http:
            text = (await http.get("/metrics")).text
        assert 'echopanel_breaker_state{engine="whisper"} 2.0' in text
        assert 'echopanel_engine_failures_total{engine="whisper",kind="error"}' in text
    finally:
        await clear_faults(faulty_server)


async def test_a_hung_decode_is_abandoned_without_stalling_other_sessions(faulty_server: ServerProcess) -> None:
    await healthy(faulty_server)
    await fault(faulty_server, "whisper", "hang", count=1, kinds=["final"])  # the next final decode never returns
    audio = pcm(S0880, S0890)
    async with session(faulty_server) as (a, events_a), session(faulty_server) as (b, events_b):
        await asyncio.gather(send_source(a, "mic", audio), send_source(b, "mic", audio))
        await asyncio.sleep(3.0)
        await asyncio.gather(a.close_session(), b.close_session())
    # One final hung (whichever session's came first): abandoned after the time limit, decoded by the fallback.
    hung = [(e, ev) for e in (events_a, events_b) for ev in of(e, "response.done") if ev["engine"] == "pocketsphinx"]
    assert len(hung) == 1, hung
    stuck_events, stuck_final = hung[0]
    other = events_b if stuck_events is events_a else events_a
    stopped = next(
        t for t, ev in stuck_events if ev.get("item_id") == stuck_final["item_id"] and "stopped" in ev["type"]
    )
    answered = next(t for t, ev in stuck_events if ev is stuck_final)
    assert answered - stopped >= DECODE_TIMEOUT_S - 0.5  # it waited for the time limit...
    # ...while the other session's final of the same sentence went through on the other worker.
    other_final = next(
        t for t, ev in other if ev["type"] == "response.done" and ev["item_id"] == stuck_final["item_id"]
    )
    assert other_final < answered
    for e in (events_a, events_b):
        assert not of(e, "error")
        assert (
            wer(
                librivox_refs()[S0880] + " " + librivox_refs()[S0890],
                " ".join(ev["text"] for ev in of(e, "response.done")),
            )
            <= 0.5
        )
    async with httpx.AsyncClient(base_url=faulty_server.http) as http:
        text = (await http.get("/metrics")).text
    assert 'echopanel_engine_failures_total{engine="whisper",kind="timeout"} 1.0' in text
    # The abandoned worker was replaced: two sessions at once still get Whisper finals.
    async with session(faulty_server) as (c, events_c):
        await send_source(c, "mic", pcm(S0880), realtime=False)
        await c.close_session()
    assert [ev["engine"] for ev in of(events_c, "response.done")] == ["whisper"]


async def test_recovery_through_half_open_and_fallback_items_redecoded_by_the_primary(
    faulty_server: ServerProcess,
) -> None:
    await healthy(faulty_server)
    await fault(faulty_server, "whisper", "fail", count=5)  # exactly 5 failures: the breaker opens, then a trial works
    async with session(faulty_server) as (client, events):
        # The breaker opens ~2.3 s into the first sentence (5 failed partials), which ends while it is open; the
        # second sentence starts before the 3 s reset is over and ends after Whisper's trial succeeded.
        await send_source(client, "mic", pcm(S0880, S0890), realtime=True)
        await asyncio.sleep(1.0)
        await client.close_session()
    degraded = of(events, "session.degraded")
    assert degraded[0]["name"] == "fallback"
    recovered = [d for d in degraded if "recovered" in d["reason"]]
    assert recovered and recovered[0]["level"] < 6
    breakers = [ev["breaker"] for ev in of(events, "session.metrics")]
    assert "open" in breakers and breakers[-1] == "closed"
    finals = of(events, "response.done")
    live = [f for f in finals if not f["repaired"]]
    fallback_ids = [f["item_id"] for f in live if f["engine"] == "pocketsphinx" and f["text"]]
    assert fallback_ids and live[-1]["engine"] == "whisper"  # the primary took over again
    # At finalization the fallback's items were decoded again by Whisper from the recording.
    redone = [f for f in finals if f["repaired"]]
    assert redone and all(f["engine"] == "whisper" for f in redone)
    assert set(fallback_ids) <= {i for f in redone for i in f.get("replaces", [])}
    summary = of(events, "session.summary")[0]
    stored = {t["item_id"] for t in summary["transcript"]}
    assert not stored & set(fallback_ids)
    ref = librivox_refs()[S0880] + " " + librivox_refs()[S0890]
    assert wer(ref, " ".join(t["text"] for t in summary["transcript"])) <= 0.15  # Whisper quality, not sphinx's


async def test_all_engines_down_gives_item_errors_keeps_the_audio_and_transcribes_it_later(
    faulty_server: ServerProcess,
) -> None:
    await healthy(faulty_server)
    await fault(faulty_server, "whisper", "fail")
    await fault(faulty_server, "pocketsphinx", "die")  # its worker process exits on every decode
    audio = pcm(S0880, S0890)
    try:
        async with session(faulty_server) as (client, events):
            sid = client.session["id"]
            await send_source(client, "mic", audio, realtime=True)
            await asyncio.sleep(1.0)
            errors = of(events, "error")
            assert errors and all(e["code"] == "engine_unavailable" and e["item_id"] for e in errors)
            assert {e["item_id"] for e in errors} >= {
                ev["item_id"] for ev in of(events, "input_audio_buffer.speech_stopped")
            }
            assert not [f for f in of(events, "response.done") if f["text"]]  # errors, not silence or text
            assert any(d["name"] == "engines_down" for d in of(events, "session.degraded"))
            async with httpx.AsyncClient(base_url=faulty_server.http) as http:  # a balancer sends new sessions away
                ready = await http.get("/ready")
            assert ready.status_code == 503 and ready.json()["status"] == "engines_down"
            received = [ev["sources"]["mic"]["received_ms"] for ev in of(events, "session.metrics")]
            assert received[-1] == len(audio) // 32  # every sample is held (in the recording)
            # The engines come back; after the breaker period the session is closed and the failed items are
            # transcribed from the recording.
            await clear_faults(faulty_server)
            await asyncio.sleep(RESET_S)
            await client.close_session()
    finally:
        await clear_faults(faulty_server)
    summary = of(events, "session.summary")[0]
    assert summary["stats"]["sources"]["mic"]["received_ms"] == len(audio) // 32
    recording = Path(faulty_server.data_dir) / "recordings" / sid / "mic.pcm"  # type: ignore[attr-defined]
    for _ in range(50):  # the server closes (flushes) the recording as the session ends
        if recording.stat().st_size == len(audio):
            break
        await asyncio.sleep(0.1)
    assert recording.stat().st_size == len(audio)
    redone = [f for f in of(events, "response.done") if f["repaired"]]
    assert {e["item_id"] for e in errors} <= {i for f in redone for i in f.get("replaces", [])}
    ref = librivox_refs()[S0880] + " " + librivox_refs()[S0890]
    assert wer(ref, " ".join(t["text"] for t in summary["transcript"])) <= 0.2
